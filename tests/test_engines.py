"""The loss-object contract (docs/contract.md), checked for every engine."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustreg
from robustreg import ATTA, PGDAT, TRADES, YOPO, FastAT, FreeAT

from .conftest import TinyConvBN, assert_same, snapshot, tiny_mlp

SMALL = {"eps": 0.1, "alpha": 0.04, "steps": 3}


class ATTAByPosition(ATTA):
    """ATTA called as ``reg(x, y)``, the batch position standing for the dataset index."""

    def __call__(self, x, y):
        index = torch.arange(x.shape[0] if isinstance(x, torch.Tensor) and x.dim() else 1)
        return super().__call__(x, y, index)


ENGINES = {  # name -> (model, **overrides) -> loss object with small test settings
    "pgdat": lambda m, **kw: PGDAT(m, **SMALL | kw),
    "pgdat-mix": lambda m, **kw: PGDAT(m, **SMALL | {"clean_weight": 0.5} | kw),
    "fast": lambda m, **kw: FastAT(m, **{"eps": 0.1} | kw),
    "free": lambda m, **kw: FreeAT(m, **{"eps": 0.1} | kw),
    "trades": lambda m, **kw: TRADES(m, **SMALL | kw),
    "atta": lambda m, **kw: ATTAByPosition(m, 64, **SMALL | kw),
    "yopo": lambda m, **kw: YOPO(m, **{"m": 2, "n": 2, "eps": 0.1, "alpha": 0.04} | kw),
    "yopo-trades": lambda m, **kw: YOPO(m, **{"m": 2, "n": 2, "eps": 0.1, "alpha": 0.04, "objective": "trades"} | kw),
}
# Engines with separate inner passes before the loss's own (YOPO-CE has none: its m passes
# are the training passes, tested in test_yopo.py).
WITH_BN = ["pgdat", "pgdat-mix", "fast", "trades", "atta", "yopo-trades"]
ATTACK_PASSES = {"pgdat": 3, "pgdat-mix": 3, "fast": 1, "trades": 4, "atta": 3, "yopo-trades": 3}  # + the target pass
FINAL_INPUTS = {
    "pgdat": ["adv"],
    "atta": ["adv"],
    "pgdat-mix": ["adv", "clean"],
    "fast": ["adv"],
    "trades": ["clean", "adv"],
    "yopo-trades": ["clean", "adv"],
}


def reference_loss(name: str, reg, model: nn.Module, x, y) -> torch.Tensor:
    """The loss each method prescribes, written out from reg.last.x_adv."""
    x_adv = reg.last.x_adv
    if name.endswith("trades"):
        logits, adv = model(x), model(x_adv)
        p, log_q = F.softmax(logits, 1), F.log_softmax(adv, 1)
        kl = (p * (torch.log(p) - log_q)).sum() / x.shape[0]
        return F.cross_entropy(logits, y) + reg.beta * kl
    loss = F.cross_entropy(model(x_adv), y)
    if name == "pgdat-mix":
        loss = 0.5 * loss + 0.5 * F.cross_entropy(model(x), y)
    return loss


@pytest.mark.parametrize("name", [k for k in ENGINES if k != "yopo"])  # YOPO: test_yopo.py
def test_returns_a_scalar_whose_backward_is_the_prescribed_gradient(name):
    model = TinyConvBN()
    model.drop.p = 0.0  # deterministic passes, so the reference sees the same function
    model.train()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 5, (6,))
    reg = ENGINES[name](model)
    loss = reg(x, y)
    assert loss.dim() == 0 and loss.requires_grad
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = reference_loss(name, reg, model, x, y)
    torch.testing.assert_close(loss, ref)
    ref.backward()
    for g, p in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("user_mode", ["train", "eval", "mixed"])
def test_call_changes_no_grad_mode_or_requires_grad(name, user_mode):
    model = TinyConvBN()
    model.train(user_mode != "eval")
    if user_mode == "mixed":
        model.bn.eval()
        model.conv.bias.requires_grad_(False)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0) if p.requires_grad else None
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 5, (6,))
    snap = snapshot(model)
    reg = ENGINES[name](model)
    reg(x, y)
    now = snapshot(model)
    assert now["modes"] == snap["modes"]
    assert now["requires_grad"] == snap["requires_grad"]
    assert now["tracking"] == snap["tracking"]
    for a, b in zip(now["grad"], snap["grad"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


class ModeSpy(nn.Module):
    """Wraps TinyConvBN and records (model.training, bn.training, bn.track_running_stats, dropout.training)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyConvBN()
        self.seen: list[tuple[bool, bool, bool, bool]] = []

    def forward(self, x):
        n = self.net
        self.seen.append((self.training, n.bn.training, n.bn.track_running_stats, n.drop.training))
        return n(x)


