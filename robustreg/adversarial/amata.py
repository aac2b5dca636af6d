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
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _checks
from ..record import Record
from .base import AdversarialLoss
from .free import FreeAT

KINDS = ("linear", "exponential", "constant")
# Training calls on a never-set clock before Amata warns: more than an epoch of MNIST or CIFAR-10
# at batch size 32 (1875 and 1563 batches).
STALLED_AFTER = 2000
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
    current progress p, then calls the engine. It knows no engine by its class: each says what
    it anneals (:attr:`~robustreg.adversarial.AdversarialLoss.annealed_k`, ``annealed_alpha``,
    ``early_knob``), which for the engines of robustreg is

    ==========================  =========================================================
    engine                      what is annealed
    ==========================  =========================================================
    PGDAT, TRADES, ATTA         ``steps = K``, ``alpha = α`` (Algorithm 1)
    YOPO                        ``m = K`` full passes, inner step ``alpha = α`` (n fixed)
    FreeAT                      replays ``K`` (read :attr:`replays` for
                                :func:`robustreg.replay`), step ``alpha = α``
    FastAT                      the start: the fixed ``init=early_init`` while
                                p < ``early``, then the engine's own (random) start
    ATTA (also)                 the reset period: ``reset_every=early_reset`` while
                                p < ``early``, then the engine's own ``reset_every``
    ==========================  =========================================================

    Progress is driven like a learning-rate scheduler: ``set_epoch(t)`` sets p = t/T with
    ``T = total`` (per epoch, as in the paper; it also forwards the epoch to ATTA),
    ``step()`` advances t by one (per iteration, with ``total`` iterations), or
    ``set_progress(p)`` sets p directly (e.g. elapsed time / budget). ``state_dict()`` and
    ``load_state_dict()`` checkpoint it.

    A clock nobody drives never anneals: p stays 0 and K stays at K_min. So Amata warns once
    (``UserWarning``, once per object) when it has been called ``stalled_after`` times with the
    model in training mode and none of ``set_epoch``, ``step``, ``set_progress`` or
    ``load_state_dict`` has been called yet. Calls in eval mode (validation) and refused calls
    do not count. A loop that calls ``set_epoch(epoch)`` before each epoch, ``step()`` after
    (or before) each batch, or ``set_progress`` never sees the warning; one that calls
    ``set_epoch`` only after each epoch sees it if its first epoch has ``stalled_after`` batches
    or more: call ``set_epoch(0)`` before the first epoch. A clock set once and then forgotten is
    not detected.

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
        stalled_after: training calls on a never-set clock before the warning above (an int
            ``≥ 2``, default :data:`STALLED_AFTER` = 2000: more than an epoch of MNIST or CIFAR-10
            at batch size 32); ``None`` never warns.

    ``reg.last`` is the engine's record with ``K``, ``alpha`` and ``progress`` added.

    Example:
        >>> reg = Amata(PGDAT(model, eps=0.3), k_min=10, k_max=40, tau=0.4, total=epochs)
        >>> for epoch in range(epochs):
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
        stalled_after: int | None = STALLED_AFTER,
    ) -> None:
        if not isinstance(engine, AdversarialLoss):
            raise TypeError(
                f"engine must be a robustreg adversarial loss (PGDAT, YOPO, …), got {type(engine).__name__}"
            )
        fixed = engine.annealed_k is None and not engine.annealed_alpha  # no K, no α: only the early knob
        if fixed and (schedule is not None or (k_min, k_max, tau) != (None, None, None)):
            raise ValueError(
                f"{type(engine).__name__} takes one step: Amata anneals its {engine.early_knob} "
                "(early=, early_init=), not K or alpha"
            )
        if schedule is None and not fixed:
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
        if stalled_after is not None:
            _checks.count("stalled_after", stalled_after, minimum=2)
        self.engine = engine
        self.schedule = schedule
        self.total = total
        self.early, self.early_init, self.early_reset = early, early_init, early_reset
        knob, early_values = engine.early_knob, {"init": early_init, "reset_every": early_reset}
        if knob is not None and knob not in early_values:
            raise ValueError(
                f"{type(engine).__name__}'s early knob {knob!r} has no early value in Amata "
                f"(it has them for {sorted(early_values)})"
            )
        # Amata's early value of the engine's early knob, and the engine's own, restored once p ≥ early
        self._early = None if knob is None else early_values[knob]
        self._own = None if knob is None else getattr(engine, knob)
        self.t = 0
        self.progress = 0.0
        self.last: Record | None = None
        self.stalled_after = stalled_after
        self._clock_set = False  # set_epoch, step, set_progress or load_state_dict has been called
        self._stalled_calls = 0  # training calls while the clock has never been set
        self._warned = False

    # -- progress ------------------------------------------------------------------------
    def _total(self) -> int:
        if self.total is None:
            raise ValueError("total is None: pass total= (epochs or iterations) to use set_epoch() or step()")
        return self.total

    def set_epoch(self, epoch: int) -> None:
        """p = epoch / total (clipped at 1); forwarded to the engine's ``set_epoch`` (ATTA).

        Checked first, changing nothing on failure: epoch an int ``≥ 0``, ``total`` set, and the
        schedule's knobs valid at the new progress."""
        epoch = _checks.count("epoch", epoch)
        progress = min(1.0, epoch / self._total())
        self.knobs(progress)  # a schedule failing at the new progress raises before the clock moves
        self.t, self.progress = epoch, progress
        self._clock_set = True
        self.apply()
        if hasattr(self.engine, "set_epoch"):
            self.engine.set_epoch(epoch)

    def step(self) -> None:
        """Advance t by one: p = t / total (clipped at 1); ``ValueError`` naming ``total``, and no
        change, when ``total`` is None."""
        total = self._total()
        self.t += 1
        self.progress = min(1.0, self.t / total)
        self._clock_set = True

    def set_progress(self, progress: float) -> None:
        """Set p in [0, 1] directly."""
        self.progress = _progress(progress)
        self._clock_set = True

    def state_dict(self) -> dict[str, float]:
        return {"t": self.t, "progress": self.progress}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore :meth:`state_dict`'s output (``t`` an int ``≥ 0``, ``progress`` in [0, 1], both
        checked before anything changes)."""
        self.t, self.progress = _checks.count("state['t']", state["t"]), _progress(state["progress"])
        self._clock_set = True

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
            if engine.annealed_k is not None:
                setattr(engine, engine.annealed_k, k)
            if engine.annealed_alpha:
                engine.alpha = alpha
        if engine.early_knob is not None:
            setattr(engine, engine.early_knob, self._early if early else self._own)
        return knobs

    # -- calling -------------------------------------------------------------------------
    def __call__(self, *batch: Tensor) -> Tensor:
        """The engine's loss on ``batch`` (``x, y``; ATTA: ``x, y, index``) with the current knobs.

        The schedule's knobs and the batch (the engine's own checks) are validated before any
        knob is set: a bad batch leaves the engine exactly as it was."""
        self.knobs()
        self.engine.check_inputs(*batch)
        self._watch_clock()
        knobs = self.apply()
        loss = self.engine(*batch)
        record = self.engine.last
        extra = {"progress": torch.tensor(self.progress)}
        if knobs is not None:
            extra |= {"K": torch.tensor(float(knobs[0])), "alpha": torch.tensor(knobs[1])}
        self.last = Record(record.x_adv, record.metrics | extra, record.steps)
        return loss

    def _watch_clock(self) -> None:
        """Count a training call on a never-set clock; warn once at ``stalled_after`` of them."""
        if self._clock_set or self._warned or self.stalled_after is None or not self.model.training:
            return
        self._stalled_calls += 1
        if self._stalled_calls < self.stalled_after:
            return
        self._warned = True
        k = self.K
        warnings.warn(
            f"Amata has been called {self._stalled_calls} times in training mode and its clock was never set: "
            f"progress stays at {self.progress:g}"
            + ("" if k is None else f" and K at {k}")
            + ", so nothing anneals. Call reg.set_epoch(epoch) at the start of every epoch (total = epochs), "
            "reg.step() after every batch (total = iterations) or reg.set_progress(p); "
            "stalled_after=None silences this warning",
            UserWarning,
            stacklevel=3,
        )

    @property
    def model(self):
        return self.engine.model

    def __repr__(self) -> str:
        return f"Amata({self.engine!r}, schedule={self.schedule!r}, total={self.total}, progress={self.progress:.3f})"
