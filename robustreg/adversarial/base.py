"""The contract every adversarial-training loss object follows.

Built once, called per batch::

    reg = robustreg.PGDAT(model, eps=8 / 255)
    loss = reg(x, y)          # 0-dim tensor
    loss.backward()           # .grad holds exactly the gradient the method prescribes
    optimizer.step()

- The inner maximisation differentiates with respect to the perturbation only
  (``torch.autograd.grad``): it never calls ``.backward()`` on the model, never touches a
  parameter's ``.grad`` and never changes ``requires_grad``.
- Inner passes follow the engine's BatchNorm policy ``bn`` (:mod:`robustreg.modes`); each
  module's train/eval flag is restored on exit, also on an exception. The returned loss is
  computed in the mode the user left the model in.
- Device and dtype come from the inputs; nothing is printed (``logging`` only).
- Bad hyper-parameters or inputs raise ``ValueError``/``TypeError`` naming the argument,
  before anything changes. Hyper-parameters are plain attributes (so a schedule may set
  ``reg.steps`` or ``reg.alpha`` between calls); they are checked again at every call.
- After a call, ``reg.last`` is a :class:`Record`: the adversarial input actually used and
  scalar diagnostics, all detached. Nothing else from the batch is retained (Free-AT keeps
  its persistent perturbation, which is the method's state).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..modes import check_bn, inner_mode, unwrap
from ..perturb import Bounds, NormBall, ascend, check_bounds, get_ball, random_start
from ..record import Record


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Fraction of ``argmax(logits) == y``, a detached 0-dim tensor."""
    return (logits.detach().argmax(1) == y).float().mean()


