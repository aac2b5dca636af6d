"""Free adversarial training (Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor,
Goldstein, "Adversarial Training for Free!", NeurIPS 2019)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..perturb import Bounds, clamp_to_box
from ..record import Record
from .base import AdversarialLoss, accuracy

log = logging.getLogger(__name__)
T = TypeVar("T")


def replay(loader: Iterable[T], m: int) -> Iterator[T]:
    """Yield every batch of ``loader`` ``m`` times in a row (Free-AT's minibatch replay).

    Free-AT runs ``epochs / m`` passes over the data so that its cost matches natural
    training with ``epochs`` passes::

        for epoch in range(epochs // m):
            for x, y in robustreg.replay(loader, m=8):
                loss = free(x, y); opt.zero_grad(); loss.backward(); opt.step()
    """
    m = _checks.count("m", m, minimum=1)
    for batch in loader:
        for _ in range(m):
            yield batch


class FreeAT(AdversarialLoss):
    """Free adversarial training: one backward per replay gives both the weight gradient and
    the perturbation's update.

    The user's loop replays each batch m times (:func:`replay`) with one optimizer step per
    replay. Each call returns ``CE(f(clamp(x + δ, bounds)), y)`` for the stored perturbation δ;
    the backward the user runs on that loss also yields ``g = ∇_δ CE``, and a hook on δ then
    updates the stored perturbation

        δ ← Π_ε( δ + α·sign(g) )        (ℓ2: δ + α·g/‖g‖₂)

    which the next call (the next replay, or the next batch) starts from. As in the official
    code δ persists across replays and batches (a buffer of the largest batch seen, sliced
    to the batch size), starts at zero, is projected onto the ε-ball only, and the input is
    clamped into ``bounds``. Gradients scaled by a positive factor (AMP loss scaling,
    ``accelerator.backward`` with accumulation) give the same sign; a non-finite gradient
    (an AMP overflow step) leaves δ unchanged.

    The update happens only in a backward that reaches δ (``loss.backward()``,
    ``accelerator.backward(loss)``); ``torch.autograd.grad`` restricted to the parameters
    leaves δ unchanged. There is no separate attack pass, hence no ``bn`` policy: the one
    forward runs in the user's mode.

    Args:
        model: a classifier returning logits ``(B, C)``.
        eps: threat-model radius (8/255).
        alpha: the step per replay; ``None`` means ``eps`` (the official ``fgsm_step``).
        norm: ``"linf"`` or ``"l2"``.
        random_start: start δ uniformly in the ball instead of at zero.
        bounds: valid input box, ``None`` for unbounded inputs.

    ``reg.last.metrics``: ``loss`` and ``adv_acc``. ``reg.reset()`` forgets δ: the next call
    starts again from zero (or at random with ``random_start=True``).
    """

    annealed_k = None  # K is the replay count the training loop reads (Amata.replays)

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float = 8 / 255,
        alpha: float | None = None,
        norm: str = "linf",
        random_start: bool = False,
        bounds: Bounds = (0.0, 1.0),
    ) -> None:
        super().__init__(
            model, eps=eps, alpha=alpha, steps=1, norm=norm,
            random_start=random_start, bounds=bounds, bn=None,
        )  # fmt: skip
        self._delta: Tensor | None = None

    def _default_alpha(self) -> float:
        return self.eps

    def reset(self) -> None:
        """Forget the stored perturbation; the next call starts from zero (or at random)."""
        self._delta = None

    def state_dict(self) -> dict[str, Tensor | None]:
        """The stored perturbation, for checkpoints: resuming mid-replay continues exactly."""
        return {"delta": self._delta}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        self._delta = state["delta"]

    @property
    def delta(self) -> Tensor | None:
        """The stored perturbation ``(B_max, ...)`` (detached), or ``None`` before the first call."""
        return self._delta

    def _stored(self, x: Tensor) -> Tensor:
        """The stored δ for this batch: ``(B, ...)``, grown or re-made to fit ``x``."""
        d = self._delta
        if d is not None and d.shape[1:] != x.shape[1:]:
            log.debug("FreeAT: input shape changed from %s to %s; perturbation reset", d.shape[1:], x.shape[1:])
            d = None
        if d is not None:
            d = d.to(x)
        need = x.shape[0] - (0 if d is None else d.shape[0])
        if need > 0:
            fresh = x.new_zeros((need, *x.shape[1:]))
            if self.random_start:
                fresh = self.ball.random(fresh, self.eps)
            d = fresh if d is None else torch.cat([d, fresh])
        self._delta = d
        return d[: x.shape[0]]

    def _stamped(self, record: Record) -> Record:
        return record  # no ascent loop in the call: δ moves in the user's backward (steps None)

    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Record]:
        delta = self._stored(x).clone().requires_grad_(True)
        delta.register_hook(self._hook(delta.detach(), self.step_size, self.eps))
        x_adv = x + clamp_to_box(x.detach(), delta, self.bounds)
        logits = self.model(x_adv)
        loss = F.cross_entropy(logits, y)
        return loss, Record(x_adv.detach(), {"loss": loss.detach(), "adv_acc": accuracy(logits, y)})

    def _hook(self, start: Tensor, alpha: float, eps: float) -> Callable[[Tensor], None]:
        """The update ``δ ← Π_ε(δ + α·step(g))`` of the stored rows, run by autograd with g."""
        ball = self.ball

        def update(grad: Tensor) -> None:
            stored = self._delta
            if stored is None or stored.shape[1:] != start.shape[1:] or stored.shape[0] < start.shape[0]:
                return  # reset or re-made since the forward: nothing to update
            with torch.no_grad():
                # A non-finite gradient (an AMP overflow step) keeps δ; no device sync needed.
                finite = torch.isfinite(grad).all()
                moved = ball.project(ball.step(start, torch.where(finite, grad, 0), alpha), eps)
                stored[: start.shape[0]] = torch.where(finite, moved, start)

        return update
