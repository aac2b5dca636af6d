"""Evaluation attacks: FGSM, PGD-k with cross-entropy or CW margin, random restarts (their
projected-ascent loop, shared with every training engine, is :func:`robustreg.perturb.ascend`),
and the Carlini–Wagner ℓ2 minimal-perturbation attack (:class:`CWL2`).

PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018)
maximises a per-sample loss ℓ over the threat model S(x) (see :mod:`robustreg.perturb`):

    δ_0 ∈ S(x) (0 or uniform),   δ_{k+1} = Π_{S(x)}( δ_k + α·step(∇_δ Σ_i ℓ_i(f(x + δ_k), y_i)) ),

with ``step`` the ball's steepest-ascent direction (sign for ℓ∞, normalised gradient for ℓ2).
FGSM (Goodfellow et al., ICLR 2015) is one step with α = ε from δ_0 = 0. The CW-ℓ∞ attack is PGD
on the Carlini–Wagner margin ``max_{j≠y} z_j − z_y`` (clipped at κ), as in the TRADES and YOPO
evaluations.

The gradient is taken with ``torch.autograd.grad`` with respect to δ alone: parameters' ``.grad``
are never touched (module backward hooks, which watch input gradients, do see the attack's
backward passes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from .func import per_sample
from .modes import check_bn, inner_mode, unwrap
from .perturb import Bounds, ascend, check_bounds, get_ball, random_start

LOSSES = ("ce", "cw")


def cw_margin(logits: Tensor, y: Tensor, kappa: float = math.inf) -> Tensor:
    """Per-sample Carlini–Wagner margin ``min(max_{j≠y} z_j − z_y, κ)``, shape ``(B,)``.

    Positive exactly where the sample is misclassified; maximising it is the CW attack.
    """
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return (others.amax(1) - z_y).clamp(max=kappa)


def per_sample_loss(loss: str, logits: Tensor, y: Tensor, kappa: float = math.inf) -> Tensor:
    """The attack objective ``"ce"`` (cross-entropy) or ``"cw"`` (margin) per sample, ``(B,)``."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    return cw_margin(logits, y, kappa)


@dataclass(frozen=True)
class PGD:
    """Projected gradient descent attack (Madry et al., ICLR 2018), with restarts.

    Args:
        eps: radius of the threat model.
        alpha: step size; ``None`` means ``2.5·eps/steps`` (the rule of MadryLab's
            ``robustness`` library: enough to cross the ball and come back).
        steps: number of ascent steps k (PGD-k). ``steps=0`` is allowed: no ascent step, the
            result is the start, uniform in the ball (with ``restarts``, the worst start) or, with
            ``random_start=False``, x itself.
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"ce"`` (cross-entropy) or ``"cw"`` (margin ``max_{j≠y} z_j − z_y``, CW-ℓ∞).
        restarts: independent random starts; per sample the worst case is kept (a
            misclassifying perturbation first, then the larger attack loss).
        random_start: start uniformly in the ball (else from δ = 0).
        bounds: valid input box, ``None`` for unbounded inputs.
        bn: BatchNorm policy of the attack passes (:mod:`robustreg.modes`); ``"eval"`` by
            default, so an attack never changes running statistics.
        kappa: clip of the CW margin (``inf``: unclipped).

    Calling ``attack(model, x, y)`` returns the adversarial batch ``x + δ`` (detached); the
    model's modes, running statistics (under ``"eval"``/``"frozen"``) and ``.grad`` are left
    as they were.

    Example:
        >>> attack = PGD(eps=8 / 255, steps=20)
        >>> x_adv = attack(model, x, y)
        >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)  # inside the ε-ball (and the box [0, 1])
        True
    """

    eps: float = 8 / 255
    alpha: float | None = None
    steps: int = 20
    norm: str = "linf"
    loss: str = "ce"
    restarts: int = 1
    random_start: bool = True
    bounds: Bounds = (0.0, 1.0)
    bn: str = "eval"
    kappa: float = math.inf

    def __post_init__(self) -> None:
        _checks.nonneg_float("eps", self.eps)
        if self.alpha is not None:
            _checks.nonneg_float("alpha", self.alpha)
        _checks.count("steps", self.steps)
        get_ball(self.norm)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        _checks.count("restarts", self.restarts, minimum=1)
        _checks.flag("random_start", self.random_start)
        if self.restarts > 1 and not self.random_start:
            raise ValueError("restarts > 1 needs random_start=True (restarts from δ = 0 are all the same)")
        object.__setattr__(self, "bounds", check_bounds(self.bounds))
        check_bn(self.bn)
        if isinstance(self.kappa, bool) or not isinstance(self.kappa, (int, float)):
            raise TypeError(f"kappa must be a real number, got {type(self.kappa).__name__}")
        if not self.kappa > 0:
            raise ValueError(f"kappa must be > 0 (inf: unclipped), got {self.kappa}")

    @property
    def step_size(self) -> float:
        if self.alpha is not None:
            return float(self.alpha)
        return 2.5 * self.eps / max(self.steps, 1)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """``x + δ`` for the worst δ found. Checked first, changing nothing on failure: model a
        module returning ``(B, C)`` logits, x a finite floating batch inside ``bounds`` of the
        model's dtype, y integer labels ``(B,)`` in the model's classes."""
        _checks.module("model", model)
        x = _checks.check_x(x, self.bounds).detach()
        y = _checks.check_y(y, x.shape[0])
        net = unwrap(model)
        _checks.check_classes(y, _checks.num_classes(net, x))
        ball = get_ball(self.norm)

        def objective(x_adv: Tensor) -> Tensor:
            return per_sample_loss(self.loss, net(x_adv), y, self.kappa).sum()

        best: tuple[Tensor, Tensor, Tensor] | None = None  # (δ, attack loss, misclassified)
        with inner_mode(net, self.bn):
            for _ in range(self.restarts):
                start = random_start(x, ball, self.eps, self.bounds) if self.random_start else torch.zeros_like(x)
                delta = ascend(
                    objective, x, start, ball=ball, eps=self.eps, alpha=self.step_size,
                    steps=self.steps, bounds=self.bounds,
                )  # fmt: skip
                if self.restarts == 1:
                    return x + delta
                with torch.no_grad():
                    logits = net(x + delta)
                cand = (delta, per_sample_loss(self.loss, logits, y, self.kappa), logits.argmax(1) != y)
                best = cand if best is None else keep_worst(best, cand)
        assert best is not None
        return x + best[0]