@pytest.mark.parametrize("name", WITH_BN)
@pytest.mark.parametrize("bn", ["train", "eval", "frozen"])
def test_bn_policy_in_inner_passes_and_running_stats(name, bn):
    spy = ModeSpy().train()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 5, (6,))
    reg = ENGINES[name](spy, bn=bn)
    reg(x, y)  # first call: the class-count probe (eval, no_grad) comes first
    start = copy.deepcopy(spy.state_dict())
    spy.seen.clear()
    reg(x, y)
    n_inner = ATTACK_PASSES[name]
    inner, final = spy.seen[:n_inner], spy.seen[n_inner:]
    expected = {"train": (True, True, True, True), "eval": (False, False, True, False),
                "frozen": (True, True, False, True)}[bn]  # fmt: skip
    assert inner == [expected] * n_inner
    assert final == [(True, True, True, True)] * len(FINAL_INPUTS[name])  # the user's mode
    # Running statistics: the final passes update them as in natural training; inner passes
    # only under "train".
    ref = ModeSpy().train()
    ref.load_state_dict(start)
    with torch.no_grad():
        for which in FINAL_INPUTS[name]:
            ref(reg.last.x_adv if which == "adv" else x)
    bn_now, bn_ref = spy.net.bn, ref.net.bn
    extra = n_inner if bn == "train" else 0
    assert int(bn_now.num_batches_tracked) == int(bn_ref.num_batches_tracked) + extra
    if bn != "train":
        torch.testing.assert_close(bn_now.running_mean, bn_ref.running_mean)
        torch.testing.assert_close(bn_now.running_var, bn_ref.running_var)


class Exploding(TinyConvBN):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, x):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("boom")
        return super().forward(x)


@pytest.mark.parametrize("name", WITH_BN)
@pytest.mark.parametrize("bn", ["train", "eval", "frozen"])
def test_modes_restored_when_the_model_raises_mid_attack(name, bn):
    model = Exploding(after=2).train()  # the probe(s), then failure inside the inner passes
    model.bn.eval()
    snap = snapshot(model)
    reg = ENGINES[name](model, bn=bn)
    with pytest.raises(RuntimeError, match="boom"):
        reg(torch.rand(4, 1, 8, 8), torch.randint(0, 5, (4,)))
    now = snapshot(model)
    assert now["modes"] == snap["modes"] and now["tracking"] == snap["tracking"]


@pytest.mark.parametrize("name", ENGINES)
def test_float64_and_tabular_inputs(name):
    model = tiny_mlp().double().train()
    x = torch.randn(8, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    reg = ENGINES[name](model, bounds=None)
    loss = reg(x, y)
    assert loss.dtype == torch.float64
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float64 for p in model.parameters())
    assert reg.last.x_adv.shape == x.shape and reg.last.x_adv.dtype == torch.float64
    assert not reg.last.x_adv.requires_grad
    assert float(reg.ball.norm(reg.last.x_adv - x).max()) <= 0.1 + 1e-12


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_adversary_stays_in_ball_and_box(name, norm):
    model, x, y = TinyConvBN().train(), torch.rand(6, 1, 8, 8), torch.randint(0, 5, (6,))
    reg = ENGINES[name](model, norm=norm)
    for _ in range(2):  # FreeAT: the second call uses the updated perturbation
        reg(x, y).backward()
        x_adv = reg.last.x_adv
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
        assert float(reg.ball.norm(x_adv - x).max()) <= 0.1 + 1e-6


@pytest.mark.parametrize("name", ENGINES)
def test_gradient_reaches_an_input_that_requires_grad(name):
    # Embedding-style inputs: the adversarial loss back-propagates into the input's graph.
    emb = nn.Embedding(10, 6)
    model = tiny_mlp().train()
    tokens = torch.randint(0, 10, (8,))
    y = torch.randint(0, 3, (8,))
    reg = ENGINES[name](model, bounds=None)
    reg(emb(tokens), y).backward()
    assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0


