"""TNAR's tangent and normal perturbations against explicit Hessians, with a linear chart
decode(z) = Az + b whose tangent space is span(A) everywhere."""

import pytest
import torch
from torch import nn

from robustreg.charts import LinearChart
from robustreg.func import per_sample_dot
from robustreg.ssl import TNAR

from ._reference import kl, kl_hessians
from .conftest import AliasedModel, assert_aliases_stay_trainable

D = torch.float64


def setup(k: int = 2, dim: int = 5):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(dim, 8), nn.Tanh(), nn.Linear(8, 3)).to(D)
    chart = LinearChart(torch.randn(dim, k, dtype=D), torch.randn(dim, dtype=D))
    x = torch.randn(4, dim, dtype=D)
    return model, chart, x


@pytest.mark.parametrize("method", ["finite_difference", "hvp"])
def test_tangent_and_normal_perturbations_with_a_linear_chart(method):
    model, chart, x = setup()
    a = chart.a
    proj = a @ torch.linalg.solve(a.t() @ a, a.t())  # projection onto span(A)
    torch.manual_seed(1)
    reg = TNAR(model, chart, eps_tangent=0.7, eps_normal=0.3, n_power=100, cg_iters=2, method=method)
    reg(x)
    r_t, r_n = reg.last.r_tangent, reg.last.r_normal
    torch.testing.assert_close(r_t.norm(dim=1), torch.full((4,), 0.7, dtype=D))
    torch.testing.assert_close(r_n.norm(dim=1), torch.full((4,), 0.3, dtype=D))
    torch.testing.assert_close(r_t @ proj, r_t, atol=1e-6, rtol=0)  # in the tangent space
    torch.testing.assert_close(r_n @ a, torch.zeros(4, 2, dtype=D), atol=1e-6, rtol=0)  # orthogonal to it
    # against the explicit eigenproblems, sample by sample
    eye = torch.eye(5, dtype=D)
    for i, h in enumerate(kl_hessians(model, x)):
        # tangent: max over η of ηᵀAᵀHAη / ηᵀAᵀAη, through the Cholesky factor of AᵀA
        chol = torch.linalg.cholesky(a.t() @ a)
        inv = torch.linalg.inv(chol)
        m = inv @ a.t() @ h @ a @ inv.t()
        eta = inv.t() @ torch.linalg.eigh(m).eigenvectors[:, -1]
        t = a @ eta
        assert abs(float(torch.dot(t / t.norm(), r_t[i] / 0.7))) == pytest.approx(1.0, abs=1e-5)
        # normal: the top eigenvector of P⊥ H P⊥
        pn = eye - proj
        n = torch.linalg.eigh(pn @ h @ pn).eigenvectors[:, -1]
        assert abs(float(torch.dot(n, r_n[i] / 0.3))) == pytest.approx(1.0, abs=1e-5)


def test_loss_is_the_weighted_kls_and_parts_can_be_switched_off():
    model, chart, x = setup()
    torch.manual_seed(2)
    reg = TNAR(model, chart, eps_tangent=0.5, eps_normal=0.2, weights=(2.0, 0.5))
    loss = reg(x)

    with torch.no_grad():
        logits = model(x)
        expected = 2.0 * kl(logits, model(x + reg.last.r_tangent)).mean()
        expected += 0.5 * kl(logits, model(x + reg.last.r_normal)).mean()
    torch.testing.assert_close(loss.detach(), expected)
    tar_only = TNAR(model, chart, eps_tangent=0.5, eps_normal=0.2, weights=(1.0, 0.0))
    tar_only(x)
    assert set(tar_only.last.perturbations) == {"r_tangent"}


def test_on_manifold_tangent_equals_the_linear_one_for_a_linear_chart():
    model, chart, x = setup()
    res = {}
    for mode in ("linear", "manifold"):
        torch.manual_seed(3)
        reg = TNAR(model, chart, eps_tangent=0.4, eps_normal=0.1, tangent=mode, weights=(1.0, 0.0))
        reg(x)
        res[mode] = reg.last.r_tangent
    torch.testing.assert_close(res["manifold"], res["linear"])


