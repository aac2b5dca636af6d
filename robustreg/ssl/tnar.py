"""Tangent and normal adversarial regularisation (Yu, Wu, Ma, Zhu, CVPR 2019), the core.

Given a chart of the data manifold (any object with ``encode(x) -> z`` and ``decode(z) -> x``,
batched), the tangent space at x is the span of ``J = ∂decode/∂z`` at ``z = encode(x)``. With
``H`` the Hessian in r of ``KL(p(·|x) ‖ p(·|x + r))`` at r = 0 (so ``KL ≈ ½ rᵀHr``):

- **TAR**, the worst tangent perturbation ``r = Jη`` with ``‖Jη‖₂ ≤ ε_t``: η maximises
  ``ηᵀJᵀHJη / ηᵀJᵀJη``, the top generalised eigenvector of ``JᵀHJ η = λ JᵀJ η``, found by power
  iteration ``η ← (JᵀJ)⁻¹ JᵀHJ η`` with ``(JᵀJ)⁻¹`` by conjugate gradients;
- **NAR**, the worst normal perturbation ``r ⊥ T_xM`` with ``‖r‖₂ ≤ ε_n``: the top eigenvector of
  ``P⊥ H P⊥`` with ``P⊥ = I − J(JᵀJ)⁻¹Jᵀ`` (the projection by CG), by power iteration.

``J v`` is a ``torch.func.jvp`` of the decoder, ``Jᵀu`` a ``vjp``, ``H u`` either VAT's finite
difference (the gradient of the KL at ξu) or the exact Hessian-vector product. Everything is
per sample (the charts and the classifier act on each sample separately; with BatchNorm batch
statistics the products are those of the whole batch, as in VAT).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.func import jvp, vjp

from ..func import conjugate_gradient, per_sample, per_sample_normalize
from ..modes import inner_mode, unwrap
from .vat import SSLRecord, _renormalize, check_common, kl_div, kl_hessian_product

TANGENT_MODES = ("linear", "manifold")


@runtime_checkable
class Chart(Protocol):
    """A chart of the data manifold: batched ``encode(x) -> z`` and ``decode(z) -> x``."""

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...


class TNAR:
    """TNAR = ``weights[0]·TAR + weights[1]·NAR``, each a batch-mean KL at its perturbation.

    Args:
        model: a classifier returning logits ``(B, C)``.
        chart: an object with batched ``encode``/``decode`` (:class:`Chart`); its parameters are
            not trained by this loss (encode and decode run without gradients to them).
        eps_tangent, eps_normal: ε_t and ε_n, the ℓ2 radii of the two perturbations (per sample).
        n_power: power-iteration steps for each direction.
        cg_iters: conjugate-gradient iterations for ``(JᵀJ)⁻¹``.
        weights: the weights of TAR and NAR; a zero weight skips that part (TAR or NAR alone).
        xi: ξ of the finite-difference Hessian product.
        method: ``"finite_difference"`` or ``"hvp"`` (exact), as :class:`robustreg.VAT`.
        tangent: ``"linear"`` perturbs by ``x + Jη`` or ``"manifold"`` by
            ``decode(z + η) − decode(z) + x`` (η scaled so that ``‖Jη‖₂ = ε_t``).
        bn: the BatchNorm policy of every pass (``"frozen"`` by default, as VAT).

    ``reg(x, logits=None)`` returns the loss; ``reg.last.r_tangent`` and ``reg.last.r_normal``
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
        bn: str = "frozen",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not (callable(getattr(chart, "encode", None)) and callable(getattr(chart, "decode", None))):
            raise TypeError("chart must have callable encode(x) -> z and decode(z) -> x")
        self.model, self.net, self.chart = model, unwrap(model), chart
        self.eps_tangent, self.eps_normal, self.xi = eps_tangent, eps_normal, xi
        self.n_power, self.cg_iters, self.weights = n_power, cg_iters, weights
        self.method, self.tangent, self.bn = method, tangent, bn
        self._check()
        self.last: SSLRecord | None = None

    def _check(self) -> None:
        check_common(self, ("eps_tangent", "eps_normal", "xi"), {"n_power": 0, "cg_iters": 1})
        w = self.weights
        if len(w) != 2 or not all(isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0 for v in w) or not any(w):
            raise ValueError(f"weights must be two finite numbers >= 0, not both 0, got {w!r}")
        if self.tangent not in TANGENT_MODES:
            raise ValueError(f"tangent must be one of {TANGENT_MODES}, got {self.tangent!r}")

    def __call__(self, x: Tensor, logits: Tensor | None = None) -> Tensor:
        self._check()
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0 or not x.is_floating_point():
            raise ValueError("x must be a non-empty floating-point batch (B, ...)")
        x = x.detach()
        with torch.no_grad():
            z = self.chart.encode(x).detach()
            x_chart = self.chart.decode(z)
        if x_chart.shape != x.shape:
            raise ValueError(f"chart.decode(chart.encode(x)) has shape {tuple(x_chart.shape)}, x has {tuple(x.shape)}")
        if z.shape[0] != x.shape[0]:
            raise ValueError(f"chart.encode(x) must keep the batch dimension {x.shape[0]}, got {tuple(z.shape)}")
        with inner_mode(self.net, self.bn):
            if logits is None:
                with torch.no_grad():
                    logits = self.net(x)
            clean = logits.detach()
            hess = kl_hessian_product(self.net, x, clean, method=self.method, xi=self.xi)
            ops = _Products(self.chart, z, hess, self.cg_iters)
            loss = x.new_zeros(())
            parts, metrics = {}, {}
            if self.weights[0]:
                eta, jeta = ops.tangent_direction(self.n_power, torch.randn_like(z))  # ‖Jη‖ = 1
                if self.tangent == "linear":
                    r_t = self.eps_tangent * jeta
                else:
                    with torch.no_grad():
                        r_t = self.chart.decode(z + self.eps_tangent * eta) - x_chart
                with torch.enable_grad():
                    tar = kl_div(clean, self.net(x + r_t.to(x.dtype))).mean()
                loss = loss + self.weights[0] * tar
                parts["r_tangent"], metrics["tar"] = r_t.detach(), tar.detach()
            if self.weights[1]:
                d = ops.normal_direction(self.n_power, torch.randn_like(x))
                r_n = self.eps_normal * d
                with torch.enable_grad():
                    nar = kl_div(clean, self.net(x + r_n.to(x.dtype))).mean()
                loss = loss + self.weights[1] * nar
                parts["r_normal"], metrics["nar"] = r_n.detach(), nar.detach()
        self.last = SSLRecord(parts, metrics)
        return loss


