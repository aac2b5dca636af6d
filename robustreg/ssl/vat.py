"""Virtual adversarial training (Miyato, Maeda, Koyama, Ishii, TPAMI 2018).

The local distributional smoothness of a classifier at x is

    LDS(x) = KL(p(·|x) ‖ p(·|x + r_adv)),   r_adv = argmax_{‖r‖₂ ≤ ε} KL(p(·|x) ‖ p(·|x + r)),

with p(·|x) held constant. At r = 0 the KL and its gradient vanish, so to second order
``KL ≈ ½ rᵀ H r`` with H the Hessian of the KL in r at 0, and r_adv ≈ ε·u for u the top
eigenvector of H, found by power iteration from a random unit d:

- ``method="finite_difference"`` (the paper's): ``d ← normalise(∇_r KL at r = ξd)``, since
  ``∇_r KL(ξd) = ξ H d + O(ξ²)``;
- ``method="hvp"``: ``d ← normalise(H d)`` with the exact Hessian-vector product
  (forward-over-reverse through :func:`robustreg.func.hvp`).

The KL is summed over the batch, whose Hessian is block-diagonal when the samples do not
interact (no batch statistics), so one product runs every sample's power iteration at once;
normalisation is per sample. With BatchNorm using batch statistics the samples interact and
the product is that of the whole batch's Hessian, as in the official code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import _checks
from ..func import per_sample_normalize, power_steps
from ..modes import inner_mode, unwrap
from ..record import Record
from .base import check_common, check_unlabelled, kl_div, kl_hessian_product


class VAT:
    """VAT's local distributional smoothness as a loss object: ``reg(x)`` needs no labels.

    Args:
        model: a classifier returning logits ``(B, C)``.
        eps: ε, the ℓ2 radius of the virtual adversarial perturbation (per sample).
        xi: ξ, the finite-difference step of the power iteration (``"finite_difference"``).
        n_power: power-iteration steps (1 in the paper; 0 is allowed and uses the random
            direction, without ``rayleigh`` in ``reg.last.metrics``).
        method: ``"finite_difference"`` (the paper) or ``"hvp"`` (the exact Hessian product).
        bn: BatchNorm policy of every pass this object runs, the perturbed one included
            (:mod:`robustreg.modes`); ``"frozen"`` (default) uses batch statistics and moves no
            running statistic, as the official code (``update_batch_stats=False``). Dropout and
            other modules keep the user's mode: in train mode each pass draws its own mask.

    ``reg(x, *, logits=None)`` returns the batch mean of ``KL(p(·|x) ‖ p(·|x + r_adv))``; pass
    the logits of your own clean forward as ``logits=`` (keyword-only) to reuse them for
    ``p(·|x)`` (detached either way), otherwise one extra no-grad pass computes them. VAT takes
    no labels: ``reg(x, y)`` raises ``TypeError``; add the supervised term yourself,
    ``loss = F.cross_entropy(model(x_l), y_l) + reg(x_u)``. Under autocast the power
    iteration runs in float32 (ξ = 1e-6 is below half precision's resolution). After a call,
    ``reg.last.r_adv`` is the perturbation used and ``reg.last.metrics`` holds ``lds`` and
    ``rayleigh`` (the mean ``dᵀHd`` estimate of the last power step, when ``n_power ≥ 1``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float,
        xi: float = 1e-6,
        n_power: int = 1,
        method: str = "finite_difference",
        bn: str = "frozen",
    ) -> None:
        _checks.module("model", model)
        self.model, self.net = model, unwrap(model)
        self.eps, self.xi, self.n_power, self.method, self.bn = eps, xi, n_power, method, bn
        self._num_classes: int | None = None
        self._check()
        self.last: Record | None = None

    def _check(self) -> None:
        check_common(self, ("eps", "xi"), {"n_power": 0})

    def __call__(self, x: Tensor, *labels: object, logits: Tensor | None = None) -> Tensor:
        """The batch mean of ``KL(p(·|x) ‖ p(·|x + r_adv))``. Checked first, changing nothing on
        failure: no second positional argument (VAT takes no labels: ``TypeError``), the
        hyper-parameters, x (a non-empty finite floating batch of the model's dtype), the
        model's output (``(B, C)`` logits) and ``logits`` (``(B, C)``) when given."""
        _checks.no_labels("VAT", labels)
        self._check()
        x, self._num_classes = check_unlabelled(self.net, x, logits, self._num_classes)
        x = x.detach()
        with inner_mode(self.net, self.bn):
            if logits is None:
                with torch.no_grad():
                    logits = self.net(x)
            clean = logits.detach()
            d, rayleigh = self._direction(x, clean)
            r_adv = self.eps * d.to(x.dtype)
            with torch.enable_grad():
                lds = kl_div(clean, self.net(x + r_adv)).mean()
        metrics = {"lds": lds.detach()}
        if rayleigh is not None:
            metrics["rayleigh"] = rayleigh.detach().mean()
        self.last = Record(metrics=metrics, perturbations={"r_adv": r_adv.detach()})
        return lds

    def _direction(self, x: Tensor, clean: Tensor) -> tuple[Tensor, Tensor | None]:
        """The power iteration (in float32 or wider, autocast off): a unit direction per sample.

        Its reference ``p(·|x)`` must come from a pass of the same precision: logits from a
        half-precision pass differ from the float32 ones by far more than ξ moves them, and the
        gradient at ξd would follow that difference instead of ``ξHd``; so under autocast (or
        for half-precision logits) one float32 no-grad pass recomputes it."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(dtype)
        d = per_sample_normalize(torch.randn_like(xf))
        amp = torch.is_autocast_enabled(x.device.type)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if amp or clean.dtype != torch.promote_types(clean.dtype, dtype):
                with torch.no_grad():
                    clean = self.net(xf)
            hess = kl_hessian_product(self.net, xf, clean.to(dtype), method=self.method, xi=self.xi)
            d, rayleigh = power_steps(hess, d, iters=self.n_power)
        return d, rayleigh
