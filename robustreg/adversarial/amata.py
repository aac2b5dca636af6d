"""Amata (Ye, Li, Zhou, Zhu, "Amata: An Annealing Mechanism for Adversarial Training
Acceleration", AAAI 2021): anneal the inner maximisation from few large steps to many small
ones over training.

The schedule (Algorithm 1, linear; the appendix's eq. 16, exponential) gives, at training
progress p = t/T ∈ [0, 1],

    linear:       K(p) = K_min + (K_max − K_min)·p
    exponential:  K(p) = K_min + (K_max − K_min)·(1 − e^{−η p})/(1 − e^{−η})
    constant:     K(p) = K_max
    K_t = ⌊K(p) + ½⌋  (K rounded to the nearest integer, halves up),   α_t = τ / K_t,

so every attack travels the same total length K_t·α_t = τ. :class:`Amata` wraps an engine and
sets its inner-loop knobs from the schedule before every call.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _checks
from .atta import ATTA
from .base import AdversarialLoss, Record
from .fast import FastAT
from .free import FreeAT
from .yopo import YOPO

KINDS = ("linear", "exponential", "constant")
Schedule = Callable[[float], tuple[int, float]]


def _progress(progress: object) -> float:
    """A training progress t/T in [0, 1]."""
    if isinstance(progress, bool) or not isinstance(progress, numbers.Real):
        raise TypeError(f"progress must be a number in [0, 1] (t/T), got {type(progress).__name__}")
    if not 0 <= float(progress) <= 1:
        raise ValueError(f"progress must be a number in [0, 1] (t/T), got {progress!r}")
    return float(progress)


def amata_schedule(
    progress: float, *, k_min: int, k_max: int, tau: float, kind: str = "linear", eta: float = 1.0
) -> tuple[int, float]:
    """Amata's inner-loop knobs ``(K, alpha)`` at training progress ``p = t/T`` in ``[0, 1]``.

    ``K`` is the number of inner steps (rounded to the nearest integer, halves up) and
    ``alpha = tau / K`` the step size; see the module docstring for the three ``kind``\\ s.
    ``eta`` > 0 is the exponential schedule's rate per whole run (larger: reaches ``k_max``
    sooner); the other kinds ignore it.

    Example:
        >>> amata_schedule(0.5, k_min=10, k_max=40, tau=0.4)
        (25, 0.016)
    """
    p = _progress(progress)
    k_min = _checks.count("k_min", k_min, minimum=1)
    k_max = _checks.count("k_max", k_max, minimum=1)
    if k_min > k_max:
        raise ValueError(f"k_min must be <= k_max, got k_min={k_min} > k_max={k_max}")
    tau = _checks.nonneg_float("tau", tau)
    if tau <= 0:
        raise ValueError(f"tau must be a finite number > 0 (the total step length K·alpha), got {tau}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    eta = _checks.nonneg_float("eta", eta)
    if eta <= 0:
        raise ValueError(f"eta must be a finite number > 0, got {eta}")
    if kind == "linear":
        k = k_min + (k_max - k_min) * p
    elif kind == "exponential":
        k = k_min + (k_max - k_min) * (-math.expm1(-eta * p)) / (-math.expm1(-eta))
    else:
        k = k_max
    steps = min(k_max, math.floor(k + 0.5))  # the min guards against rounding above k_max
    return steps, tau / steps


@dataclass(frozen=True)
class AmataSchedule:
    """:func:`amata_schedule` with its arguments bound: ``schedule(progress) -> (K, alpha)``."""

    k_min: int
    k_max: int
    tau: float
    kind: str = "linear"
    eta: float = 1.0

    def __post_init__(self) -> None:
        self(0.0)  # validates every argument

    def __call__(self, progress: float) -> tuple[int, float]:
        return amata_schedule(progress, k_min=self.k_min, k_max=self.k_max, tau=self.tau, kind=self.kind, eta=self.eta)


class Amata:
    """An engine whose inner maximisation follows an Amata schedule over training.

    Before every call the wrapper sets the engine's knobs to the schedule's ``(K, α)`` at the
    current progress p, then calls the engine:

    ==========================  =========================================================
    engine                      what is annealed
    ==========================  =========================================================
    PGDAT, TRADES, ATTA         ``steps = K``, ``alpha = α`` (Algorithm 1)
    YOPO                        ``m = K`` full passes, inner step ``alpha = α`` (n fixed)
    FreeAT                      replays ``K`` (read :attr:`replays` for
                                :func:`robustreg.replay`), step ``alpha = α``
    FastAT                      the start: the fixed ``init=early_init`` while
                                p < ``early``, then the engine's own (random) start
    ATTA (also)                 the reset period: ``early_reset`` while p < ``early``,
                                then the engine's own ``reset``
    ==========================  =========================================================

    Progress is driven like a learning-rate scheduler: ``set_epoch(t)`` sets p = t/T with
    ``T = total`` (per epoch, as in the paper; it also forwards the epoch to ATTA),
    ``step()`` advances t by one (per iteration, with ``total`` iterations), or
    ``set_progress(p)`` sets p directly (e.g. elapsed time / budget). ``state_dict()`` and
    ``load_state_dict()`` checkpoint it.

    Args:
        engine: the loss object to anneal.
        schedule: an :class:`AmataSchedule` or any callable ``progress -> (K, alpha)``;
            ``None`` builds ``AmataSchedule(k_min, k_max, tau, kind, eta)`` (not needed for
            FastAT).
        total: T, the number of epochs (or iterations) that p = t/T counts.
        early: the fraction of training (0.2) with the weak start (FastAT) or the short reset
            period (ATTA).
        early_init: FastAT's fixed start c (δ_0 = c·ε·𝟙) early on.
        early_reset: ATTA's reset period early on (2 epochs).

    ``reg.last`` is the engine's record with ``K``, ``alpha`` and ``progress`` added.

    Example:
        >>> reg = Amata(PGDAT(model, eps=0.3), k_min=10, k_max=40, tau=0.4, total=epochs)  # doctest: +SKIP
        >>> for epoch in range(epochs):                                                      # doctest: +SKIP
        ...     reg.set_epoch(epoch)
        ...     for x, y in loader:
        ...         loss = reg(x, y); opt.zero_grad(); loss.backward(); opt.step()
    """

    def __init__(
        self,
        engine: AdversarialLoss,
        schedule: Schedule | None = None,
        *,
        total: int | None = None,
        k_min: int | None = None,
        k_max: int | None = None,
        tau: float | None = None,
        kind: str = "linear",
        eta: float = 1.0,
        early: float = 0.2,
        early_init: float = 0.5,
        early_reset: int = 2,
    ) -> None:
        if not isinstance(engine, AdversarialLoss):
            raise TypeError(
                f"engine must be a robustreg adversarial loss (PGDAT, YOPO, …), got {type(engine).__name__}"
            )
        if isinstance(engine, FastAT) and (schedule is not None or (k_min, k_max, tau) != (None, None, None)):
            raise ValueError("FastAT takes one step: Amata anneals its start (early=, early_init=), not K or alpha")
        if schedule is None and not isinstance(engine, FastAT):
            if k_min is None or k_max is None or tau is None:
                raise ValueError("pass schedule=, or k_min=, k_max= and tau= to build an AmataSchedule")
            schedule = AmataSchedule(k_min, k_max, tau, kind, eta)
        if schedule is not None and not callable(schedule):
            kind_name = type(schedule).__name__
            raise TypeError(f"schedule must be callable as schedule(progress) -> (K, alpha), got {kind_name}")
        if total is not None:
            _checks.count("total", total, minimum=1)
        _checks.unit_float("early", early)
        _checks.unit_float("early_init", early_init)
        _checks.count("early_reset", early_reset, minimum=1)
        self.engine = engine
        self.schedule = schedule
        self.total = total
        self.early, self.early_init, self.early_reset = early, early_init, early_reset
        self._own = {"init": getattr(engine, "init", None), "reset": getattr(engine, "reset", None)}
        self.t = 0
        self.progress = 0.0
        self.last: Record | None = None

    # -- progress ------------------------------------------------------------------------
    def _total(self) -> int:
        if self.total is None:
            raise ValueError("total is None: pass total= (epochs or iterations) to use set_epoch() or step()")
        return self.total

    def set_epoch(self, epoch: int) -> None:
        """p = epoch / total (clipped at 1); forwarded to the engine's ``set_epoch`` (ATTA)."""
        epoch = _checks.count("epoch", epoch)
        self.t, self.progress = epoch, min(1.0, epoch / self._total())
        self.apply()
        if hasattr(self.engine, "set_epoch"):
            self.engine.set_epoch(epoch)

    def step(self) -> None:
        """Advance t by one: p = t / total (clipped at 1)."""
        self.t += 1
        self.progress = min(1.0, self.t / self._total())

    def set_progress(self, progress: float) -> None:
        """Set p in [0, 1] directly."""
        self.progress = _progress(progress)

    def state_dict(self) -> dict[str, float]:
        return {"t": self.t, "progress": self.progress}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.t, self.progress = int(state["t"]), _progress(state["progress"])

    # -- knobs ---------------------------------------------------------------------------
    def knobs(self, progress: float | None = None) -> tuple[int, float] | None:
        """The schedule's ``(K, alpha)`` at ``progress`` (default: the current), or ``None``
        without a schedule (FastAT)."""
        if self.schedule is None:
            return None
        p = self.progress if progress is None else _progress(progress)
        out = self.schedule(p)
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError(f"schedule({p}) must return a pair (K, alpha), got {out!r}")
        k, alpha = out
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"schedule({p}) returned K={k!r}; K must be an int >= 1")
        _checks.nonneg_float("alpha returned by the schedule", alpha)
        return int(k), float(alpha)

    @property
    def K(self) -> int | None:
        knobs = self.knobs()
        return None if knobs is None else knobs[0]

    @property
    def alpha(self) -> float | None:
        knobs = self.knobs()
        return None if knobs is None else knobs[1]

    @property
    def replays(self) -> int:
        """Free-AT's replays per batch at the current progress (``robustreg.replay(loader, reg.replays)``)."""
        if not isinstance(self.engine, FreeAT):
            raise TypeError(f"replays is Free-AT's knob; the engine is {type(self.engine).__name__}")
        return self.K

    def apply(self) -> tuple[int, float] | None:
        """Set the engine's knobs for the current progress (every call does this first);
        returns them (:meth:`knobs`)."""
        engine, knobs, early = self.engine, self.knobs(), self.progress < self.early
        if knobs is not None:
            k, alpha = knobs
            if isinstance(engine, YOPO):
                engine.m = k
            elif not isinstance(engine, (FreeAT, FastAT)):
                engine.steps = k
            if not isinstance(engine, FastAT):
                engine.alpha = alpha
        if isinstance(engine, FastAT):
            engine.init = self.early_init if early else self._own["init"]
        if isinstance(engine, ATTA):
            engine.reset = self.early_reset if early else self._own["reset"]
        return knobs

    # -- calling -------------------------------------------------------------------------
    def __call__(self, *batch: Tensor) -> Tensor:
        """The engine's loss on ``batch`` (``x, y``; ATTA: ``x, y, index``) with the current knobs.

        The schedule's knobs and the batch (the engine's own checks) are validated before any
        knob is set: a bad batch leaves the engine exactly as it was."""
        self.knobs()
        self.engine.check_inputs(*batch)
        knobs = self.apply()
        loss = self.engine(*batch)
        record = self.engine.last
        extra = {"progress": torch.tensor(self.progress)}
        if knobs is not None:
            extra |= {"K": torch.tensor(float(knobs[0])), "alpha": torch.tensor(knobs[1])}
        self.last = Record(record.x_adv, record.metrics | extra, record.steps)
        return loss

    @property
    def model(self):
        return self.engine.model

    def __repr__(self) -> str:
        return f"Amata({self.engine!r}, schedule={self.schedule!r}, total={self.total}, progress={self.progress:.3f})"
