"""robustreg.AutoAttack against the authors' pyautoattack called directly, and against the
closed-form worst case of linear models; its contract (no side effects, any box, any dtype);
and its place in robust_accuracy and recommended_attacks."""

import sys

import pytest
import torch
from torch import nn

import robustreg
from robustreg import PGD, AutoAttack, recommended_attacks, robust_accuracy

from .conftest import TinyConvBN

pyautoattack = pytest.importorskip("pyautoattack", reason="the eval extra (pyautoattack) is part of dev")


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()


def images(model: nn.Module, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] labelled by the model, a third of them relabelled (clean mistakes)."""
    x = torch.rand(n, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::3] = (y[::3] + 1) % 10
    return x, y


@pytest.mark.parametrize("version", ["standard", "apgd"])
def test_equals_pyautoattack_called_directly(version):
    model = small_cnn()
    x, y = images(model, 12)
    ours = AutoAttack(eps=0.05, version=version, seed=3)(model, x, y)
    direct = pyautoattack.AutoAttack(model, eps=0.05, version="standard", seed=3, device="cpu")
    if version == "apgd":
        direct.attacks_to_run = ["apgd-ce", "apgd-t"]
    ref, _ = direct.run_standard_evaluation(x, y, batch_size=500)
    assert torch.equal(ours, ref)  # bit for bit: same seed, same attacks, same per-sample result
    with torch.no_grad():
        fooled = model(ours).argmax(1) != y
    assert fooled.any() and not fooled.all()


def linear_worst_case(lin: nn.Linear, x, y, eps: float, norm: str, bounds) -> torch.Tensor:
    """Per sample: whether a linear classifier stays correct over the whole threat model.

    It errs somewhere iff some class j ≠ y has min_δ (w_y − w_j)·(x + δ) + b_y − b_j ≤ 0; the
    minimum is separable: ℓ∞ with a box takes δ_i = −ε·sign(d_i) clipped to the box, ℓ2
    without a box subtracts ε‖d‖₂."""
    w, b = lin.weight.detach().double(), lin.bias.detach().double()
    x = x.double().flatten(1)
    robust = torch.ones(x.shape[0], dtype=torch.bool)
    for j in range(w.shape[0]):
        d = w[y] - w[j]  # (B, D)
        margin = (d * x).sum(1) + b[y] - b[j]
        if norm == "linf":
            lo, hi = bounds
            delta = (-eps * d.sign()).clamp(min=lo - x, max=hi - x)
            worst = margin + (d * delta).sum(1)
        else:
            worst = margin - eps * d.norm(dim=1)
        robust &= (j == y) | (worst > 0)
    return robust


@pytest.mark.parametrize(("norm", "eps", "bounds"), [("linf", 0.03, (0.0, 1.0)), ("l2", 0.25, None)])
def test_apgd_reaches_the_closed_form_worst_case_of_a_linear_model(norm, eps, bounds):
    lin = nn.Linear(20, 10)
    x = torch.rand(200, 20)
    with torch.no_grad():
        y = lin(x).argmax(1)
    exact = linear_worst_case(lin, x, y, eps, norm, bounds)
    assert 0.2 < exact.float().mean() < 0.8  # the test means something: both kinds of samples
    x_adv = AutoAttack(eps=eps, norm=norm, version="apgd", bounds=bounds)(lin, x, y)
    with torch.no_grad():
        found = lin(x_adv).argmax(1) == y
    assert torch.equal(found, exact)
    ball = robustreg.get_ball(norm)
    assert bool((ball.norm(x_adv - x) <= eps * (1 + 1e-6)).all())


def test_any_box_is_the_unit_box_rescaled():
    """On [lo, hi] with radius ε·(hi − lo), the model g((x − lo)/(hi − lo)) has exactly the
    robustness of g on [0, 1] with radius ε."""
    g = small_cnn()
    u, y = images(g, 30)
    lo, hi = -2.0, 3.0

    class Shifted(nn.Module):
        def forward(self, x):
            return g((x - lo) / (hi - lo))

    on_unit = AutoAttack(eps=0.05, version="apgd")(g, u, y)
    on_box = AutoAttack(eps=0.05 * (hi - lo), version="apgd", bounds=(lo, hi))(Shifted(), lo + (hi - lo) * u, y)
    with torch.no_grad():
        a, b = g(on_unit).argmax(1) == y, Shifted()(on_box).argmax(1) == y
    assert torch.equal(a, b) and 0 < a.float().mean() < 1
    assert on_box.min() >= lo and on_box.max() <= hi


def test_leaves_grad_modes_running_stats_and_rng_untouched():
    model = TinyConvBN().train()  # FAB calls .backward(): it must reach no parameter
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 5, (12,))
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    x_adv = AutoAttack(eps=0.1, version="standard")(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert model.training and model.bn.training and model.drop.training
    assert all(torch.equal(v, stats[k]) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert not x_adv.requires_grad and (x_adv - x).abs().max() <= 0.1 + 1e-7


def test_float64_inputs_and_a_second_call_give_the_same_result():
    model = small_cnn()
    x, y = images(model, 12)
    model, x = model.double(), x.double()
    attack = AutoAttack(eps=0.05, version="apgd")
    a, b = attack(model, x, y), attack(model, x, y)
    assert a.dtype == torch.float64 and torch.equal(a, b)
    assert (a - x).abs().max() <= 0.05 + 1e-12 and a.min() >= 0 and a.max() <= 1  # float32 round trip projected


@pytest.mark.parametrize(
    ("classes", "expected"),
    [(10, ("apgd-ce", "apgd-t", "fab-t", "square")), (3, ("apgd-ce", "apgd-dlr", "fab-t", "square")),
     (2, ("apgd-ce", "fab", "square"))],
)  # fmt: skip
def test_few_classes_run_the_attacks_that_exist_for_them(classes, expected):
    attack = AutoAttack(eps=0.1)
    assert attack.attacks_for(classes) == expected
    if classes < 10:
        model = nn.Sequential(nn.Linear(6, classes)).eval()
        x = torch.rand(16, 6)
        with torch.no_grad():
            y = model(x).argmax(1)
        assert AutoAttack(eps=0.2, version="apgd").attacks_for(classes) == expected[: 2 if classes == 3 else 1]
        x_adv = attack(model, x, y)
        assert (x_adv - x).abs().max() <= 0.1 + 1e-7


def test_robust_accuracy_merges_autoattack_with_robustreg_attacks_per_sample():
    model = small_cnn()
    x, y = images(model, 40)
    attacks = {"aa": AutoAttack(eps=0.03, version="apgd"), "pgd": PGD(eps=0.03, steps=5, random_start=False)}
    res = robust_accuracy(model, (x, y), attack=attacks, batch_size=16)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
        chunks = list(zip(x.split(16), y.split(16), strict=True))
        per = {k: torch.cat([model(a(model, xb, yb)).argmax(1) == yb for xb, yb in chunks]) for k, a in attacks.items()}
    assert res.per_attack == {k: int(v.sum()) / 40 for k, v in per.items()}
    assert res.robust == int((ok & per["aa"] & per["pgd"]).sum()) / 40


def test_recommended_attacks_cross_the_ball_and_never_exceed_autoattack():
    attacks = recommended_attacks(0.05, version="apgd", steps=40)
    assert set(attacks) == {"autoattack-apgd", "pgd40", "cw40"}
    assert all(a.steps * a.step_size >= 2 * a.eps for k, a in attacks.items() if k != "autoattack-apgd")
    model = small_cnn()
    x, y = images(model, 30)
    res = robust_accuracy(model, (x, y), attack=attacks)
    assert res.robust <= res.per_attack["autoattack-apgd"]


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # import raises ImportError
    with pytest.raises(ImportError, match=r'pip install "robustreg\[eval\]"'):
        AutoAttack(eps=0.1)(small_cnn(), torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ImportError, match="pyautoattack"):
        recommended_attacks(0.1)
    assert not robustreg.autoattack.available()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": 0.0}, ValueError, "eps must be > 0"),
        ({"eps": -1.0}, ValueError, "eps must be"),
        ({"norm": "l1"}, ValueError, "norm must be one of"),
        ({"version": "rand"}, ValueError, "version must be one of"),
        ({"version": "custom"}, ValueError, "needs attacks="),
        ({"version": "custom", "attacks": ("apgd-ce", "pgd")}, ValueError, "attacks must be distinct names"),
        ({"attacks": ("apgd-ce",)}, ValueError, "for version='custom' only"),
        ({"bounds": (1.0, 0.0)}, ValueError, "bounds must satisfy"),
        ({"seed": -1}, ValueError, "seed must be"),
        ({"batch_size": 0}, ValueError, "batch_size must be"),
    ],
)
def test_bad_arguments_are_refused_on_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        AutoAttack(**({"eps": 0.1} | kwargs))


def test_inputs_are_checked_before_anything_runs():
    model = small_cnn()
    with pytest.raises(ValueError, match="outside bounds"):
        AutoAttack(eps=0.1)(model, torch.rand(2, 1, 8, 8) + 1, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the model's classes"):
        AutoAttack(eps=0.1)(model, torch.rand(2, 1, 8, 8), torch.full((2,), 10))


def test_aliased_submodules_keep_their_parameters():
    class Aliased(nn.Module):  # one submodule registered under two names
        def __init__(self) -> None:
            super().__init__()
            self.body = small_cnn()
            self.first = self.body[0]

        def forward(self, x):
            return self.body(x)

    model = Aliased().eval()
    before = dict(model.named_parameters(remove_duplicate=False))
    x, y = images(model.body, 6)
    AutoAttack(eps=0.05, version="custom", attacks=("apgd-ce",))(model, x, y)
    after = dict(model.named_parameters(remove_duplicate=False))
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] and isinstance(after[k], nn.Parameter) for k in before)
