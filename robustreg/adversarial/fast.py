"""Fast adversarial training (Wong, Rice, Kolter, "Fast is better than free: Revisiting
adversarial training", ICLR 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..perturb import Bounds, clamp_to_box
from ..record import Record
from .base import AdversarialLoss, accuracy


class FastAT(AdversarialLoss):
    """FGSM adversarial training from a random start ("Fast-AT").

        δ_0 ~ U(S(x)),   δ = Π_{S(x)}( δ_0 + α·sign(∇_δ CE(f(x + δ_0), y)) ),   loss = CE(f(x + δ), y)

    with α = 1.25·ε by default (Wong et al.'s choice; ``alpha=None`` follows ε when a schedule
    changes it). ``random_start=False`` gives plain FGSM training, which is prone to
    catastrophic overfitting. ``init=c`` starts instead from the fixed perturbation
    ``δ_0 = c·ε·𝟙`` (ℓ2: ``c·ε·𝟙/√d``), clamped into ``bounds``: the weaker, deterministic start
    that :class:`robustreg.Amata` uses early in training.

    Args:
        model: a classifier returning logits ``(B, C)``.
        eps: threat-model radius (8/255).
        alpha: FGSM step; ``None`` means ``1.25·eps``.
        norm: ``"linf"`` or ``"l2"``.
        random_start: start uniformly in the ball (True, the method's point).
        bounds: valid input box, ``None`` for unbounded inputs.
        bn: BatchNorm policy of the attack pass; ``"train"`` as in the official code.
        init: ``None`` (start per ``random_start``) or c in [0, 1], the fixed start above.

    ``reg.last.metrics``: ``loss`` and ``adv_acc``.
    """

    annealed_k, annealed_alpha = None, False  # one step, its own α: Amata anneals only the start
    early_knob = "init"

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float = 8 / 255,
        alpha: float | None = None,
        norm: str = "linf",
        random_start: bool = True,
        bounds: Bounds = (0.0, 1.0),
        bn: str = "train",
        init: float | None = None,
    ) -> None:
        self.init = init
        super().__init__(
            model, eps=eps, alpha=alpha, steps=1, norm=norm,
            random_start=random_start, bounds=bounds, bn=bn,
        )  # fmt: skip

    def _check_config(self) -> None:
        super()._check_config()
        if self.init is not None:
            _checks.unit_float("init", self.init)

    def _default_alpha(self) -> float:
        return 1.25 * self.eps

    def _start(self, x: Tensor) -> Tensor:
        if self.init is None:
            return super()._start(x)
        radius = self.init * self.eps
        return clamp_to_box(x, self.ball.project(torch.full_like(x, radius), radius), self.bounds)

    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Record]:
        x_adv = x + self._attack(self._ce_sum(y), x.detach())
        logits = self.model(x_adv)
        loss = F.cross_entropy(logits, y)
        return loss, Record(x_adv.detach(), {"loss": loss.detach(), "adv_acc": accuracy(logits, y)})
