"""PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..perturb import Bounds
from ..record import Record
from .base import AdversarialLoss, accuracy


class PGDAT(AdversarialLoss):
    """Madry et al.'s saddle-point objective, with an optional clean-loss mix.

        min_θ E[ (1 − w)·CE(f_θ(x + δ*), y) + w·CE(f_θ(x), y) ],
        δ* ≈ argmax_{δ ∈ S(x)} CE(f_θ(x + δ), y)   (PGD-k, :func:`robustreg.perturb.ascend`)

    By Danskin's theorem the gradient of the inner maximum is the gradient at δ*, so the
    returned loss back-propagates ``∇_θ`` of the expression above with δ* held fixed.
    ``w = clean_weight`` is 0 for Madry's objective (0.5 is Goodfellow et al.'s mix).

    Args:
        model: a classifier returning logits ``(B, C)``.
        eps: threat-model radius (8/255, the CIFAR-10 ℓ∞ default).
        alpha: PGD step size (2/255).
        steps: PGD steps k (10). ``steps=0`` is allowed: no ascent step, so the loss is taken
            at the start, uniform in the ball (random-noise training) or, with
            ``random_start=False``, x itself (the clean loss); ``reg.last.steps`` shows 0.
        norm: ``"linf"`` or ``"l2"``.
        random_start: start the attack uniformly in the ball (Madry et al.).
        bounds: valid input box, ``None`` for unbounded inputs.
        bn: BatchNorm policy of the attack passes; ``"eval"`` by default as in MadryLab's
            ``robustness`` (:mod:`robustreg.modes`).
        clean_weight: w in [0, 1].

    ``reg.last.metrics``: ``loss``, ``adv_loss``, ``adv_acc`` and, when ``clean_weight > 0``,
    ``clean_loss`` and ``clean_acc``.

    Example:
        >>> reg = PGDAT(model, eps=8 / 255, alpha=2 / 255, steps=10)
        >>> loss = reg(x, y); loss.backward(); optimizer.step()
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        norm: str = "linf",
        random_start: bool = True,
        bounds: Bounds = (0.0, 1.0),
        bn: str = "eval",
        clean_weight: float = 0.0,
    ) -> None:
        self.clean_weight = clean_weight
        super().__init__(
            model, eps=eps, alpha=alpha, steps=steps, norm=norm,
            random_start=random_start, bounds=bounds, bn=bn,
        )  # fmt: skip

    def _check_config(self) -> None:
        super()._check_config()
        _checks.unit_float("clean_weight", self.clean_weight)

    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Record]:
        # x may carry a graph (e.g. embeddings): the loss's gradient reaches it through x_adv.
        x_adv = x + self._attack(self._ce_sum(y), x.detach())
        logits = self.model(x_adv)
        adv_loss = F.cross_entropy(logits, y)
        metrics = {"adv_loss": adv_loss.detach(), "adv_acc": accuracy(logits, y)}
        loss = adv_loss
        if self.clean_weight > 0:
            clean_logits = self.model(x)
            clean_loss = F.cross_entropy(clean_logits, y)
            loss = (1 - self.clean_weight) * adv_loss + self.clean_weight * clean_loss
            metrics |= {"clean_loss": clean_loss.detach(), "clean_acc": accuracy(clean_logits, y)}
        metrics["loss"] = loss.detach()
        return loss, Record(x_adv.detach(), metrics)
