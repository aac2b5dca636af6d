"""Tangent and normal adversarial regularisation (Yu, Wu, Ma, Zhu, CVPR 2019), the core.

Given a chart of the data manifold (any object with ``encode(x) -> z`` and ``decode(z) -> x``,
batched), the tangent space at x is the span of ``J = ∂decode/∂z`` at ``z = encode(x)``. With
``H`` the Hessian in r of ``KL(p(·|x) ‖ p(·|x + r))`` at r = 0 (so ``KL ≈ ½ rᵀHr``):

- **TAR**, the worst tangent perturbation ``r = Jη`` with ``‖Jη‖₂ ≤ ε_t``: η maximises
  ``ηᵀJᵀHJη / ηᵀJᵀJη``, the top generalised eigenvector of ``JᵀHJ η = λ JᵀJ η``, found by power
  iteration ``η ← (JᵀJ)⁻¹ JᵀHJ η`` with ``(JᵀJ)⁻¹`` by conjugate gradients;
- **NAR**, the worst normal perturbation ``r ⊥ T_xM`` with ``‖r‖₂ ≤ ε_n``: the top eigenvector of
  ``P⊥ H P⊥`` with ``P⊥ = I − J(JᵀJ)⁻¹Jᵀ`` (the projection by CG), by power iteration; or, with
  ``normal="penalty"``, the top eigenvector of ``H − ζJJᵀ`` (the tangent space as a penalty);
  or, with ``normal="official"``, the official code's step ``d ← Hd − ζ⟨r̂, d⟩r̂ + ζd`` (r̂ the
  tangent perturbation, max-abs normalised).

``Jᵀu`` is a ``vjp`` of the decoder and ``J v`` the transpose of that linear pullback (exactly a
``jvp``, computed without re-running the decoder), or the chart's own exact products when it
has ``linearize`` (:class:`Chart`), ``H u`` either VAT's finite
difference (the gradient of the KL at ξu) or the exact Hessian-vector product. Everything is
per sample (the charts and the classifier act on each sample separately; with BatchNorm batch
statistics the products are those of the whole batch, as in VAT).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .. import _checks
from ..charts.base import Chart, Linearize, chart_at, linearization
from ..func import Operator, gram_solve, per_sample, per_sample_dot, per_sample_normalize, power_steps
from ..modes import inner_mode, unwrap
from ..record import Record
from .base import check_common, check_unlabelled, kl_div, kl_hessian_product

TANGENT_MODES = ("linear", "manifold")
NORMALIZE_MODES = ("l2", "official")
NORMAL_MODES = ("projection", "penalty", "official")
NORMAL_STARTS = ("random", "residual")
#: ζ when none is given: the penalty's (in H's units relative to JJᵀ) and the official code's
ZETA_DEFAULTS = {"projection": 1.0, "penalty": 1.0, "official": 1e-3}


def _is_chart(chart: object) -> bool:
    return callable(getattr(chart, "at", None)) or (
        callable(getattr(chart, "encode", None)) and callable(getattr(chart, "decode", None))
    )


class TNAR:
    """TNAR = ``weights[0]·TAR + weights[1]·NAR``, each a batch-mean KL at its perturbation.

    Args:
        model: a classifier returning logits ``(B, C)``.
        chart: an object with batched ``encode``/``decode`` (:class:`Chart`); its parameters are
            not trained by this loss (encode and decode run without gradients to them).
        eps_tangent, eps_normal: ε_t and ε_n, the sizes of the two perturbations (per sample; ℓ2 radii
            in input space by default, see ``normalize``).
        n_power: power-iteration steps for each direction.
        cg_iters: conjugate-gradient iterations for ``(JᵀJ)⁻¹``.
        weights: the weights of TAR and NAR; a zero weight skips that part (TAR or NAR alone).
        xi: ξ of the finite-difference Hessian product.
        method: ``"finite_difference"`` or ``"hvp"`` (exact), as :class:`robustreg.VAT`.
        tangent: ``"linear"`` perturbs by ``x + ε_t·Jη`` or ``"manifold"`` by
            ``decode(z + ε_t·η) − decode(z) + x`` (η scaled as ``normalize`` says).
        normal: ``"projection"`` (exact: the power iteration on ``P⊥HP⊥``); ``"penalty"``: the
            tangent space enters as a penalty instead of a constraint, ``max_{‖r‖=1} rᵀHr −
            ζ‖Jᵀr‖²``, by the gradient steps ``d ← normalise(Hd − ζJJᵀd)`` (two chart products a
            step and no CG; the result is only approximately normal); ``"official"``: the
            official code's steps ``d ← normalise(Hd − ζ⟨r̂, d⟩r̂ + ζd)`` from a random d, with r̂
            the tangent perturbation divided by its largest absolute entry (a penalty on the
            single tangent direction used, not on the tangent space; the tangent direction is
            computed even when ``weights[0]`` is 0).
        normal_start: where ``normal="projection"``'s iteration starts: ``"random"`` (``P⊥d``
            for a random d, the paper and the official code) or ``"residual"`` (the residual
            ``P⊥HJη`` of the tangent iteration's last least-squares step, already normal and
            weighted by H, for free; random where TAR does not run).
        zeta: ζ of ``normal="penalty"`` and ``"official"``; None: 1.0 for the penalty, 1e-3
            (the official code's) for ``"official"``.
        normalize: ``"l2"``: ε_t is ``‖Jη‖₂`` and ε_n ``‖r_n‖₂``, per sample (the paper).
            ``"official"``: the official code's units, ε_t the largest absolute entry of the
            *latent* step η (``decode(z + ε_t·η)``; ``ε_t·Jη`` with ``tangent="linear"``) and ε_n
            the largest absolute entry of the normal perturbation, as its ``normalizevector``
            (whose ℓ2 line discards its result); ε values from the official configurations
            (ε₁ = 5 with a 512-dimensional latent, ε₂ = 1) need this setting.
        bn: the BatchNorm policy of every pass (``"frozen"`` by default, as VAT).

    ``reg(x, *, logits=None)`` returns the loss (``logits=``, keyword-only, reuses the logits of
    your clean forward; TNAR takes no labels, so ``reg(x, y)`` raises ``TypeError``: add
    ``F.cross_entropy(model(x_l), y_l)`` yourself); ``reg.last.r_tangent`` and ``reg.last.r_normal``
    are the perturbations used (``x_adv − x``), ``reg.last.metrics`` holds ``tar`` and ``nar``.
    """

    def __init__(
        self,
        model: nn.Module,
        chart: Chart,
        *,
        eps_tangent: float,
        eps_normal: float,
        n_power: int = 1,
        cg_iters: int = 4,
        weights: tuple[float, float] = (1.0, 1.0),
        xi: float = 1e-6,
        method: str = "finite_difference",
        tangent: str = "linear",
        normal: str = "projection",
        normal_start: str = "random",
        zeta: float | None = None,
        normalize: str = "l2",
        bn: str = "frozen",
    ) -> None:
        _checks.module("model", model)
        if not _is_chart(chart):
            raise TypeError("chart must have callable encode(x) -> z and decode(z) -> x (or at(x) -> (z, decode))")
        self.model, self.net, self.chart = model, unwrap(model), chart
        self.eps_tangent, self.eps_normal, self.xi = eps_tangent, eps_normal, xi
        self.n_power, self.cg_iters, self.weights = n_power, cg_iters, weights
        self.method, self.tangent, self.bn = method, tangent, bn
        self.normal, self.normal_start, self.zeta, self.normalize = normal, normal_start, zeta, normalize
        self._num_classes: int | None = None
        self._check()
        self.last: Record | None = None

    def _check(self) -> None:
        check_common(self, ("eps_tangent", "eps_normal", "xi"), {"n_power": 0, "cg_iters": 1})
        if self.zeta is not None:
            _checks.positive_float("zeta", self.zeta)
        w = self.weights
        if not isinstance(w, (tuple, list)) or len(w) != 2:
            raise TypeError(f"weights must be a pair (tar, nar) of numbers, got {w!r}")
        for name, v in zip(("weights[0]", "weights[1]"), w, strict=True):
            _checks.nonneg_float(name, v)
        if not any(w):
            raise ValueError(f"weights must not both be 0, got {w!r}")
        for name, allowed in (
            ("tangent", TANGENT_MODES), ("normal", NORMAL_MODES), ("normal_start", NORMAL_STARTS),
            ("normalize", NORMALIZE_MODES),
        ):  # fmt: skip
            _checks.choice(name, getattr(self, name), allowed)

    def __call__(self, x: Tensor, *labels: object, logits: Tensor | None = None) -> Tensor:
        """``weights[0]·TAR + weights[1]·NAR`` on the batch. Checked first, changing nothing on
        failure: no second positional argument (TNAR takes no labels: ``TypeError``), the
        hyper-parameters, x (a non-empty finite floating batch of the model's dtype), the model's
        output (``(B, C)`` logits), ``logits`` when given, and the chart at x: ``z = encode(x)`` a
        finite ``(B, ...)`` tensor and ``decode(z)`` a finite tensor of x's shape."""
        _checks.no_labels("TNAR", labels)
        self._check()
        x, classes = check_unlabelled(self.net, x, logits, self._num_classes)
        x = x.detach()
        z, decode, linearize = chart_at(self.chart, x)
        _check_chart_output("chart.encode(x)", z, (x.shape[0],))
        ops = _Products(decode, z, self.cg_iters, linearize, shape=tuple(x.shape))
        x_chart = ops.point
        self._num_classes = classes  # cached once the batch and the chart have passed
        with inner_mode(self.net, self.bn):
            if logits is None:
                with torch.no_grad():
                    logits = self.net(x)
            clean = logits.detach()
            hess = kl_hessian_product(self.net, x, clean, method=self.method, xi=self.xi)
            loss = x.new_zeros(())
            parts, metrics = {}, {}
            residual, r_t = None, None
            if self.weights[0] or (self.weights[1] and self.normal == "official"):
                eta, jeta, residual = ops.tangent_direction(hess, self.n_power, torch.randn_like(z))  # ‖Jη‖ = 1
                if self.normalize == "official":  # ‖η‖_∞ = 1: ε_t in the latent space's units
                    scale = 1 / eta.flatten(1).abs().amax(1).clamp_min(1e-30)
                    eta, jeta = eta * per_sample(scale, eta), jeta * per_sample(scale, jeta)
                if self.tangent == "linear":
                    r_t = self.eps_tangent * jeta
                else:
                    with torch.no_grad():
                        r_t = decode(z + self.eps_tangent * eta) - x_chart
            if self.weights[0]:
                assert r_t is not None
                with torch.enable_grad():
                    tar = kl_div(clean, self.net(x + r_t.to(x.dtype))).mean()
                loss = loss + self.weights[0] * tar
                parts["r_tangent"], metrics["tar"] = r_t.detach(), tar.detach()
            if self.weights[1]:
                zeta = self.zeta if self.zeta is not None else ZETA_DEFAULTS[self.normal]
                if self.normal == "projection":
                    start = residual if self.normal_start == "residual" else None
                    d = ops.normal_direction(hess, self.n_power, x, start=start)
                elif self.normal == "penalty":
                    d = ops.penalized_direction(hess, self.n_power, torch.randn_like(x), zeta)
                else:
                    assert r_t is not None
                    d = official_normal_direction(hess, self.n_power, torch.randn_like(x), r_t.to(x.dtype), zeta)
                if self.normalize == "official":
                    d = d / per_sample(d.flatten(1).abs().amax(1).clamp_min(1e-30), d)
                r_n = self.eps_normal * d
                with torch.enable_grad():
                    nar = kl_div(clean, self.net(x + r_n.to(x.dtype))).mean()
                loss = loss + self.weights[1] * nar
                parts["r_normal"], metrics["nar"] = r_n.detach(), nar.detach()
        self.last = Record(metrics=metrics, perturbations=parts)
        return loss


def official_normal_direction(hess: Operator, n_power: int, d: Tensor, r: Tensor, zeta: float) -> Tensor:
    """The official code's normal direction: ``n_power`` steps ``d ← normalise(Hd − ζ⟨r̂, d⟩r̂ +
    ζd)`` from ``d``, with ``r̂ = r / max|r|`` per sample (``r`` the tangent perturbation; a zero
    one leaves ``Hd + ζd``). A unit vector per sample (the direction does not depend on how d is
    scaled between steps: the step is linear in d)."""
    r_hat = r / per_sample(r.flatten(1).abs().amax(1).clamp_min(1e-30), r)

    def step(u: Tensor) -> Tensor:
        return hess(u) - zeta * per_sample(per_sample_dot(r_hat, u), u) * r_hat + zeta * u

    return power_steps(step, per_sample_normalize(d), iters=n_power)[0]


def _check_chart_output(name: str, value: object, shape: tuple[int, ...]) -> None:
    """A chart's output: a floating tensor whose shape starts with ``shape`` (the whole shape for
    ``decode``, the batch for ``encode``), without NaN or inf."""
    if not isinstance(value, Tensor) or not value.is_floating_point():
        what = f"dtype {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"{name} must return a floating-point tensor, got {what}")
    if tuple(value.shape[: len(shape)]) != shape or (len(shape) == 1 and value.dim() < 2):
        want = f"({shape[0]}, ...)" if len(shape) == 1 else str(shape)
        raise ValueError(f"{name} must have shape {want} (x's batch), got {tuple(value.shape)}")
    _checks.finite(name, value)


class _Residual(NamedTuple):
    """``P⊥u`` (``vector``) of the tangent iteration's ``u`` (``of``)."""

    vector: Tensor
    of: Tensor


class _Products:
    """The chart's Jacobian products at z (:func:`robustreg.charts.base.linearization`: the
    chart's own or the generic ``torch.func`` ones, the same way for every chart) and the power
    iterations that use them."""

    def __init__(
        self,
        decode: Callable[[Tensor], Tensor],
        z: Tensor,
        cg_iters: int,
        linearize: Linearize | None = None,
        *,
        shape: tuple[int, ...] | None = None,
    ) -> None:
        """``shape``, when given, is checked to be ``decode(z)``'s (x's), before anything else runs."""

        def check(point: Tensor) -> None:
            if shape is not None:
                _check_chart_output("chart.decode(chart.encode(x))", point, shape)

        self.z, self.cg_iters, self.decode = z, cg_iters, decode
        self._linear = linearization(decode, z, linearize, check=check)
        self.point = self._linear.point.detach()  # decode(z)

    def jvp(self, v: Tensor) -> Tensor:
        return self._linear.jvp(v).detach()

    def vjp(self, u: Tensor) -> Tensor:
        return self._linear.vjp(u).detach()

    def gram_solve(self, b: Tensor) -> tuple[Tensor, Tensor]:
        """``(η, Jη)`` with ``η = (JᵀJ)⁻¹ b`` by conjugate gradients."""
        return gram_solve(self.jvp, self.vjp, b, iters=self.cg_iters)

    def project_normal(self, u: Tensor) -> Tensor:
        """``P⊥ u = u − J (JᵀJ)⁻¹ Jᵀ u``."""
        return u - self.gram_solve(self.vjp(u))[1]

    def tangent_direction(self, hess: Operator, n_power: int, eta: Tensor) -> tuple[Tensor, Tensor, _Residual | None]:
        """``(η, Jη, residual)`` with ``‖Jη‖ = 1`` after ``n_power`` steps ``η ← (JᵀJ)⁻¹ JᵀHJ η``
        (one ``Jv`` per step: ``Jη`` scales with η). A step solves the least-squares problem
        ``min_η ‖Jη − u‖`` for ``u = HJη``; its residual ``u − Jη = P⊥u`` (the last step's, None
        if ``n_power = 0``) is a vector of the normal space that costs nothing more."""
        eta, jeta = self._unit_image(eta, self.jvp(eta))
        residual = None
        for _ in range(n_power):
            u = hess(jeta)
            new, image = self.gram_solve(self.vjp(u))
            residual = _Residual(u - image, u)
            eta, jeta = self._unit_image(new, image, previous=(eta, jeta))
        return eta, jeta, residual

    def normal_direction(self, hess: Operator, n_power: int, x: Tensor, start: _Residual | None = None) -> Tensor:
        """A unit normal direction after ``n_power`` steps ``d ← normalise(P⊥ H P⊥ d)`` (every
        iterate is the output of a projection, so no final one is needed).

        The iteration starts from ``P⊥ d`` for a random d shaped like x (one projection) or,
        when the tangent iteration ran, from its ``start = P⊥HJη``, already normal: the normal
        part of H applied to the random tangent start, a power-iteration start at least as good
        as a random normal vector (H has already weighted it towards its large eigenvalues),
        for free. Samples whose
        residual vanishes (H = 0, or HJη tangent) start from ``P⊥ d``; no random d is drawn
        otherwise."""
        if start is None:
            d = per_sample_normalize(self.project_normal(torch.randn_like(x)))
        else:
            norm = start.vector.flatten(1).norm(dim=1)
            usable = norm > 1e-6 * start.of.flatten(1).norm(dim=1)
            d = start.vector / per_sample(norm.clamp_min(1e-30), start.vector)
            if not bool(usable.all()):  # a random normal start only where it is needed
                fallback = per_sample_normalize(self.project_normal(torch.randn_like(x)))
                d = torch.where(per_sample(usable, d), d, fallback)
        return power_steps(lambda u: self.project_normal(hess(u)), d, iters=n_power)[0]

    def penalized_direction(self, hess: Operator, n_power: int, d: Tensor, zeta: float) -> Tensor:
        """A unit direction after ``n_power`` steps ``d ← normalise(Hd − ζ J Jᵀ d)``."""
        return power_steps(lambda u: hess(u) - zeta * self.jvp(self.vjp(u)), per_sample_normalize(d), iters=n_power)[0]

    @staticmethod
    def _unit_image(eta: Tensor, jeta: Tensor, previous: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """``(η, Jη)/‖Jη‖`` per sample; a sample with ``Jη = 0`` keeps ``previous``."""
        norm = jeta.flatten(1).norm(dim=1)
        scale = 1 / norm.clamp_min(1e-30)
        eta, jeta = eta * per_sample(scale, eta), jeta * per_sample(scale, jeta)
        if previous is None:
            return eta, jeta
        zero = norm == 0
        return (
            torch.where(per_sample(zero, eta), previous[0], eta),
            torch.where(per_sample(zero, jeta), previous[1], jeta),
        )