def keep_worst(
    best: tuple[Tensor, Tensor, Tensor], cand: tuple[Tensor, Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Merge a restart ``(δ, loss, misclassified)`` into the running worst case, per sample.

    The candidate replaces the incumbent where it misclassifies and the incumbent does not,
    or where both agree on that and the candidate's loss is higher.
    """
    (b_delta, b_loss, b_fooled), (delta, loss, fooled) = best, cand
    take = (fooled & ~b_fooled) | ((fooled == b_fooled) & (loss > b_loss))
    mask = per_sample(take, delta)
    return torch.where(mask, delta, b_delta), torch.where(take, loss, b_loss), b_fooled | fooled


def FGSM(
    eps: float = 8 / 255, *, norm: str = "linf", loss: str = "ce", bounds: Bounds = (0.0, 1.0), bn: str = "eval"
) -> PGD:
    """Fast gradient sign method (Goodfellow et al., ICLR 2015): ``x + ε·sign(∇_x ℓ)``.

    One step of size ε from δ = 0 (for ``norm="l2"``: the fast gradient method ``x + ε·g/‖g‖₂``),
    i.e. ``PGD(steps=1, alpha=eps, random_start=False)``.
    """
    return PGD(eps=eps, alpha=eps, steps=1, norm=norm, loss=loss, random_start=False, bounds=bounds, bn=bn)


def CW(
    eps: float = 8 / 255,
    *,
    steps: int = 20,
    alpha: float | None = None,
    norm: str = "linf",
    kappa: float = math.inf,
    restarts: int = 1,
    bounds: Bounds = (0.0, 1.0),
    bn: str = "eval",
) -> PGD:
    """CW-ℓ∞ (or ℓ2): PGD-k on the Carlini–Wagner margin ``min(max_{j≠y} z_j − z_y, κ)``.

    ``steps=0`` is allowed, as for :class:`PGD`: the result is the random start."""
    return PGD(
        eps=eps, alpha=alpha, steps=steps, norm=norm, loss="cw", kappa=kappa,
        restarts=restarts, bounds=bounds, bn=bn,
    )  # fmt: skip


_CWL2_MARGIN = 1e-6  # x' = x at the start, up to this fraction of the box: atanh(±1) = ±inf
#: atanh(1 − 10⁻⁶): how far in :class:`CWL2`'s tanh space a pixel on the box's edge starts from the
#: box's middle; with a box, ``steps·lr`` must reach it (:class:`CWL2`, "Reaching the box's edge").
CWL2_EDGE = math.atanh(1 - _CWL2_MARGIN)


@dataclass(frozen=True)
class CWL2:
    """The Carlini–Wagner ℓ2 attack (Carlini and Wagner, "Towards Evaluating the Robustness of Neural
    Networks", IEEE S&P 2017): per sample, the smallest ℓ2 perturbation found that misclassifies.

    For each sample, with x' = lo + (hi − lo)·(tanh(w) + 1)/2 inside the box (``bounds``; x' = w
    without one),

        minimise_w  ‖x' − x‖₂² + c·max(z_y(x') − max_{j≠y} z_j(x'), −κ)

    by ``steps`` steps of Adam (``lr``) from x' = x, for each of ``search_steps`` values of c: from
    ``c`` (the first), ×10 while no step has misclassified the sample, then bisection between the
    largest c that failed and the smallest that succeeded. Over all steps of all searches the
    misclassifying x' of smallest ℓ2 norm is kept.

    *Reaching the box's edge.* x' = x at the start puts a pixel on the edge of the box (0 or 1:
    most of an MNIST image) at w = ±atanh(1 − 10⁻⁶) = ±7.25, where tanh is flat; Adam moves w by
    about ``lr`` a step, so such a pixel moves at all only after ~7/``lr`` steps. With a box,
    ``steps·lr`` must therefore be at least :data:`CWL2_EDGE` (7.25); fewer steps find no
    perturbation that changes an edge pixel (the paper's lr = 0.01 goes with up to 10 000 steps;
    on binary inputs 100 steps of 0.01 found no adversarial example at all). The default
    ``lr = 0.1`` with 100 steps finds a linear model's closest point in the box within 3% (tested).

    Args:
        eps: None: return that x' (x itself where nothing misclassified: a minimal-perturbation
            attack); a radius: return it only where ``‖x' − x‖₂ ≤ eps``, x elsewhere (accuracy
            under an ℓ2 budget, for :func:`robustreg.robust_accuracy`).
        c: the first trade-off constant (> 0).
        kappa: the confidence κ ≥ 0 of the margin.
        steps: Adam steps per value of c (≥ 1; with ``bounds``, ``steps·lr ≥ 7.25``).
        lr: Adam's learning rate (> 0).
        search_steps: values of c tried (≥ 1).
        bounds: valid input box, ``None`` for unbounded inputs.
        bn: BatchNorm policy of the attack passes (``"eval"``).

    ``attack(model, x, y)`` returns the batch (detached); gradients are taken with
    ``torch.autograd.grad`` with respect to w alone (``.grad`` of the model is never touched).
    """

    eps: float | None = None
    c: float = 1e-2
    kappa: float = 0.0
    steps: int = 100
    lr: float = 0.1
    search_steps: int = 9
    bounds: Bounds = (0.0, 1.0)
    bn: str = "eval"

    def __post_init__(self) -> None:
        if self.eps is not None:
            _checks.nonneg_float("eps", self.eps)
        _checks.positive_float("c", self.c)
        _checks.nonneg_float("kappa", self.kappa)
        _checks.count("steps", self.steps, minimum=1)
        _checks.positive_float("lr", self.lr)
        _checks.count("search_steps", self.search_steps, minimum=1)
        object.__setattr__(self, "bounds", check_bounds(self.bounds))
        check_bn(self.bn)
        if self.bounds is not None and self.steps * self.lr < CWL2_EDGE:
            raise ValueError(
                f"steps·lr must be at least {CWL2_EDGE:.2f} with bounds (a pixel on the box's edge starts at "
                f"w = ±{CWL2_EDGE:.2f} in tanh space and Adam moves w by about lr a step), got steps={self.steps} "
                f"and lr={self.lr:g} (steps·lr = {self.steps * self.lr:.3g}): raise lr or steps"
            )

    def _to_input(self, w: Tensor) -> Tensor:
        if self.bounds is None:
            return w
        lo, hi = self.bounds
        return lo + (hi - lo) * (torch.tanh(w) + 1) / 2

    def _from_input(self, x: Tensor) -> Tensor:
        if self.bounds is None:
            return x.clone()
        lo, hi = self.bounds
        u = ((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + _CWL2_MARGIN, 1 - _CWL2_MARGIN)
        return torch.atanh(u)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The smallest misclassifying ``x'`` found per sample (see the class docstring); checked
        first, changing nothing on failure, as :class:`PGD`."""
        _checks.module("model", model)
        x = _checks.check_x(x, self.bounds).detach()
        y = _checks.check_y(y, x.shape[0])
        net = unwrap(model)
        _checks.check_classes(y, _checks.num_classes(net, x))
        b = x.shape[0]
        c = torch.full((b,), self.c, dtype=x.dtype, device=x.device)
        lower, upper = torch.zeros_like(c), torch.full_like(c, math.inf)
        best_l2, best = torch.full_like(c, math.inf), x.clone()
        w0 = self._from_input(x)
        with inner_mode(net, self.bn), torch.enable_grad():
            for _ in range(self.search_steps):
                w = w0.clone().requires_grad_(True)
                opt = torch.optim.Adam([w], lr=self.lr)
                succeeded = torch.zeros(b, dtype=torch.bool, device=x.device)
                for _ in range(self.steps):
                    x_adv = self._to_input(w)
                    logits = net(x_adv)
                    l2 = (x_adv - x).flatten(1).square().sum(1)
                    gap = cw_margin(logits, y)  # max_{j≠y} z_j − z_y
                    (grad,) = torch.autograd.grad((l2 + c * (-gap).clamp(min=-self.kappa)).sum(), w)
                    with torch.no_grad():
                        fooled = (gap > 0) & (gap >= self.kappa)  # misclassified, by κ at least
                        better = fooled & (l2 < best_l2)
                        best_l2 = torch.where(better, l2, best_l2)
                        best = torch.where(per_sample(better, x), x_adv, best)
                        succeeded |= fooled
                    w.grad = grad
                    opt.step()
                upper = torch.where(succeeded, torch.minimum(upper, c), upper)
                lower = torch.where(succeeded, lower, torch.maximum(lower, c))
                c = torch.where(torch.isinf(upper), c * 10, (lower + upper) / 2)
        if self.eps is not None:
            best = torch.where(per_sample(best_l2.sqrt() <= self.eps, x), best, x)
        return best.detach()