BAD_CONFIG = [
    ({"eps": -0.1}, ValueError, "eps must be a finite number >= 0"),
    ({"eps": math.nan}, ValueError, "eps must be a finite number >= 0"),
    ({"eps": math.inf}, ValueError, "eps must be a finite number >= 0"),
    ({"alpha": -1.0}, ValueError, "alpha must be a finite number >= 0"),
    ({"alpha": math.inf}, ValueError, "alpha must be a finite number >= 0"),
    ({"norm": "l1"}, ValueError, "norm must be one of"),
    ({"bounds": (1.0, 0.0)}, ValueError, "lo < hi"),
    ({"random_start": 1}, TypeError, "random_start must be a bool"),
]


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize(("kwargs", "exc", "match"), BAD_CONFIG)
def test_bad_hyperparameters_raise_at_construction(name, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ENGINES[name](TinyConvBN(), **kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("pgdat", {"steps": -1}, "steps must be an int >= 0"),
        ("trades", {"steps": 2.5}, "steps must be an int"),
        ("pgdat", {"bn": "batch"}, "bn must be one of"),
        ("trades", {"beta": -1.0}, "beta must be a finite number >= 0"),
        ("pgdat", {"clean_weight": 1.5}, r"clean_weight must be in \[0, 1\]"),
    ],
)
def test_engine_specific_bad_hyperparameters(name, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ENGINES[name](TinyConvBN(), **kwargs)


def bad_inputs():
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 5, (4,))
    nan = x.clone()
    nan[0, 0, 0, 0] = math.nan
    inf = x.clone()
    inf[1, 0, 2, 2] = math.inf
    return [
        ((x * 255).to(torch.uint8), y, TypeError, "floating-point"),
        (nan, y, ValueError, "NaN or inf"),
        (inf, y, ValueError, "NaN or inf"),
        (x + 1.5, y, ValueError, "outside bounds"),
        (x - 0.5, y, ValueError, "outside bounds"),
        (x, y[:3], ValueError, "to match x's batch size"),
        (x, torch.tensor([0, 1, 5, 2]), ValueError, "outside the model's classes 0..4"),
        (x, torch.tensor([0, -1, 2, 2]), ValueError, "negative class"),
        (x, y.float(), TypeError, "integer class indices"),
        (x[:0], y[:0], ValueError, "empty batch"),
        (x[0, 0, 0], y, ValueError, "batch dimension"),
        (x.numpy(), y, TypeError, "torch.Tensor"),
    ]


@pytest.mark.parametrize("name", ENGINES)
def test_bad_inputs_raise_before_anything_changes(name):
    model = TinyConvBN().train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    reg = ENGINES[name](model, bn="train") if name in WITH_BN else ENGINES[name](model)
    snap = snapshot(model)
    for x, y, exc, match in bad_inputs():
        with pytest.raises(exc, match=match):
            reg(x, y)
        assert_same(model, snap)
        assert reg.last is None
        assert getattr(reg, "delta", None) is None
    # A hyper-parameter set to a bad value after construction is caught at the next call.
    reg.eps = -1.0
    with pytest.raises(ValueError, match="eps must be"):
        reg(torch.rand(4, 1, 8, 8), torch.randint(0, 5, (4,)))
    assert_same(model, snap)


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8])
def test_labels_of_any_integer_dtype(name, dtype):
    model, x, y = TinyConvBN().train(), torch.rand(4, 1, 8, 8), torch.randint(0, 5, (4,))
    reg = ENGINES[name](model)
    torch.manual_seed(0)
    a = reg(x, y.to(dtype))
    assert torch.isfinite(a)


@pytest.mark.parametrize("name", [n for n in ENGINES if n != "atta"])
def test_every_engine_takes_the_optional_index_and_is_unchanged_by_it(name):
    """One call signature: ``reg(x, y, index=None)``; an engine without per-sample state checks
    the index and gives the loss it gives without one."""
    torch.manual_seed(0)
    model = TinyConvBN()
    model.drop.p = 0.0
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 5, (6,))
    losses = []
    for index in (None, torch.tensor([5, 3, 3, 0, 1, 2])):  # duplicates are fine here
        reg = ENGINES[name](copy.deepcopy(model))  # the same running statistics for both calls
        torch.manual_seed(1)
        losses.append(reg(x, y) if index is None else reg(x, y, index=index))
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    reg = ENGINES[name](model)
    snap = snapshot(model)
    for bad, exc in [(torch.arange(5), ValueError), (torch.rand(6), TypeError)]:
        with pytest.raises(exc, match="index"):
            reg(x, y, bad)
        with pytest.raises(exc, match="index"):
            reg.check_inputs(x, y, bad)
    assert reg.last is None
    assert_same(model, snap)


