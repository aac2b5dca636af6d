"""robustreg.func against explicit matrices: torch.func.hessian, eigh, linalg.solve."""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from robustreg.func import (
    conjugate_gradient,
    detached_parameters,
    gram_map,
    gram_solve,
    hvp,
    jvp_map,
    missing_double_backward,
    missing_forward_rule,
    per_sample_dot,
    per_sample_normalize,
    power_iteration,
    power_steps,
    vjp_map,
)

from .conftest import AliasedModel

D = torch.float64


def mlp_loss():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(D)
    params = {k: v.detach() for k, v in net.named_parameters()}
    target = torch.softmax(torch.randn(3, dtype=D), 0)

    def f(x):  # a scalar: KL-like loss of one input
        logp = torch.log_softmax(functional_call(net, params, (x,)), -1)
        return -(target * logp).sum()

    return f


@pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
def test_hvp_equals_the_explicit_hessian(mode):
    f = mlp_loss()
    x, v = torch.randn(5, dtype=D), torch.randn(5, dtype=D)
    torch.testing.assert_close(hvp(f, x, v, mode=mode), hessian(f)(x) @ v)


def test_hvp_auto_falls_back_when_forward_mode_is_missing():
    class NoForward(torch.autograd.Function):  # cube with a backward rule only
        @staticmethod
        def forward(x):
            return x**3

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x**2 * g

    def f(x):
        return NoForward.apply(x).sum()

    x, v = torch.randn(4, dtype=D), torch.randn(4, dtype=D)
    with pytest.raises((NotImplementedError, RuntimeError)):
        hvp(f, x, v, mode="forward")
    torch.testing.assert_close(hvp(f, x, v, mode="auto"), 6 * x * v)
    with pytest.raises(ValueError, match="mode"):
        hvp(f, x, v, mode="sideways")
    with pytest.raises(ValueError, match="shape"):
        hvp(f, x, v[:2])


def test_power_iteration_finds_each_samples_top_eigenvector():
    torch.manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(3, 6, 6, dtype=D))
    eig = torch.tensor([5.0, 2.0, 1.0, 0.5, 0.1, 0.0], dtype=D)
    a = q @ torch.diag_embed(eig.expand(3, 6)) @ q.transpose(1, 2)  # (3, 6, 6) SPSD, top eigenvalue 5

    def op(v):  # (B, 6) -> (B, 6), each sample its own matrix
        return torch.einsum("bij,bj->bi", a, v)

    v, rayleigh = power_iteration(op, torch.randn(3, 6, dtype=D), iters=60)
    top = q[:, :, 0]
    assert torch.allclose(per_sample_dot(v, top).abs(), torch.ones(3, dtype=D), atol=1e-10)
    torch.testing.assert_close(rayleigh, torch.full((3,), 5.0, dtype=D))
    v0, r0 = power_iteration(op, 2 * top, iters=0)  # zero iterations: the normalised start
    torch.testing.assert_close(v0, top)
    torch.testing.assert_close(r0, torch.full((3,), 5.0, dtype=D))


def test_power_steps_is_the_written_out_iteration_and_stops_at_tol():
    torch.manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(4, 5, 5, dtype=D))
    eig = torch.tensor([3.0, 2.9, 1.0, 0.5, 0.0], dtype=D)  # a small gap: slow convergence
    a = q @ torch.diag_embed(eig.expand(4, 5)) @ q.transpose(1, 2)
    calls = []

    def op(v):
        calls.append(1)
        return torch.einsum("bij,bj->bi", a, v)

    v0 = per_sample_normalize(torch.randn(4, 5, dtype=D))
    v, rayleigh = power_steps(op, v0, iters=7)
    w, expected = v0, None
    for _ in range(7):  # written out: the estimate is that of each step's input
        image = torch.einsum("bij,bj->bi", a, w)
        expected = (w * image).sum(1)
        w = image / image.norm(dim=1, keepdim=True)
    torch.testing.assert_close(v, w)
    torch.testing.assert_close(rayleigh, expected)
    assert len(calls) == 7  # no product beyond the steps'
    assert power_steps(op, v0, iters=0) == (v0, None)

    calls.clear()
    v, rayleigh = power_steps(op, v0, iters=10_000, tol=1e-6)
    assert 2 < len(calls) < 10_000  # stopped once every estimate settled
    assert (rayleigh - 3.0).abs().max() < 1e-3
    with pytest.raises(ValueError, match="iters"):
        power_steps(op, v0, iters=-1)


