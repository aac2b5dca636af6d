"""ε warm-up: the threat model's radius grows linearly over the first epochs of training."""

from __future__ import annotations

from .. import _checks
from .amata import Amata
from .base import AdversarialLoss


class EpsWarmup:
    """Grow an engine's radius ε, and a fixed step α with it, linearly over the first ``epochs``.

    In epoch ``e`` (counted from 0) the engine attacks with ``ε · min(1, (e + 1) / epochs)`` and,
    when it has a fixed α, ``α · min(1, (e + 1) / epochs)``; from epoch ``epochs − 1`` on, with the
    values it had when this object was made. Under :class:`robustreg.Amata` only ε is scaled:
    Amata sets α = τ/K itself before every call.

    Small models trained at the full ε from the first step can collapse to a constant classifier
    (our two-rings MLP did on most seeds with PGD-AT and Fast-AT); a few epochs of warm-up avoid
    it. The schedule is a function of the epoch alone: call :meth:`set_epoch` at the start of every
    epoch and after resuming, nothing else needs saving.

    Args:
        reg: an adversarial engine (:class:`robustreg.adversarial.AdversarialLoss`) or an
            :class:`robustreg.Amata` over one; its current ε and α are the full values.
        epochs: warm-up length, ≥ 1 (1: the full values from the start).

    Example:
        >>> reg = PGDAT(model, eps=0.3, alpha=0.01, steps=40)
        >>> warmup = EpsWarmup(reg, epochs=5)
        >>> warmup.set_epoch(0); (round(reg.eps, 4), round(reg.alpha, 4))
        (0.06, 0.002)
        >>> warmup.set_epoch(7); (reg.eps, reg.alpha)
        (0.3, 0.01)
    """

    def __init__(self, reg: AdversarialLoss | Amata, epochs: int) -> None:
        if isinstance(reg, Amata):
            engine, alpha = reg.engine, None
        elif isinstance(reg, AdversarialLoss):
            engine, alpha = reg, reg.alpha
        else:
            raise TypeError(f"reg must be an adversarial engine or an Amata over one, got {type(reg).__name__}")
        _checks.count("epochs", epochs, minimum=1)
        self.engine = engine
        self.epochs = epochs
        self.eps = engine.eps  # the full values
        self.alpha = alpha  # None: α is not scaled (Amata's own, or the engine's default rule)

    def factor(self, epoch: int) -> float:
        """``min(1, (epoch + 1) / epochs)``: the fraction of the full values used in ``epoch``."""
        _checks.count("epoch", epoch)
        return min(1.0, (epoch + 1) / self.epochs)

    def set_epoch(self, epoch: int) -> None:
        """Set the engine's ε (and α) for ``epoch``."""
        f = self.factor(epoch)
        self.engine.eps = self.eps * f
        if self.alpha is not None:
            self.engine.alpha = self.alpha * f

    def __repr__(self) -> str:
        return f"EpsWarmup({type(self.engine).__name__}, epochs={self.epochs}, eps={self.eps:g})"
