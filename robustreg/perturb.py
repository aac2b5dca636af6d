"""Threat models: the ℓ∞ and ℓ2 balls, written once and used by every engine and attack.

A threat model is the set of allowed perturbations of one input x,

    S(x) = {δ : ‖δ‖_p ≤ ε} ∩ {δ : lo ≤ x + δ ≤ hi},

where the norm is taken per sample over all non-batch dimensions (a ``(B, C, H, W)`` image
batch and a ``(B, D)`` tabular batch are treated alike) and ``[lo, hi]`` is the valid input
box (``bounds``; ``None`` means no box). Each ball offers

- ``norm(δ)``: the per-sample norm, shape ``(B,)``;
- ``project(δ, ε)``: the Euclidean projection onto the ε-ball;
- ``step(δ, g, α)``: one steepest-ascent step of length α for the ball's norm:
  ``δ + α·sign(g)`` for ℓ∞ and ``δ + α·g/‖g‖₂`` for ℓ2 (a zero gradient gives no step);
- ``random(like, ε)``: a sample from the uniform distribution on the ε-ball.

:func:`clamp_to_box` then keeps ``x + δ`` inside ``bounds``. For ℓ∞ both sets are boxes, so
projecting onto the ball and then clamping into the box is the exact projection onto their
intersection. For ℓ2 the two-step map is the standard approximation used by Madry et al.
(2018) and every public ℓ2 PGD; it stays feasible (clamping towards x never increases the ℓ2
norm), which is what an attack needs.

:func:`ascend` is the projected-ascent loop ``δ ← clamp_box(Π_ε(step(δ, ∇_δ ℓ, α)))`` that every
training engine and evaluation attack runs on these sets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from einops import reduce
from torch import Tensor

from .func import per_sample, unit_l2

Bounds = tuple[float, float] | None


class NormBall(Protocol):
    """What an engine needs from a threat model (see the module docstring)."""

    name: str

    def norm(self, delta: Tensor) -> Tensor: ...

    def project(self, delta: Tensor, eps: float) -> Tensor: ...

    def step(self, delta: Tensor, grad: Tensor, alpha: float) -> Tensor: ...

    def random(self, like: Tensor, eps: float) -> Tensor: ...


class LinfBall:
    """The ℓ∞ ball ``{δ : max_i |δ_i| ≤ ε}`` (Madry et al., ICLR 2018).

    The ascent step is the steepest ascent for ℓ∞, ``δ + α·sign(∇)`` (FGSM when the start is
    0 and α = ε); projection is an elementwise clamp to ``[-ε, ε]``.
    """

    name = "linf"

    def norm(self, delta: Tensor) -> Tensor:
        return reduce(delta.abs(), "b ... -> b", "max")

    def project(self, delta: Tensor, eps: float) -> Tensor:
        return delta.clamp(-eps, eps)

    def step(self, delta: Tensor, grad: Tensor, alpha: float) -> Tensor:
        return delta + alpha * grad.sign()

    def random(self, like: Tensor, eps: float) -> Tensor:
        return torch.empty_like(like).uniform_(-eps, eps)


class L2Ball:
    """The ℓ2 ball ``{δ : ‖δ‖₂ ≤ ε}``, the norm taken per sample over all non-batch dims.

    Step: ``δ + α·g/‖g‖₂`` (no step where ``g = 0``; :func:`unit_l2`). Projection: ``δ·min(1, ε/‖δ‖₂)``.
    Random start: uniform in the ball, ``ε·u^(1/d)·z/‖z‖₂`` with ``z ~ N(0, I_d)`` and
    ``u ~ U(0, 1)``, d the number of elements of one sample.
    """

    name = "l2"

    def norm(self, delta: Tensor) -> Tensor:
        return reduce(delta.square(), "b ... -> b", "sum").sqrt()

    def project(self, delta: Tensor, eps: float) -> Tensor:
        n = self.norm(delta)
        # (B,): 1 inside the ball, ε/‖δ‖ outside; never divides by zero since ε/0 is not taken.
        scale = torch.where(n > eps, eps / n.clamp_min(torch.finfo(n.dtype).tiny), 1.0)
        return delta * per_sample(scale, delta)

    def step(self, delta: Tensor, grad: Tensor, alpha: float) -> Tensor:
        return delta + alpha * unit_l2(grad)

    def random(self, like: Tensor, eps: float) -> Tensor:
        z = torch.randn_like(like)
        d = z[0].numel()
        u = torch.rand(like.shape[0], dtype=like.dtype, device=like.device)
        radius = eps * u.pow(1.0 / d)
        return z * per_sample(radius / self.norm(z).clamp_min(torch.finfo(z.dtype).tiny), z)


BALLS: dict[str, NormBall] = {"linf": LinfBall(), "l2": L2Ball()}


def get_ball(norm: str) -> NormBall:
    """The threat model named ``norm`` (``"linf"`` or ``"l2"``)."""
    try:
        return BALLS[norm]
    except (KeyError, TypeError):
        raise ValueError(f"norm must be one of {sorted(BALLS)}, got {norm!r}") from None


def clamp_to_box(x: Tensor, delta: Tensor, bounds: Bounds) -> Tensor:
    """Return ``clamp(x + δ, lo, hi) − x``: the nearest δ' with ``x + δ'`` inside ``bounds``."""
    if bounds is None:
        return delta
    lo, hi = bounds
    return (x + delta).clamp(lo, hi) - x


def random_start(x: Tensor, ball: NormBall, eps: float, bounds: Bounds) -> Tensor:
    """A uniform sample of the ε-ball, clamped so that ``x + δ`` is inside ``bounds``."""
    return clamp_to_box(x, ball.random(x, eps), bounds)


def check_bounds(bounds: object) -> Bounds:
    """Validate ``bounds``: ``None`` or a pair of finite floats ``lo < hi``."""
    if bounds is None:
        return None
    try:
        lo, hi = (float(b) for b in bounds)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"bounds must be None or a pair (lo, hi) of floats, got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must satisfy -inf < lo < hi < inf, got {bounds!r}")
    return (lo, hi)


def ascend(
    loss_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    delta: Tensor,
    *,
    ball: NormBall,
    eps: float,
    alpha: float,
    steps: int,
    bounds: Bounds,
) -> Tensor:
    """``steps`` projected ascent steps on ``loss_fn(x + δ)`` from ``delta``; returns δ detached.

    ``loss_fn`` maps a batch ``(B, ...)`` to a scalar (a sum of per-sample losses, so that each
    sample's gradient does not depend on the batch size). ``x`` must not require grad.
    """
    delta = delta.detach()
    with torch.enable_grad():
        for _ in range(steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(x + delta), delta)
            delta = ball.project(ball.step(delta.detach(), grad, alpha), eps)
            delta = clamp_to_box(x, delta, bounds)
    return delta
