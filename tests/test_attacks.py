import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustreg import CW, CWL2, FGSM, PGD, cw_margin
from robustreg.attacks import keep_worst

from .conftest import TinyConvBN


def linear_binary(dim: int = 10) -> nn.Linear:
    lin = nn.Linear(dim, 2).double()
    return lin


def worst_case_linf(lin: nn.Linear, x, y, eps, bounds):
    """argmax_{‖δ‖∞ ≤ ε, x+δ ∈ box} CE for a 2-class linear model, in closed form.

    CE is increasing in the margin (w_o − w_y)·(x + δ), which is separable over coordinates,
    so each coordinate goes to its end of the interval [max(−ε, lo − x), min(ε, hi − x)]."""
    w = lin.weight.detach()
    v = w[1 - y] - w[y]  # (B, D)
    lo = torch.full_like(x, -eps)
    hi = torch.full_like(x, eps)
    if bounds is not None:
        lo, hi = torch.maximum(lo, bounds[0] - x), torch.minimum(hi, bounds[1] - x)
    return torch.where(v > 0, hi, lo)


@pytest.mark.parametrize("bounds", [None, (0.0, 1.0)])
def test_pgd_linf_on_a_linear_model_reaches_the_closed_form_worst_case(bounds):
    lin = linear_binary()
    x = torch.rand(16, 10, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    eps = 0.1
    x_adv = PGD(eps=eps, alpha=0.02, steps=10, bounds=bounds)(lin, x, y)
    torch.testing.assert_close(x_adv - x, worst_case_linf(lin, x, y, eps, bounds))


@pytest.mark.parametrize(("random_start", "steps"), [(False, 6), (True, 200)])
def test_pgd_l2_on_a_linear_model_reaches_the_closed_form_worst_case(random_start, steps):
    # From δ = 0 the steps run along v and stop on the sphere: exact after ε/α steps. From a
    # random start the radial projection shrinks the off-axis part geometrically.
    lin = linear_binary()
    x = torch.randn(16, 10, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    eps = 0.5
    w = lin.weight.detach()
    v = w[1 - y] - w[y]
    expected = eps * v / v.norm(dim=1, keepdim=True)
    x_adv = PGD(eps=eps, alpha=0.1, steps=steps, norm="l2", bounds=None, random_start=random_start)(lin, x, y)
    torch.testing.assert_close(x_adv - x, expected)


def test_cw_attack_on_a_linear_model_reaches_the_best_margin():
    # Two classes: the margin is linear, so its maximum over the ℓ∞ ball is attained at
    # δ = ε·sign(w_o − w_y) and equals the clean margin plus ε·‖w_o − w_y‖₁.
    lin = linear_binary()
    x = torch.rand(8, 10, dtype=torch.float64)
    y = torch.randint(0, 2, (8,))
    w = lin.weight.detach()
    x_adv = CW(eps=0.05, steps=5, alpha=0.02, bounds=None)(lin, x, y)
    expected = cw_margin(lin(x), y) + 0.05 * (w[1 - y] - w[y]).abs().sum(1)
    torch.testing.assert_close(cw_margin(lin(x_adv), y), expected)


def test_cw_margin_matches_a_loop():
    logits = torch.randn(7, 5)
    y = torch.randint(0, 5, (7,))
    expected = torch.stack([max(logits[i, j] for j in range(5) if j != y[i]) - logits[i, y[i]] for i in range(7)])
    torch.testing.assert_close(cw_margin(logits, y), expected)
    torch.testing.assert_close(cw_margin(logits, y, kappa=0.1), expected.clamp(max=0.1))


def test_fgsm_is_one_signed_gradient_step_in_eval_mode(conv_batch):
    model, x, y = conv_batch
    model.train()
    ref = copy.deepcopy(model).eval()
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(ref(xr), y, reduction="sum"), xr)
    expected = (x + 0.1 * g.sign()).clamp(0, 1)
    torch.testing.assert_close(FGSM(0.1)(model, x, y), expected)
    assert model.training  # restored


def test_restarts_keep_the_per_sample_worst_case(conv_batch):
    model, x, y = conv_batch
    model.eval()
    torch.manual_seed(3)
    single = PGD(eps=0.3, steps=2, restarts=1)(model, x, y)
    torch.manual_seed(3)  # the first restart draws the same start as the single run
    multi = PGD(eps=0.3, steps=2, restarts=4)(model, x, y)
    with torch.no_grad():
        l1, l4 = (F.cross_entropy(model(a), y, reduction="none") for a in (single, multi))
        f1, f4 = (model(a).argmax(1) != y for a in (single, multi))
    assert (f4 >= f1).all()
    assert ((f4 & ~f1) | (l4 >= l1 - 1e-6)).all()
    assert (multi - x).abs().max() <= 0.3 + 1e-6


def test_keep_worst_rule():
    d0, d1 = torch.zeros(4, 2), torch.ones(4, 2)
    best = (d0, torch.tensor([1.0, 1.0, 1.0, 5.0]), torch.tensor([False, True, False, True]))
    cand = (d1, torch.tensor([2.0, 9.0, 0.5, 1.0]), torch.tensor([False, False, True, True]))
    delta, loss, fooled = keep_worst(best, cand)
    # sample 0: same status, higher loss -> take; 1: incumbent fools -> keep;
    # 2: candidate fools -> take; 3: both fool, lower loss -> keep.
    torch.testing.assert_close(delta[:, 0], torch.tensor([1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(loss, torch.tensor([2.0, 1.0, 0.5, 5.0]))
    assert fooled.tolist() == [False, True, True, True]


def test_attack_leaves_model_state_alone(conv_batch):
    model, x, y = conv_batch
    model.train()
    model.bn.eval()  # a mixed-mode model must come back exactly as it was
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    state = copy.deepcopy(model.state_dict())
    PGD(eps=0.1, steps=3, restarts=2)(model, x, y)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert model.training and model.conv.training and not model.bn.training
    assert all(bool((p.grad == 1).all()) for p in model.parameters())


def test_attack_argument_errors():
    with pytest.raises(ValueError, match="loss must be one of"):
        PGD(loss="hinge")
    with pytest.raises(ValueError, match="restarts > 1 needs random_start"):
        PGD(restarts=2, random_start=False)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        PGD(eps=-1.0)
    with pytest.raises(ValueError, match="bn must be one of"):
        PGD(bn="batch")
    with pytest.raises(ValueError, match="outside the model's classes"):
        PGD(eps=0.1)(TinyConvBN(classes=3), torch.rand(2, 1, 8, 8), torch.tensor([0, 3]))


def test_cwl2_on_a_linear_model_finds_the_closed_form_distance_to_the_boundary():
    """Two classes, f(x) = Wx + b, no box: the smallest ℓ2 perturbation that flips sample i is
    |m_i|/‖w_y − w_o‖ along w_o − w_y (m the logit margin); CW-ℓ2 must reach it from above."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 2).double()
    x = torch.randn(10, 6, dtype=torch.float64)
    with torch.no_grad():
        y = lin(x).argmax(1)  # correctly classified by construction
        d = lin.weight[1] - lin.weight[0]
        margin = (lin(x)[:, 1] - lin(x)[:, 0]).abs()
    closest = margin / d.norm()
    x_adv = CWL2(c=0.1, steps=300, lr=0.05, search_steps=12, bounds=None)(lin, x, y)
    dist = (x_adv - x).norm(dim=1)
    with torch.no_grad():
        assert (lin(x_adv).argmax(1) != y).all()
    assert (dist >= closest * (1 - 1e-6)).all()  # nothing closer misclassifies
    assert (dist <= closest * 1.03 + 1e-3).all(), dist / closest


def closest_in_box(g, h, x, lo=0.0, hi=1.0):
    """The smallest ‖δ‖₂ with g·(x + δ) + h = 0 and x + δ in [lo, hi], per row of x: by the KKT
    conditions δ(λ) = clamp(−λ·sign(m)·g, lo − x, hi − x) (m = g·x + h), with λ ≥ 0 the smallest
    that reaches the boundary, found by bisection (|g·δ(λ)| grows with λ)."""
    out = []
    for xi in x:
        m = float(xi @ g + h)
        delta = lambda lam, xi=xi, m=m: torch.clamp(-math.copysign(lam, m) * g, lo - xi, hi - xi)  # noqa: E731
        low, high = 0.0, 1.0
        while abs(float(g @ delta(high))) < abs(m):
            low, high = high, 2 * high
        for _ in range(100):
            mid = (low + high) / 2
            low, high = (low, mid) if abs(float(g @ delta(mid))) >= abs(m) else (mid, high)
        out.append(delta(high).norm())
    return torch.stack(out)


def test_cwl2_defaults_move_pixels_on_the_edge_of_the_box():
    """Binary inputs (every pixel at 0 or 1, as most of an MNIST image), two classes, f(x) = Wx + b:
    CW-ℓ2 with its defaults reaches the closest misclassifying point inside the box (found by the
    KKT conditions) within 3%. With the paper's lr = 0.01 and 100 steps no edge pixel can move:
    refused."""
    torch.manual_seed(0)
    lin = nn.Linear(40, 2).double()
    x = (torch.rand(16, 40, dtype=torch.float64) > 0.7).double()
    with torch.no_grad():
        y = lin(x).argmax(1)
        g = lin.weight[1] - lin.weight[0]
        closest = closest_in_box(g, float(lin.bias[1] - lin.bias[0]), x)
        unboxed = (lin(x)[:, 1] - lin(x)[:, 0]).abs() / g.norm()
    assert (closest > unboxed * 1.05).sum() >= 8  # the box binds: not the unbounded distance
    x_adv = CWL2()(lin, x, y)
    with torch.no_grad():
        assert (lin(x_adv).argmax(1) != y).all()
    dist = (x_adv - x).norm(dim=1)
    assert (dist >= closest * (1 - 1e-6)).all()
    assert (dist <= closest * 1.03).all(), dist / closest
    with pytest.raises(ValueError, match=r"steps·lr must be at least 7\.25 .*steps=100 and lr=0\.01"):
        CWL2(lr=0.01)
    weak = CWL2()
    object.__setattr__(weak, "lr", 0.01)  # forced past the check: no edge pixel moves, nothing is found
    assert torch.equal(weak(lin, x, y), x)
    CWL2(lr=0.01, bounds=None)  # no box, no edge


def test_cwl2_with_a_budget_returns_x_where_the_smallest_perturbation_is_too_large():
    torch.manual_seed(1)
    lin = nn.Linear(4, 2).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    with torch.no_grad():
        y = lin(x).argmax(1)
        closest = (lin(x)[:, 1] - lin(x)[:, 0]).abs() / (lin.weight[1] - lin.weight[0]).norm()
    eps = float(closest.median())
    x_adv = CWL2(eps=eps, c=0.1, steps=300, lr=0.05, search_steps=10, bounds=None)(lin, x, y)
    moved = (x_adv - x).norm(dim=1) > 0
    assert moved[closest < eps / 1.03].all() and not moved[closest > eps].any()  # found within 3% (above)
    assert ((x_adv - x).norm(dim=1) <= eps + 1e-9).all()


def test_cwl2_stays_in_the_box_and_leaves_the_model_alone(conv_batch):
    model, x, y = conv_batch
    model.train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    state = copy.deepcopy(model.state_dict())
    x_adv = CWL2(steps=10, lr=1.0, search_steps=2)(model, x, y)
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert model.training and all(bool((p.grad == 1).all()) for p in model.parameters())
    for kwargs, word in [({"c": 0}, "c"), ({"steps": 0}, "steps"), ({"lr": -1}, "lr"), ({"eps": -1}, "eps"),
                         ({"search_steps": 0}, "search_steps"), ({"kappa": -1}, "kappa")]:  # fmt: skip
        with pytest.raises(ValueError, match=word):
            CWL2(**kwargs)
