"""Diagnostics of the inner maximisation: Amata's PMP-based criterion C and FOSC.

Criterion C (Ye et al., "Amata", AAAI 2021, eq. 14) asks how much better another inner-loop
setting would serve training right now. For an attack A_{α,K} (K projected steps of size α
from a start δ_0) it scores

    J(α, K) = ‖∇_θ ℓ(f_θ(A_{α,K}(x)), y)‖² − γ·K,

the squared norm of the training gradient the adversary yields (ℓ the batch-mean
cross-entropy) minus γ per step of cost, and

    C(α_t, K_t) = max_{(α, K) ∈ S} J(α, K) − J(α_t, K_t)

over a search set S (the paper used Bayesian optimisation; here a grid, which always contains
the current (α_t, K_t), so C ≥ 0, with C = 0 exactly when the current setting is a maximiser).
All settings start from one common δ_0 (common random numbers), and settings that share α
share their iterates: the cost is max K attack steps plus one parameter gradient per K, per α.

FOSC (Wang, Ma, Bailey, Yi, Zhou, Gu, "On the Convergence and Robustness of Adversarial
Training", ICML 2019) measures how far an adversarial x^k is from a first-order stationary point
of the inner maximisation over the ball ``‖x − x⁰‖ ≤ ε``:

    c(x^k) = max_{x ∈ ball} ⟨x − x^k, ∇_x ℓ(x^k)⟩ = ε·‖∇_x ℓ(x^k)‖_* − ⟨x^k − x⁰, ∇_x ℓ(x^k)⟩,

per sample, with ‖·‖_* the dual norm (ℓ1 for the ℓ∞ ball, ℓ2 for the ℓ2 ball). It is ≥ 0 and 0
at a maximiser of a linear loss; the box ``bounds`` is not part of the set (as in the paper).

Both take ``(model, x, y)`` and return detached values with ``as_dict()``/floats for logging, so
a recipe can call them every few steps as callbacks; neither changes modes, running statistics
or ``.grad`` (inner passes under the ``bn`` policy, gradients by ``torch.autograd.grad``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from .modes import check_bn, inner_mode, unwrap
from .perturb import Bounds, check_bounds, clamp_to_box, get_ball
from .perturb import random_start as uniform_start

DUAL_NORM = {"linf": 1, "l2": 2}
DEFAULT_KS = (1, 2, 5, 10, 20, 40)
DEFAULT_ALPHA_FRACTIONS = (1 / 40, 1 / 20, 1 / 10, 1 / 4, 1 / 2)  # × eps


@dataclass(frozen=True)
class CriterionC:
    """The result of :func:`criterion_c`: ``value`` = C ≥ 0, the ``current`` and ``best``
    settings ``(K, alpha)`` (the order of :func:`robustreg.amata_schedule`) and every setting's
    score J."""

    value: float
    current: tuple[int, float]
    best: tuple[int, float]
    scores: dict[tuple[int, float], float] = field(repr=False)

    def as_dict(self) -> dict[str, float]:
        return {
            "C": self.value,
            "J_current": self.scores[self.current],
            "J_best": self.scores[self.best],
            "best_K": float(self.best[0]),
            "best_alpha": self.best[1],
        }


def criterion_c(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    alpha: float,
    steps: int,
    eps: float,
    gamma: float = 0.04,
    candidates: Iterable[tuple[int, float]] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    alphas: Sequence[float] | None = None,
    norm: str = "linf",
    random_start: bool = True,
    bounds: Bounds = (0.0, 1.0),
    bn: str = "eval",
) -> CriterionC:
    """Criterion C at the current inner-loop setting ``(alpha, steps)`` on the batch ``(x, y)``.

    Args:
        model: the classifier being trained (its parameters with ``requires_grad`` are θ).
        x, y: a training batch.
        alpha, steps: the current setting (α_t, K_t), e.g. ``Amata.knobs()``.
        eps: threat-model radius.
        gamma: cost per step γ (0.04 in the paper's MNIST table).
        candidates: the search set S as ``(K, alpha)`` pairs; ``None``: the grid
            ``ks × alphas`` (``alphas`` default ``eps × (1/40, 1/20, 1/10, 1/4, 1/2)``).
            The current setting is always added.
        norm, random_start, bounds, bn: the attack's threat model, start (one common δ_0),
            box, and BatchNorm policy.

    Example:
        >>> c = criterion_c(model, x, y, alpha=0.01, steps=40, eps=0.3)
        >>> best_k, best_alpha = c.best  # the (K, α) of the largest C on the grid
    """
    eps = _checks.nonneg_float("eps", eps)
    alpha = _checks.nonneg_float("alpha", alpha)
    steps = _checks.count("steps", steps)
    gamma = _checks.nonneg_float("gamma", gamma)
    ball = get_ball(norm)
    _checks.flag("random_start", random_start)
    bounds = check_bounds(bounds)
    check_bn(bn)
    if candidates is None:
        grid_alphas = [eps * f for f in DEFAULT_ALPHA_FRACTIONS] if alphas is None else list(alphas)
        candidates = itertools.product(ks, grid_alphas)
    settings = {(_checks.count("candidate K", k), _checks.nonneg_float("candidate alpha", a)) for k, a in candidates}
    current = (steps, alpha)
    settings.add(current)
    x = _checks.check_x(x, bounds).detach()
    y = _checks.check_y(y, x.shape[0])
    net = unwrap(model)
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameters with requires_grad=True: ∇_θ is empty")
    by_alpha: dict[float, set[int]] = {}
    for k, a in settings:
        by_alpha.setdefault(a, set()).add(k)
    scores: dict[tuple[int, float], Tensor] = {}
    _checks.check_classes(y, _checks.num_classes(net, x))
    with torch.enable_grad(), inner_mode(net, bn):
        start = uniform_start(x, ball, eps, bounds) if random_start else torch.zeros_like(x)
        for a, ks_a in by_alpha.items():
            for k, score in _scores(net, params, x, y, start, a, ks_a, ball, eps, bounds).items():
                scores[(k, a)] = score - gamma * k
    values = {s: float(v) for s, v in scores.items()}
    best = max(values, key=lambda s: (values[s], s == current))  # ties go to the current setting
    return CriterionC(values[best] - values[current], current, best, values)


def _scores(net, params, x, y, start, alpha, ks, ball, eps, bounds) -> dict[int, Tensor]:
    """‖∇_θ ℓ‖² at the iterates K ∈ ``ks`` of one attack with step ``alpha`` from ``start``."""
    last, delta, out = max(ks), start, {}
    for k in range(last + 1):
        delta = delta.detach().requires_grad_(k < last)
        loss = F.cross_entropy(net(x + delta), y)
        wanted = (params if k in ks else []) + ([delta] if k < last else [])
        grads = torch.autograd.grad(loss, wanted, allow_unused=True)  # unused parameters: zero gradient
        if k in ks:
            out[k] = sum(g.pow(2).sum() for g in grads[: len(params)] if g is not None).detach()
        if k < last:  # the ascent direction is scale-free: the mean's gradient serves the sum's
            delta = clamp_to_box(x, ball.project(ball.step(delta.detach(), grads[-1], alpha), eps), bounds)
    return out


def fosc(
    model: nn.Module,
    x: Tensor,
    x_adv: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    bn: str = "eval",
) -> Tensor:
    """FOSC per sample, ``(B,)`` detached: ``ε‖g_i‖_* − ⟨x_adv_i − x_i, g_i⟩`` with
    ``g_i = ∇_{x_adv_i} CE(f(x_adv_i), y_i)`` (see the module docstring).

    Example:
        >>> x_adv = robustreg.PGD(eps=0.3, steps=40)(model, x, y)
        >>> bool((fosc(model, x, x_adv, y, eps=0.3) >= -1e-6).all())  # ≥ 0, and 0 at a KKT point
        True
    """
    eps = _checks.nonneg_float("eps", eps)
    get_ball(norm)
    check_bn(bn)
    x = _checks.check_x(x, None).detach()
    x_adv = _checks.check_x(x_adv, None, name="x_adv").detach()
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv must have x's shape {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    y = _checks.check_y(y, x.shape[0])
    net = unwrap(model)
    _checks.check_dtype(net, x_adv, name="x_adv")
    with torch.enable_grad(), inner_mode(net, bn):
        x_adv = x_adv.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net(x_adv), y, reduction="sum"), x_adv)
    return fosc_from_grad(x_adv.detach() - x, g, eps, norm)


def fosc_from_grad(delta: Tensor, grad: Tensor, eps: float, norm: str = "linf") -> Tensor:
    """FOSC ``ε‖g‖_* − ⟨δ, g⟩`` per sample from a perturbation ``δ`` and the loss's input
    gradient ``g`` at ``x + δ`` (both ``(B, ...)``), for a caller that already has them."""
    get_ball(norm)
    flat_g, flat_d = grad.flatten(1), delta.flatten(1)
    dual = torch.linalg.vector_norm(flat_g, ord=DUAL_NORM[norm], dim=1)
    return (eps * dual - (flat_d * flat_g).sum(1)).detach()
