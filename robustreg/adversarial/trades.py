"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, "Theoretically Principled Trade-off
between Robustness and Accuracy", ICML 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..modes import inner_mode
from ..perturb import Bounds, NormBall, clamp_to_box
from ..record import Record
from .base import AdversarialLoss, accuracy


def kl_sum(logits_q: Tensor, p: Tensor) -> Tensor:
    """``Σ_i KL(p_i ‖ softmax(logits_q)_i)``, summed over the batch (``nn.KLDivLoss(reduction='sum')``)."""
    return F.kl_div(F.log_softmax(logits_q, dim=1), p, reduction="sum")


def trades_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, beta: float) -> tuple[Tensor, Record]:
    """``CE(f(x), y) + β·Σ_i KL(f(x_i) ‖ f(x'_i))/B`` in the model's own mode, both sides of the
    KL carrying gradient (the official ``trades_loss``), with its record."""
    logits, adv_logits = model(x), model(x_adv)
    natural = F.cross_entropy(logits, y)
    robust = kl_sum(adv_logits, F.softmax(logits, dim=1)) / x.shape[0]
    loss = natural + beta * robust
    metrics = {
        "loss": loss.detach(),
        "natural_loss": natural.detach(),
        "robust_loss": robust.detach(),
        "clean_acc": accuracy(logits, y),
        "adv_acc": accuracy(adv_logits, y),
    }
    return loss, Record(x_adv.detach(), metrics)


def kl_start(x: Tensor, ball: NormBall, eps: float, bounds: Bounds) -> Tensor:
    """TRADES' attack start ``0.001·N(0, I)`` (the KL's gradient vanishes at x itself),
    projected into the ball and clamped into the box."""
    return clamp_to_box(x, ball.project(0.001 * torch.randn_like(x), eps), bounds)


class TRADES(AdversarialLoss):
    """The TRADES objective, exactly as the official code computes it:

        loss = CE(f(x), y) + β · (1/B) Σ_i KL( softmax f(x_i) ‖ softmax f(x'_i) ),
        x' = sign-PGD on Σ_i KL( softmax f(x_i) ‖ softmax f(x'_i) ) from x + 0.001·N(0, I),

    where the attack's target ``softmax f(x)`` is a constant and, in the returned loss, both
    sides of the KL carry gradient (as in the official ``trades_loss``). ``f(x)`` is evaluated
    once for the CE and the KL; the official code evaluates it twice, which gives the same
    value and gradient for a model without dropout. Two more departures, both to keep x' a
    valid input: the start is projected into the ball and clamped into ``bounds`` (the
    official start is not; away from the box's edges nothing changes), and for ℓ2 the attack
    takes normalised-gradient steps rather than the official ℓ2 branch's SGD on δ.

    Args:
        model: a classifier returning logits ``(B, C)``.
        eps: threat-model radius (8/255; the paper's 0.031).
        alpha: attack step size (0.007, the paper's).
        steps: attack steps (10). ``steps=0`` is allowed: no ascent step, x' is the start
            (``x + 0.001·N(0, I)``, or x with ``random_start=False``, where the KL term is 0 and
            the loss is the clean CE); ``reg.last.steps`` shows 0.
        norm: ``"linf"`` or ``"l2"`` (ℓ2 ascends along the normalised gradient).
        random_start: start at ``x + 0.001·N(0, I)`` (the KL's gradient vanishes at x itself,
            so ``False`` leaves x' = x).
        bounds: valid input box, ``None`` for unbounded inputs.
        bn: BatchNorm policy of the attack passes; ``"eval"`` as in the official code.
        beta: β, the robustness weight (6.0, the paper's CIFAR-10 choice).

    ``reg.last.metrics``: ``loss``, ``natural_loss``, ``robust_loss`` (the KL term before β),
    ``clean_acc`` and ``adv_acc``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float = 8 / 255,
        alpha: float = 0.007,
        steps: int = 10,
        norm: str = "linf",
        random_start: bool = True,
        bounds: Bounds = (0.0, 1.0),
        bn: str = "eval",
        beta: float = 6.0,
    ) -> None:
        self.beta = beta
        super().__init__(
            model, eps=eps, alpha=alpha, steps=steps, norm=norm,
            random_start=random_start, bounds=bounds, bn=bn,
        )  # fmt: skip

    def _check_config(self) -> None:
        super()._check_config()
        _checks.nonneg_float("beta", self.beta)

    def _start(self, x: Tensor) -> Tensor:
        if not self.random_start:
            return torch.zeros_like(x)
        return kl_start(x, self.ball, self.eps, self.bounds)

    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Record]:
        net, x0 = self.net, x.detach()
        with torch.no_grad(), inner_mode(net, self.bn):
            p_clean = F.softmax(net(x0), dim=1)  # (B, C), the attack's fixed target
        x_adv = x + self._attack(lambda x_adv: kl_sum(net(x_adv), p_clean), x0)
        return trades_loss(self.model, x, x_adv, y, self.beta)
