"""What the semi-supervised regularisers (:class:`robustreg.VAT`, :class:`robustreg.TNAR`,
:class:`robustreg.EntMin`) share: the record of a call, the validation of their
hyper-parameters and unlabelled batches, the KL divergence between predictions and its Hessian
product in the input.

The KL of a prediction against itself perturbed, ``KL(p(·|x) ‖ p(·|x + r))`` with ``p(·|x)``
held constant, vanishes with its gradient at r = 0; its Hessian H there is the curvature every
smoothness regulariser measures. :func:`kl_hessian_product` applies it to a batch of directions
(one product serves every sample when the samples do not interact).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..func import detached_parameters, hvp, per_sample, per_sample_normalize
from ..modes import check_bn
from ..record import Record

VAT_METHODS = ("finite_difference", "hvp")


SSLRecord = Record  # the one record type (robustreg.record); the old name of the semi-supervised one


def check_common(owner: object, positive: tuple[str, ...], integers: dict[str, int]) -> None:
    """Validate ``owner``'s hyper-parameters: the ``positive`` ones finite and > 0, each of
    ``integers`` an int ≥ its minimum, ``method`` and ``bn`` known and compatible
    (``TypeError`` for a wrong type, ``ValueError`` for a value out of range)."""
    for name in positive:
        _checks.positive_float(name, getattr(owner, name))
    for name, low in integers.items():
        _checks.count(name, getattr(owner, name), minimum=low)
    _checks.choice("method", owner.method, VAT_METHODS)
    check_bn(owner.bn)
    if owner.method == "hvp" and owner.bn == "train":
        raise ValueError(
            'method="hvp" cannot update running statistics inside torch.func: bn must be "frozen" or "eval"'
        )


def check_unlabelled(net: nn.Module, x: object, logits: object, classes: int | None) -> tuple[Tensor, int]:
    """The checks of a semi-supervised call ``reg(x, logits=None)``, changing nothing: x a
    non-empty finite floating batch ``(B, ...)`` of the model's dtype; the model's output ``(B, C)`` logits (probed in
    eval mode without gradients unless ``classes``, the cached count, is known); ``logits``, when
    given, a floating ``(B, C)`` tensor (its values are not checked). Returns x and C."""
    x = _checks.check_x(x, None)
    classes = _checks.classes_of(net, x, classes)
    if logits is not None:
        _checks.check_logits(logits, x.shape[0], classes)
    return x, classes


def kl_div(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """Per-sample ``KL(softmax(p_logits) ‖ softmax(q_logits))``, shape ``(B,)``."""
    logp = F.log_softmax(p_logits, dim=1)
    return (logp.exp() * (logp - F.log_softmax(q_logits, dim=1))).sum(1)


def kl_hessian_product(
    net: nn.Module, x: Tensor, clean: Tensor, *, method: str, xi: float
) -> Callable[[Tensor], Tensor]:
    """``u ↦ H u`` per sample, ``H`` the Hessian in r of ``Σ_i KL(softmax(clean_i) ‖ p(·|x_i + r_i))``
    at r = 0: ``"hvp"`` exactly (forward-over-reverse), ``"finite_difference"`` as
    ``∇_r KL(ξû)·‖u‖/ξ`` (``∇_r KL(ξû) = ξHû + O(ξ²)``; û = u/‖u‖ per sample)."""
    if method == "finite_difference":

        def fd(u: Tensor) -> Tensor:
            r = (xi * per_sample_normalize(u)).requires_grad_(True)
            with torch.enable_grad():
                kl = kl_div(clean, net(x + r).to(clean.dtype)).sum()
            (g,) = torch.autograd.grad(kl, r)
            return g * per_sample(u.flatten(1).norm(dim=1) / xi, u)

        return fd

    def total_kl(r: Tensor) -> Tensor:
        return kl_div(clean, net(x + r).to(clean.dtype)).sum()

    zero = torch.zeros_like(x)

    def exact(u: Tensor) -> Tensor:
        with detached_parameters(net):  # H u in the input only; the weights are constants
            return hvp(total_kl, zero, u)

    return exact
