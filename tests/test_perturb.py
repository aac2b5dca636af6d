import math

import pytest
import torch

from robustreg.perturb import L2Ball, LinfBall, check_bounds, clamp_to_box, get_ball, random_start

SHAPES = [(5, 7), (4, 3, 6, 6)]


@pytest.mark.parametrize("shape", SHAPES)
def test_per_sample_norms_cover_all_non_batch_dims(shape):
    d = torch.randn(shape, dtype=torch.float64)
    flat = d.reshape(shape[0], -1)
    torch.testing.assert_close(LinfBall().norm(d), flat.abs().max(1).values)
    torch.testing.assert_close(L2Ball().norm(d), torch.linalg.vector_norm(flat, dim=1))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ball", [LinfBall(), L2Ball()], ids=["linf", "l2"])
def test_projection_lands_in_ball_is_idempotent_and_keeps_inside_points(ball, shape):
    eps = 0.3
    d = 2 * torch.randn(shape, dtype=torch.float64)
    p = ball.project(d, eps)
    assert (ball.norm(p) <= eps * (1 + 1e-12)).all()
    torch.testing.assert_close(ball.project(p, eps), p)
    inside = ball.project(d, eps) * 0.5
    torch.testing.assert_close(ball.project(inside, eps), inside)


@pytest.mark.parametrize("shape", SHAPES)
def test_l2_projection_is_the_nearest_point_of_the_ball(shape):
    # The closed form d·min(1, ε/‖d‖), written out on the flattened batch.
    eps = 0.5
    d = 3 * torch.randn(shape, dtype=torch.float64)
    p = L2Ball().project(d, eps)
    flat = d.reshape(shape[0], -1)
    expected = flat * (eps / torch.linalg.vector_norm(flat, dim=1, keepdim=True)).clamp(max=1)
    torch.testing.assert_close(p.reshape(shape[0], -1), expected)
    # Optimality: any other feasible point is farther away.
    other = L2Ball().project(p + 0.01 * torch.randn_like(p), eps)
    assert (L2Ball().norm(other - d) >= L2Ball().norm(p - d) - 1e-12).all()


def test_l2_projection_is_differentiable_and_gradchecks():
    d = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: L2Ball().project(t, 0.7), (d,))
    assert torch.autograd.gradcheck(lambda t: L2Ball().norm(t), (d,))


def test_linf_step_is_the_sign_step():
    d, g = torch.zeros(2, 3), torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.5, -0.1]])
    torch.testing.assert_close(LinfBall().step(d, g, 0.1), 0.1 * g.sign())


@pytest.mark.parametrize("shape", SHAPES)
def test_l2_step_has_length_alpha_and_is_zero_gradient_safe(shape):
    ball = L2Ball()
    g = torch.randn(shape)
    g[0] = 0.0  # one sample with a vanishing gradient
    d = torch.randn(shape)
    out = ball.step(d, g, 0.25)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], d[0])
    torch.testing.assert_close(ball.norm(out[1:] - d[1:]), torch.full((shape[0] - 1,), 0.25))
    # The direction is the gradient's own.
    cos = torch.nn.functional.cosine_similarity((out - d)[1:].flatten(1), g[1:].flatten(1))
    torch.testing.assert_close(cos, torch.ones_like(cos))


def test_linf_random_start_is_uniform_in_the_ball():
    d = LinfBall().random(torch.empty(4000, 5), 0.2)
    assert d.abs().max() <= 0.2
    # Uniform on [-ε, ε]: mean 0, variance ε²/3.
    assert abs(float(d.mean())) < 0.005
    assert abs(float(d.var()) - 0.2**2 / 3) < 0.001


def test_l2_random_start_is_uniform_in_the_ball():
    dim, eps, n = 5, 0.7, 20000
    d = L2Ball().random(torch.empty(n, dim, dtype=torch.float64), eps)
    r = L2Ball().norm(d)
    assert (r <= eps * (1 + 1e-12)).all()
    # Uniform in a d-ball: P(‖δ‖ ≤ ε q^(1/d)) = q for every q.
    for q in (0.1, 0.5, 0.9):
        frac = float((r <= eps * q ** (1 / dim)).double().mean())
        assert abs(frac - q) < 0.015, (q, frac)
    # Isotropic: the mean direction vanishes.
    assert float((d / r[:, None]).mean(0).norm()) < 0.03


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_stays_in_box_and_ball(norm):
    x = torch.rand(50, 3, 4, 4)
    x[:, 0] = 0.0  # inputs on the box's edges
    x[:, 1] = 1.0
    d = random_start(x, get_ball(norm), 0.3, (0.0, 1.0))
    assert ((x + d) >= 0).all() and ((x + d) <= 1).all()
    assert (get_ball(norm).norm(d) <= 0.3 + 1e-6).all()


def test_clamp_to_box_and_unbounded():
    x = torch.tensor([[0.0, 0.5, 1.0]])
    d = torch.tensor([[-0.2, 0.2, 0.2]])
    torch.testing.assert_close(clamp_to_box(x, d, (0.0, 1.0)), torch.tensor([[0.0, 0.2, 0.0]]))
    assert clamp_to_box(x, d, None) is d


def test_bad_norm_and_bounds():
    with pytest.raises(ValueError, match="norm must be one of"):
        get_ball("l1")
    with pytest.raises(ValueError, match="lo < hi"):
        check_bounds((1.0, 0.0))
    with pytest.raises(ValueError, match="lo < hi"):
        check_bounds((0.0, math.inf))
    with pytest.raises(TypeError, match="pair"):
        check_bounds(1.0)
    assert check_bounds(None) is None


@pytest.mark.parametrize("scale", [1e3, 1e-5])
def test_l2_step_is_a_unit_step_where_squaring_the_gradient_overflows_or_underflows(scale):
    # float16: 1e3² = 1e6 overflows (max 65504) and (1e-5)² underflows to 0; the step must not vanish
    g = (torch.randn(3, 2, 4, 4, dtype=torch.float64) * scale).half()
    step = L2Ball().step(torch.zeros_like(g), g, 0.5)
    expected = 0.5 * g.double() / g.double().flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(step.double(), expected, atol=2e-3, rtol=2e-3)
    zero = L2Ball().step(torch.zeros(2, 5), torch.zeros(2, 5), 1.0)
    assert torch.equal(zero, torch.zeros(2, 5))  # no step where g = 0
    nan = torch.randn(2, 5)
    nan[1, 3] = math.nan
    out = L2Ball().step(torch.zeros(2, 5), nan, 1.0)
    assert bool(torch.isfinite(out[0]).all()) and not bool(torch.isfinite(out[1]).any())  # shown, per sample
