"""Criterion C and FOSC against direct computations."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustreg
from robustreg import criterion_c, fosc
from robustreg.diagnostics import fosc_from_grad

from .conftest import TinyConvBN, assert_same, snapshot

GRID = [(k, a) for k in (1, 2, 4) for a in (0.02, 0.05)]


def batch():
    return torch.rand(6, 1, 8, 8), torch.randint(0, 5, (6,))


def test_c_is_nonnegative_with_the_current_setting_in_the_set():
    model, (x, y) = TinyConvBN(), batch()
    for current in [(1, 0.02), (4, 0.05), (3, 0.01)]:  # the last one is added to the set
        c = criterion_c(model, x, y, steps=current[0], alpha=current[1], eps=0.1, gamma=0.01, candidates=GRID)
        assert c.value >= 0 and c.current == current and current in c.scores
        assert c.value == pytest.approx(max(c.scores.values()) - c.scores[current])


def test_c_is_zero_at_the_maximiser():
    model, (x, y) = TinyConvBN(), batch()
    torch.manual_seed(1)
    first = criterion_c(model, x, y, steps=1, alpha=0.02, eps=0.1, gamma=0.001, candidates=GRID)
    torch.manual_seed(1)  # the same common start
    again = criterion_c(model, x, y, steps=first.best[0], alpha=first.best[1], eps=0.1, gamma=0.001, candidates=GRID)
    assert again.value == 0.0 and again.best == first.best
    assert again.scores == first.scores


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_scores_equal_pgd_then_the_gradient_norm_written_out(norm):
    model, (x, y) = TinyConvBN().eval(), batch()
    gamma, eps = 0.05, 0.1
    c = criterion_c(
        model, x, y, steps=3, alpha=0.03, eps=eps, gamma=gamma, candidates=GRID, norm=norm, random_start=False
    )
    for k, a in [(3, 0.03), (4, 0.05), (1, 0.02)]:
        attack = robustreg.PGD(eps=eps, alpha=a, steps=k, norm=norm, random_start=False)
        loss = F.cross_entropy(model(attack(model, x, y)), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        want = sum(float(g.pow(2).sum()) for g in grads) - gamma * k
        assert c.scores[(k, a)] == pytest.approx(want, rel=1e-5)
    assert c.as_dict()["C"] == c.value and c.as_dict()["best_K"] == c.best[0]


def test_c_ignores_parameters_outside_the_graph():
    model, (x, y) = TinyConvBN(), batch()
    model.unused = nn.Linear(3, 3)
    c = criterion_c(model, x, y, steps=1, alpha=0.02, eps=0.1, candidates=GRID)
    assert c.value >= 0


def test_c_leaves_the_model_as_it_was():
    model, (x, y) = TinyConvBN().train(), batch()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    snap = snapshot(model)
    criterion_c(model, x, y, steps=2, alpha=0.02, eps=0.1, candidates=GRID)
    assert_same(model, snap)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"gamma": -1.0}, ValueError, "gamma must be a finite number >= 0"),
        ({"steps": -1}, ValueError, "steps must be an int >= 0"),
        ({"candidates": [(2.5, 0.1)]}, TypeError, "candidate K must be an int"),
        ({"candidates": [(2, -0.1)]}, ValueError, "candidate alpha must be"),
        ({"norm": "l1"}, ValueError, "norm must be one of"),
        ({"bn": "batch"}, ValueError, "bn must be one of"),
    ],
)
def test_c_bad_arguments(kwargs, exc, match):
    model, (x, y) = TinyConvBN(), batch()
    with pytest.raises(exc, match=match):
        criterion_c(model, x, y, **{"steps": 1, "alpha": 0.02, "eps": 0.1} | kwargs)


def two_class_linear(dim: int = 7) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 2-class linear model: ∇_x CE points along ±(w_other − w_y), a fixed direction per sample."""
    model = nn.Linear(dim, 2)
    x, y = torch.rand(5, dim), torch.randint(0, 2, (5,))
    w = model.weight.detach()
    return model, x, y, w[1 - y] - w[y]


def test_fosc_is_zero_at_the_maximiser_of_a_linear_loss():
    model, x, y, direction = two_class_linear()
    eps = 0.3
    at_corner = fosc(model, x, x + eps * direction.sign(), y, eps=eps)
    torch.testing.assert_close(at_corner, torch.zeros(5), atol=1e-6, rtol=0)
    unit = direction / direction.norm(dim=1, keepdim=True)
    at_sphere = fosc(model, x, x + eps * unit, y, eps=eps, norm="l2")
    torch.testing.assert_close(at_sphere, torch.zeros(5), atol=1e-6, rtol=0)


def test_fosc_at_the_clean_point_is_eps_times_the_dual_norm():
    model, (x, y) = TinyConvBN().eval(), batch()
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    torch.testing.assert_close(fosc(model, x, x, y, eps=0.2), 0.2 * g.flatten(1).abs().sum(1))
    torch.testing.assert_close(fosc(model, x, x, y, eps=0.2, norm="l2"), 0.2 * g.flatten(1).norm(dim=1))
    x_adv = (x + 0.1 * torch.randn_like(x)).detach()
    xr = x_adv.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    want = 0.2 * g.flatten(1).abs().sum(1) - ((x_adv - x) * g).flatten(1).sum(1)
    torch.testing.assert_close(fosc(model, x, x_adv, y, eps=0.2), want)
    torch.testing.assert_close(fosc_from_grad(x_adv - x, g, 0.2), want)


def test_fosc_checks_its_inputs():
    model, (x, y) = TinyConvBN(), batch()
    with pytest.raises(ValueError, match="x_adv must have x's shape"):
        fosc(model, x, x[:3], y, eps=0.1)
    with pytest.raises(ValueError, match="eps must be"):
        fosc(model, x, x, y, eps=-0.1)