def test_bad_chart_and_arguments():
    model, chart, x = setup()

    class Wrong:
        def encode(self, x):
            return x[:, :2]

        def decode(self, z):
            return z

    with pytest.raises(ValueError, match=r"chart\.decode"):
        TNAR(model, Wrong(), eps_tangent=0.1, eps_normal=0.1)(x)
    with pytest.raises(TypeError, match="chart"):
        TNAR(model, object(), eps_tangent=0.1, eps_normal=0.1)
    for kwargs, match in [
        ({"eps_tangent": 0.0}, "eps_tangent"),
        ({"eps_normal": -1.0}, "eps_normal"),
        ({"cg_iters": 0}, "cg_iters"),
        ({"weights": (0.0, 0.0)}, "weights"),
        ({"tangent": "curved"}, "tangent"),
        ({"method": "exact"}, "method"),
        ({"normal": "orthogonal"}, "normal"),
        ({"normalize": "linf"}, "normalize"),
        ({"zeta": 0.0}, "zeta"),
        ({"zeta": float("nan"), "normal": "official"}, "zeta"),
        ({"normal_start": "tangent"}, "normal_start"),
    ]:
        args = {"eps_tangent": 0.1, "eps_normal": 0.1, **kwargs}
        with pytest.raises(ValueError, match=match):
            TNAR(model, chart, **args)


def test_no_side_effects_on_the_model():
    model, chart, x = setup()
    model.train()
    model[0].weight.grad = torch.zeros_like(model[0].weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    TNAR(model, chart, eps_tangent=0.3, eps_normal=0.3)(x).backward()
    assert model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert model[0].weight.grad.abs().sum() > 0
    assert per_sample_dot(x, x).shape == (4,)


@pytest.mark.parametrize("tangent", ["linear", "manifold"])
def test_official_scaling_puts_eps_t_in_latent_units_and_eps_n_on_the_largest_entry(tangent):
    model, chart, x = setup()
    out = {}
    for normalize in ("l2", "official"):
        torch.manual_seed(4)
        reg = TNAR(model, chart, eps_tangent=0.6, eps_normal=0.2, n_power=3, normalize=normalize, tangent=tangent)
        reg(x)
        out[normalize] = reg.last
    official, l2 = out["official"], out["l2"]
    # the tangent step is A·(ε_t·η) with max|η| = 1: the latent step has largest entry exactly ε_t
    latent = torch.linalg.lstsq(chart.a, official.r_tangent.t()).solution.t()
    torch.testing.assert_close(chart.decode(latent) - chart.b, official.r_tangent)  # in span(A), exactly A·latent
    torch.testing.assert_close(latent.abs().amax(1), torch.full((4,), 0.6, dtype=D))
    torch.testing.assert_close(official.r_normal.abs().amax(1), torch.full((4,), 0.2, dtype=D))
    for name in ("r_tangent", "r_normal"):  # the same directions (the same draws), another size
        a, b = getattr(official, name), getattr(l2, name)
        torch.testing.assert_close(a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True))
    assert not torch.allclose(official.r_tangent.norm(dim=1), l2.r_tangent.norm(dim=1))


@pytest.mark.parametrize("normalize", ["l2", "official"])
def test_official_normal_step_is_the_written_out_formula(normalize):
    model, chart, x = setup()
    zeta, hessians = 0.5, kl_hessians(model, x)
    torch.manual_seed(8)
    reg = TNAR(model, chart, eps_tangent=0.4, eps_normal=0.3, n_power=1, method="hvp", normal="official",
               zeta=zeta, normalize=normalize)  # fmt: skip
    reg(x)
    torch.manual_seed(8)
    _, d0 = torch.randn(4, 2, dtype=D), torch.randn(4, 5, dtype=D)  # the tangent start, then the normal one
    r_t, r_n = reg.last.r_tangent, reg.last.r_normal
    for i, h in enumerate(hessians):
        r_hat = r_t[i] / r_t[i].abs().max()  # the official normalizevector: divide by the largest entry
        d = h @ d0[i] - zeta * torch.dot(r_hat, d0[i]) * r_hat + zeta * d0[i]
        size = d.abs().max() if normalize == "official" else d.norm()
        torch.testing.assert_close(r_n[i], 0.3 * d / size)
    # without TAR the tangent direction is still computed (the step needs r̂): the same draws, the same r_n
    torch.manual_seed(8)
    alone = TNAR(model, chart, eps_tangent=0.4, eps_normal=0.3, n_power=1, method="hvp", normal="official",
                 zeta=zeta, normalize=normalize, weights=(0.0, 1.0))  # fmt: skip
    alone(x)
    torch.testing.assert_close(alone.last.r_normal, r_n)
    assert "r_tangent" not in alone.last.perturbations
    # zeta=None is the official code's 1e-3
    runs = []
    for z in (None, 1e-3):
        torch.manual_seed(8)
        reg = TNAR(model, chart, eps_tangent=0.4, eps_normal=0.3, method="hvp", normal="official", zeta=z)
        reg(x)
        runs.append(reg.last.r_normal)
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