class AdversarialLoss:
    """Base class of the adversarial-training loss objects (see the module docstring).

    Subclasses implement :meth:`_loss` and extend :meth:`_check_config` for their own
    hyper-parameters, and say what :class:`robustreg.Amata` anneals in three class attributes
    (Amata drives every engine through them, without knowing its class):
    """

    #: The attribute Amata's K sets: ``"steps"`` (the ascent steps of PGD-AT, TRADES, ATTA),
    #: YOPO's ``"m"``; ``None`` when the engine has no such attribute (Free-AT: K is the replay
    #: count the training loop reads; Fast-AT: one step).
    annealed_k: ClassVar[str | None] = "steps"
    #: Whether Amata's α sets the engine's ``alpha``.
    annealed_alpha: ClassVar[bool] = True
    #: The attribute Amata holds at an early value while its progress is below ``early``
    #: (Fast-AT's start ``"init"``, ATTA's reset period ``"reset_every"``), ``None``: none.
    early_knob: ClassVar[str | None] = None

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float,
        alpha: float | None,
        steps: int,
        norm: str,
        random_start: bool,
        bounds: Bounds,
        bn: str | None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.eps = eps
        self.alpha = alpha
        self.steps = steps
        self.norm = norm
        self.random_start = random_start
        self.bounds = bounds
        self.bn = bn
        self.last: Record | None = None
        self._num_classes: int | None = None
        self._check_config()

    # -- configuration -------------------------------------------------------------------
    def _check_config(self) -> None:
        """Validate every hyper-parameter (at construction and before every call)."""
        _checks.nonneg_float("eps", self.eps)
        if self.alpha is not None or not self._has_default_alpha():  # None only where a rule gives α
            _checks.nonneg_float("alpha", self.alpha)
        _checks.count("steps", self.steps)
        get_ball(self.norm)
        _checks.flag("random_start", self.random_start)
        self.bounds = check_bounds(self.bounds)
        if self.bn is not None:
            check_bn(self.bn)

    def _default_alpha(self) -> float:
        raise NotImplementedError

    @classmethod
    def _has_default_alpha(cls) -> bool:
        """Whether ``alpha=None`` means a rule of the method (Fast-AT's 1.25ε, Free-AT's ε); the
        engines without one require a float α."""
        return cls._default_alpha is not AdversarialLoss._default_alpha

    @property
    def step_size(self) -> float:
        """The step size in use: ``alpha``, or the method's default rule when ``alpha=None``."""
        return float(self.alpha) if self.alpha is not None else self._default_alpha()

    @property
    def ball(self) -> NormBall:
        return get_ball(self.norm)

    @property
    def net(self) -> nn.Module:
        """The model without DDP wrappers, used for inner passes (:func:`robustreg.modes.unwrap`)."""
        return unwrap(self.model)

    # -- calling -------------------------------------------------------------------------
    def __call__(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Tensor:
        """The method's training loss on the batch ``(x, y)``, a 0-dim tensor.

        ``index``, the batch's dataset indices ``(B,)``, is the same optional argument for every
        engine, so that one training loop drives them all: engines that keep per-sample state
        (:class:`robustreg.ATTA`) need it; the others check it when given and do not use it."""
        x, y = self._prepare(x, y, index)
        loss, record = self._loss(x, y)
        self.last = self._stamped(record)
        return loss

    def _stamped(self, record: Record) -> Record:
        """``record`` with the ascent steps this call took (:attr:`Record.steps`)."""
        return replace(record, steps=self.steps)

    def check_inputs(self, *batch: Tensor) -> None:
        """Run every check a call makes on ``batch`` (and on the hyper-parameters) and change
        nothing: raises ``TypeError``/``ValueError`` naming the argument where the call would.
        Wrappers that set knobs before calling (:class:`robustreg.Amata`) check first."""
        if len(batch) not in (2, 3):
            raise TypeError(f"{type(self).__name__} is called with (x, y) or (x, y, index), got {len(batch)} arguments")
        x, _, _ = self._checked(batch[0], batch[1])
        if len(batch) == 3:
            self._check_index(batch[2], x.shape[0])

    def _prepare(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`_checked` (and ``index`` when given), then the class count cached (nothing
        changes before the checks pass)."""
        x, y, classes = self._checked(x, y)
        if index is not None:
            self._check_index(index, x.shape[0])
        self._num_classes = classes
        return x, y

    def _check_index(self, index: object, batch: int) -> Tensor:
        """``index`` as int64 dataset indices ``(B,)``, one integer per sample (engines that
        store per-sample state check more)."""
        return _checks.integer_vector("index", index, batch, "dataset indices").long()

    def _checked(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, int]:
        """Check the configuration and the batch, changing nothing: x a finite floating batch
        inside ``bounds`` whose dtype is the model's (:func:`robustreg._checks.check_dtype`), y
        integer labels ``(B,)`` of the model's classes, the model's output ``(B, C)`` logits
        (probed in eval mode on the first call). Returns x, y (int64) and C."""
        self._check_config()
        x = _checks.check_x(x, self.bounds)
        y = _checks.check_y(y, x.shape[0])
        classes = _checks.classes_of(self.net, x, self._num_classes)
        _checks.check_classes(y, classes)
        return x, y, classes

    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Record]:
        raise NotImplementedError

    def _attack(self, objective: Callable[[Tensor], Tensor], x0: Tensor, start: Tensor | None = None) -> Tensor:
        """δ* after ``steps`` projected ascent steps on ``objective`` from ``start`` (default
        :meth:`_start`), with the inner passes under the ``bn`` policy (``x0`` detached)."""
        start = self._start(x0) if start is None else start
        with inner_mode(self.net, self.bn):
            return ascend(
                objective, x0, start, ball=self.ball, eps=self.eps,
                alpha=self.step_size, steps=self.steps, bounds=self.bounds,
            )  # fmt: skip

    def _ce_sum(self, y: Tensor) -> Callable[[Tensor], Tensor]:
        """The attack objective ``x' ↦ Σ_i CE(f(x'_i), y_i)`` on the bare model."""
        net = self.net
        return lambda x_adv: F.cross_entropy(net(x_adv), y, reduction="sum")

    def _start(self, x: Tensor) -> Tensor:
        """The attack's initial δ: uniform in the ball and the box, or zero."""
        if self.random_start:
            return random_start(x, self.ball, self.eps, self.bounds)
        return torch.zeros_like(x)

    def __repr__(self) -> str:
        skip = {"model", "last"}
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k not in skip)
        return f"{type(self).__name__}({type(self.model).__name__}, {args})"