def test_power_steps_keeps_the_direction_of_a_sample_whose_image_vanishes():
    a = torch.stack([torch.diag(torch.tensor([2.0, 1.0], dtype=D)), torch.zeros(2, 2, dtype=D)])
    v0 = per_sample_normalize(torch.tensor([[1.0, 1.0], [0.6, 0.8]], dtype=D))
    v, rayleigh = power_steps(lambda u: torch.einsum("bij,bj->bi", a, u), v0, iters=3)
    torch.testing.assert_close(v[1], v0[1])  # H = 0: the previous direction, not 0 or NaN
    torch.testing.assert_close(rayleigh[1], torch.tensor(0.0, dtype=D))
    assert torch.isfinite(v).all() and v[0, 0] > v[0, 1]


def test_conjugate_gradient_solves_spd_systems_per_sample():
    torch.manual_seed(2)
    m = torch.randn(4, 5, 5, dtype=D)
    a = m @ m.transpose(1, 2) + 0.5 * torch.eye(5, dtype=D)
    b = torch.randn(4, 5, dtype=D)

    def op(v):
        return torch.einsum("bij,bj->bi", a, v)

    exact = torch.linalg.solve(a, b)
    torch.testing.assert_close(conjugate_gradient(op, b, iters=5), exact)  # n iterations: exact
    few = conjugate_gradient(op, b, iters=2)
    assert (few - exact).norm() < b.norm()  # a few iterations already approach it
    torch.testing.assert_close(conjugate_gradient(op, b, iters=5, x0=exact), exact)


def test_chart_jacobian_products_equal_the_explicit_jacobian():
    torch.manual_seed(3)
    dec = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 4)).to(D)
    z = torch.randn(2, dtype=D)
    jac = jacrev(dec)(z)  # (4, 2)
    v, u = torch.randn(2, dtype=D), torch.randn(4, dtype=D)
    out, jv = jvp_map(dec, z, v)
    torch.testing.assert_close(out, dec(z))
    torch.testing.assert_close(jv, jac @ v)
    torch.testing.assert_close(vjp_map(dec, z, u), jac.t() @ u)
    torch.testing.assert_close(gram_map(dec, z)(v), jac.t() @ jac @ v)


def test_gram_solve_returns_the_solution_and_its_image():
    torch.manual_seed(4)
    jac = torch.randn(4, 6, 3, dtype=D)  # one (6, 3) Jacobian per sample
    b = torch.randn(4, 3, dtype=D)

    def jv(v):
        return torch.einsum("bij,bj->bi", jac, v)

    def jtu(u):
        return torch.einsum("bij,bi->bj", jac, u)

    exact = torch.linalg.solve(jac.transpose(1, 2) @ jac, b)
    x, image = gram_solve(jv, jtu, b, iters=3)  # dimension 3: exact
    torch.testing.assert_close(x, exact)
    torch.testing.assert_close(image, jv(exact))
    x, image = gram_solve(jv, jtu, b, iters=1)  # inexact, but the image is still J x
    torch.testing.assert_close(image, jv(x))
    x, image = gram_solve(jv, jtu, torch.zeros_like(b), iters=3)  # no step taken
    assert not x.any() and not image.any() and image.shape == (4, 6)