@pytest.mark.parametrize("zeta", [0.05, 0.3])
def test_penalised_normal_direction_is_the_top_eigenvector_of_h_minus_zeta_jjt(zeta):
    model, chart, x = setup()
    a = chart.a
    torch.manual_seed(5)
    reg = TNAR(model, chart, eps_tangent=0.1, eps_normal=0.3, n_power=300, weights=(0.0, 1.0))
    reg.normal, reg.zeta, reg.method = "penalty", zeta, "hvp"
    reg(x)
    r_n = reg.last.r_normal
    torch.testing.assert_close(r_n.norm(dim=1), torch.full((4,), 0.3, dtype=D))
    for i, h in enumerate(kl_hessians(model, x)):
        vals, vecs = torch.linalg.eigh(h - zeta * a @ a.t())
        top = vecs[:, vals.abs().argmax()]  # power iteration finds the eigenvalue largest in size
        assert abs(float(torch.dot(top, r_n[i] / 0.3))) == pytest.approx(1.0, abs=1e-5)
        if vals[vals.abs().argmax()] > 0:
            # maximising rᵀHr − ζ‖Aᵀr‖² instead of rᵀHr can only shrink ‖Aᵀr‖ (VAT's direction: ζ = 0)
            vat = torch.linalg.eigh(h).eigenvectors[:, -1]
            assert float(torch.linalg.norm(a.t() @ r_n[i] / 0.3)) <= float(torch.linalg.norm(a.t() @ vat)) + 1e-9


def test_normal_iteration_from_the_tangent_residual_or_from_a_random_start():
    model, chart, x = setup()
    a = chart.a
    directions = {}
    for weights in ((1.0, 1.0), (0.0, 1.0)):  # TNAR starts NAR from P⊥HJη, NAR alone from P⊥(random)
        torch.manual_seed(6)
        reg = TNAR(model, chart, eps_tangent=0.2, eps_normal=0.3, n_power=100, weights=weights, method="hvp",
                   normal_start="residual")  # fmt: skip
        reg(x)
        directions[weights] = reg.last.r_normal
    both, alone = directions[(1.0, 1.0)], directions[(0.0, 1.0)]
    torch.testing.assert_close(per_sample_dot(both, alone).abs(), torch.full((4,), 0.09, dtype=D))  # same ±vector
    # a constant classifier has H = 0: the residual vanishes and the start falls back to P⊥(random)
    flat = nn.Sequential(nn.Linear(5, 3)).to(D)
    nn.init.zeros_(flat[0].weight)
    reg = TNAR(flat, chart, eps_tangent=0.2, eps_normal=0.3, n_power=1, normal_start="residual")
    reg(x)
    torch.testing.assert_close(reg.last.r_normal.norm(dim=1), torch.full((4,), 0.3, dtype=D))
    torch.testing.assert_close(reg.last.r_normal @ a, torch.zeros(4, 2, dtype=D), atol=1e-9, rtol=0)


def test_random_normal_start_is_the_default_reproducible_by_seed_and_not_the_residual():
    model, chart, x = setup()
    pn = torch.eye(5, dtype=D) - chart.a @ torch.linalg.solve(chart.a.t() @ chart.a, chart.a.t())

    def normal(seed, **kwargs):
        torch.manual_seed(seed)
        reg = TNAR(model, chart, eps_tangent=0.2, eps_normal=0.3, n_power=1, method="hvp", **kwargs)
        reg(x)
        return reg.last.r_normal

    assert TNAR(model, chart, eps_tangent=0.2, eps_normal=0.3).normal_start == "random"
    torch.testing.assert_close(normal(3), normal(3), rtol=0, atol=0)
    assert not torch.allclose(normal(3), normal(4))
    assert not torch.allclose(normal(3), normal(3, normal_start="residual"))
    # one step from P⊥d, d the draw after the tangent start: r_n ∝ P⊥ H P⊥ d
    torch.manual_seed(3)
    _, d = torch.randn(4, 2, dtype=D), torch.randn(4, 5, dtype=D)
    r_n = normal(3)
    for i, h in enumerate(kl_hessians(model, x)):
        want = pn @ h @ pn @ d[i]
        torch.testing.assert_close(r_n[i], 0.3 * want / want.norm(), atol=1e-8, rtol=1e-6)


def test_hvp_keeps_aliased_submodules_trainable():
    torch.manual_seed(0)
    chart = LinearChart(torch.randn(4, 2, dtype=D), torch.randn(4, dtype=D))
    assert_aliases_stay_trainable(
        AliasedModel().to(D),
        lambda model: TNAR(model, chart, eps_tangent=0.2, eps_normal=0.2, method="hvp")(torch.randn(5, 4, dtype=D)),
    )