def test_model_must_be_a_module_and_return_logits():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        PGDAT(lambda x: x)
    with pytest.raises(ValueError, match="logits of shape"):
        PGDAT(nn.Flatten(0), bounds=None)(torch.rand(3, 4), torch.tensor([0, 1, 0]))


def test_record_holds_detached_metrics():
    model = TinyConvBN()
    reg = TRADES(model, eps=0.1, steps=2)
    reg(torch.rand(4, 1, 8, 8), torch.randint(0, 5, (4,)))
    d = reg.last.as_dict()
    assert set(d) == {"loss", "natural_loss", "robust_loss", "clean_acc", "adv_acc"}
    assert all(isinstance(v, float) for v in d.values())
    assert all(not t.requires_grad and t.dim() == 0 for t in reg.last.metrics.values())
    assert reg.last["loss"] == d["loss"]


def test_repr_names_the_hyperparameters():
    r = repr(PGDAT(TinyConvBN(), eps=0.1))
    assert r.startswith("PGDAT(TinyConvBN, ") and "eps=0.1," in r and "steps=10" in r and "bn='eval'" in r


def test_steps_zero_is_training_on_the_start_point():
    model, x, y = TinyConvBN().eval(), torch.rand(4, 1, 8, 8), torch.randint(0, 5, (4,))
    reg = PGDAT(model, eps=0.1, steps=0, random_start=False)
    torch.testing.assert_close(reg(x, y), F.cross_entropy(model(x), y))


@pytest.mark.parametrize("name", ["pgdat", "pgdat-mix", "trades", "atta", "yopo", "yopo-trades"])
def test_steps_zero_is_allowed_and_shown_in_the_record(name):
    model, x, y = TinyConvBN().eval(), torch.rand(4, 1, 8, 8), torch.randint(0, 5, (4,))
    steps = {"n": 0} if name.startswith("yopo") else {"steps": 0}
    reg = ENGINES[name](model, random_start=False, **steps)
    reg(x, y)
    assert reg.last.steps == 0
    assert "steps=0 (no ascent step: x_adv is the attack's start)" in repr(reg.last)
    torch.testing.assert_close(reg.last.x_adv, x)  # from δ = 0, no step: x itself
    reg.steps = 2  # a schedule raising steps: the record follows
    reg(x, y)
    assert reg.last.steps == 2 and "no ascent" not in repr(reg.last)
    if not name.endswith("trades"):  # TRADES' KL has no gradient at x' = x (it starts at random for that)
        assert not torch.equal(reg.last.x_adv, x)


def test_the_record_holds_the_steps_taken_and_none_for_free_at():
    model, x, y = TinyConvBN(), torch.rand(4, 1, 8, 8), torch.randint(0, 5, (4,))
    fast, free = ENGINES["fast"](model), ENGINES["free"](model)
    fast(x, y)
    free(x, y)
    assert fast.last.steps == 1 and free.last.steps is None
    amata = robustreg.Amata(PGDAT(model, eps=0.1), k_min=2, k_max=4, tau=0.1, total=2)
    amata(x, y)
    assert amata.last.steps == 2 == amata.last["K"]
    assert repr(amata.last).startswith("Record(x_adv=<(4, 1, 8, 8) torch.float32>, steps=2, metrics={")


def test_public_names():
    for name in ["PGDAT", "FastAT", "FreeAT", "TRADES", "PGD", "FGSM", "CW", "robust_accuracy", "replay"]:
        assert hasattr(robustreg, name)


@pytest.mark.parametrize("name", ENGINES)
def test_bf16_autocast(name):
    model, x, y = TinyConvBN().train(), torch.rand(6, 1, 8, 8), torch.randint(0, 5, (6,))
    reg = ENGINES[name](model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = reg(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert reg.last.x_adv.dtype == torch.float32  # the perturbation stays in the input's dtype
    assert float(reg.ball.norm(reg.last.x_adv - x).max()) <= 0.1 + 1e-6
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