def test_tnar_jacobian_products_of_a_conv_decoder_equal_forward_mode():
    from torch.func import jvp

    from robustreg.charts import VAE
    from robustreg.charts.base import FuncLinearization

    torch.manual_seed(5)
    chart = VAE((1, 8, 8), latent=3, width=4).to(D).eval()
    z = torch.randn(5, 3, dtype=D)
    ops = FuncLinearization(chart.decode, z)  # the generic products every chart without its own gets
    v, u = torch.randn(5, 3, dtype=D), torch.randn(5, 1, 8, 8, dtype=D)
    torch.testing.assert_close(ops.jvp(v), jvp(chart.decode, (z,), (v,))[1])  # the transposed pullback
    assert ops.jvp_mode == "transpose"
    torch.testing.assert_close(per_sample_dot(ops.jvp(v), u), per_sample_dot(v, ops.vjp(u)))  # adjoint
    torch.testing.assert_close(ops.point, chart.decode(z))


def test_hvp_auto_falls_back_on_torchs_own_missing_rule_error():
    def f(x):  # cdist has no forward-mode rule in torch
        return torch.cdist(x[None], torch.ones(3, 4, dtype=D)).pow(2).sum()

    x, v = torch.randn(4, dtype=D), torch.randn(4, dtype=D)
    with pytest.raises(NotImplementedError) as info:
        hvp(f, x, v, mode="forward")
    assert missing_forward_rule(info.value)
    # f = 3‖x − 1‖² (three rows of ones): H = 6I
    torch.testing.assert_close(hvp(f, x, v, mode="auto"), 6 * v)


def test_hvp_auto_reraises_a_genuine_error_instead_of_retrying_in_reverse_mode():
    calls = []

    def f(x):  # fails once, as a bug in a user's model would; a retry would succeed
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("shape mismatch in the user's model")
        return (x**3).sum()

    x, v = torch.randn(4, dtype=D), torch.randn(4, dtype=D)
    with pytest.raises(RuntimeError, match="user's model"):
        hvp(f, x, v, mode="auto")
    assert not missing_forward_rule(RuntimeError("shape mismatch"))
    assert not missing_forward_rule(NotImplementedError("an abstract method"))
    assert missing_double_backward(NotImplementedError("the derivative for 'foo' is not implemented."))
    assert not missing_double_backward(RuntimeError("CUDA out of memory"))


def test_detached_parameters_keeps_aliased_and_tied_parameters():
    model = AliasedModel()
    before = dict(model.named_parameters(remove_duplicate=False))
    assert len(before) > len(dict(model.named_parameters()))  # the aliases are there
    x = torch.randn(5, 4)
    with detached_parameters(model):
        out = model(x)
        assert not any(isinstance(p, nn.Parameter) for p in model.parameters())
    assert not out.requires_grad  # the weights were constants
    after = dict(model.named_parameters(remove_duplicate=False))
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    with pytest.raises(ZeroDivisionError), detached_parameters(model):
        raise ZeroDivisionError  # restored when the body raises too
    assert all(p is before[k] for k, p in model.named_parameters(remove_duplicate=False))


@pytest.mark.parametrize("scale", [1e-25, 1e25])
def test_per_sample_normalize_gives_unit_vectors_where_squares_underflow_or_overflow(scale):
    v = torch.randn(3, 4, 5) * scale  # float32: squares of 1e-25 underflow to 0, of 1e25 overflow to inf
    v[1] = 0
    out = per_sample_normalize(v)
    torch.testing.assert_close(out.flatten(1).norm(dim=1), torch.tensor([1.0, 0.0, 1.0]))
    expected = v.double() / v.double().flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, 1, 1)
    torch.testing.assert_close(out, expected.float())
    assert torch.equal(per_sample_normalize(v, eps=math.inf), v)  # norms at most eps: left as they are
    torch.testing.assert_close(per_sample_normalize(v, eps=1e-300), out)