class _Chart:
    """A linear chart whose outputs can be made wrong."""

    def __init__(self, encode=None, decode=None) -> None:
        self.base = LinearChart(torch.randn(5, 2, dtype=D), torch.randn(5, dtype=D))
        self._encode, self._decode = encode, decode

    def encode(self, x):
        z = self.base.encode(x)
        return z if self._encode is None else self._encode(z)

    def decode(self, z):
        out = self.base.decode(z)
        return out if self._decode is None else self._decode(out)


def _nan_at_first(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


@pytest.mark.parametrize("method", ["finite_difference", "hvp"])
def test_bad_inputs_and_charts_raise_the_shared_errors_before_anything_changes(method):
    from .test_engines import assert_same, snapshot

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).to(D).train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    snap = snapshot(model)
    x = torch.randn(4, 5, dtype=D)
    bn = "eval" if method == "hvp" else "train"
    cases = [
        (_Chart(), _nan_at_first(x), ValueError, "x contains NaN or inf"),
        (_Chart(), x.to(torch.int64), TypeError, "x must be a floating-point tensor"),
        (_Chart(), x[:0], ValueError, "empty batch"),
        (_Chart(encode=_nan_at_first), x, ValueError, r"chart\.encode\(x\) contains NaN or inf"),
        (_Chart(encode=lambda z: z[:2]), x, ValueError, r"chart\.encode\(x\) must have shape \(4, \.\.\.\)"),
        (_Chart(encode=lambda z: (z,)), x, TypeError, r"chart\.encode\(x\) must return a floating-point tensor"),
        (_Chart(decode=_nan_at_first), x, ValueError, r"chart\.decode\(chart\.encode\(x\)\) contains NaN or inf"),
        (_Chart(decode=lambda o: o[:, :3]), x, ValueError, r"chart\.decode\(chart\.encode\(x\)\) must have shape"),
        (_Chart(decode=lambda o: o * torch.inf), x, ValueError, "contains NaN or inf"),
    ]
    for chart, xb, exc, match in cases:
        reg = TNAR(model, chart, eps_tangent=0.2, eps_normal=0.2, method=method, bn=bn)
        with pytest.raises(exc, match=match):
            reg(xb)
        assert_same(model, snap)
        assert reg.last is None
    reg = TNAR(model, _Chart(), eps_tangent=0.2, eps_normal=0.2, method=method, bn=bn)
    with pytest.raises(TypeError, match=r"logits must be a torch\.Tensor"):
        reg(x, logits=[0.0] * 4)
    with pytest.raises(ValueError, match=r"logits must have shape \(4, 3\)"):
        reg(x, logits=torch.zeros(4, 2, dtype=D))
    assert_same(model, snap)
    flat = TNAR(nn.Sequential(nn.Linear(5, 1), nn.Flatten(0)).to(D), _Chart(), eps_tangent=0.2, eps_normal=0.2)
    with pytest.raises(ValueError, match=r"model must return .*logits of shape \(B, num_classes\)"):
        flat(x)


def test_tnar_takes_no_labels():
    from .test_engines import assert_same, snapshot

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).to(D).train()
    snap = snapshot(model)
    x, y = torch.randn(4, 5, dtype=D), torch.tensor([0, 1, 2, 0])
    reg = TNAR(model, _Chart(), eps_tangent=0.2, eps_normal=0.2)
    for args in [(x, y), (x, torch.zeros(4, 3, dtype=D))]:
        with pytest.raises(TypeError, match=r"^TNAR takes no labels.*logits=.*F\.cross_entropy"):
            reg(*args)
        assert_same(model, snap)
        assert reg.last is None
    reg(x, logits=torch.zeros(4, 3, dtype=D))
    assert reg.last is not None


def test_a_genuine_error_in_the_decoders_backward_is_not_taken_for_a_missing_derivative():
    class Flaky(torch.autograd.Function):  # ×2, with a backward that fails once (a bug, not a missing rule)
        failed = False

        @staticmethod
        def forward(t):
            return 2 * t

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            if not Flaky.failed:
                Flaky.failed = True
                raise RuntimeError("bug in the decoder's backward")
            return 2 * g

        @staticmethod
        def jvp(ctx, t):
            return 2 * t

    class Chart(_Chart):
        def decode(self, z):
            return Flaky.apply(self.base.decode(z))

    model, _, x = setup()
    reg = TNAR(model, Chart(), eps_tangent=0.2, eps_normal=0.2)
    with pytest.raises(RuntimeError, match="bug in the decoder's backward"):
        reg(x)