class _Products:
    """The chart's Jacobian products at z and the two power iterations."""

    def __init__(self, chart: Chart, z: Tensor, hess: Callable[[Tensor], Tensor], cg_iters: int) -> None:
        self.z, self.hess, self.cg_iters, self.decode = z, hess, cg_iters, chart.decode
        with torch.enable_grad():
            _, self._pullback = vjp(self.decode, z)  # Jᵀ's linearisation, once per call

    def jvp(self, v: Tensor) -> Tensor:
        return jvp(self.decode, (self.z,), (v,))[1].detach()

    def vjp(self, u: Tensor) -> Tensor:
        return self._pullback(u)[0].detach()

    def gram_solve(self, b: Tensor) -> Tensor:
        """``(JᵀJ)⁻¹ b`` by conjugate gradients."""
        return conjugate_gradient(lambda v: self.vjp(self.jvp(v)), b, iters=self.cg_iters)

    def project_normal(self, u: Tensor) -> Tensor:
        """``P⊥ u = u − J (JᵀJ)⁻¹ Jᵀ u``."""
        return u - self.jvp(self.gram_solve(self.vjp(u)))

    def tangent_direction(self, n_power: int, eta: Tensor) -> tuple[Tensor, Tensor]:
        """``(η, Jη)`` with ``‖Jη‖ = 1`` after ``n_power`` steps ``η ← (JᵀJ)⁻¹ JᵀHJ η`` (one
        ``Jv`` per step: ``Jη`` scales with η)."""
        eta, jeta = self._unit_image(eta, self.jvp(eta))
        for _ in range(n_power):
            new = self.gram_solve(self.vjp(self.hess(jeta)))
            eta, jeta = self._unit_image(new, self.jvp(new), previous=(eta, jeta))
        return eta, jeta

    def normal_direction(self, n_power: int, d: Tensor) -> Tensor:
        """A unit normal direction after ``n_power`` steps ``d ← normalise(P⊥ H P⊥ d)``."""
        d = per_sample_normalize(self.project_normal(d))
        for _ in range(n_power):
            d = _renormalize(self.project_normal(self.hess(d)), d)
        return per_sample_normalize(self.project_normal(d))  # exactly normal after rounding

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
