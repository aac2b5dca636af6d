"""AutoAttack (Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020) from its authors' package ``pyautoattack``, as a
robustreg attack ``(model, x, y) -> x_adv``.

Nothing of AutoAttack is re-implemented here: APGD-CE, APGD-T (targeted DLR), FAB-T and Square
are the package's, with its fixed hyper-parameters. Versions:

``"standard"``
    APGD-CE, APGD-T (9 target classes), FAB-T (9 target classes), Square (5000 queries): the
    evaluation RobustBench reports, run by ``pyautoattack.AutoAttack(version="standard")``.
``"apgd"``
    APGD-CE then APGD-T with the standard settings: the two attacks that decide almost every
    sample, several times cheaper than the standard version (no FAB-T, no Square), for
    evaluation during training.
``"plus"``
    the package's AutoAttack+ (restarts and the untargeted attacks too).
``"custom"``
    the attacks named in ``attacks``, with the standard version's settings.

What this wrapper adds, so that AutoAttack keeps robustreg's attack contract:

- **Any box, and no box.** AutoAttack assumes inputs in ``[0, 1]``. Inputs in ``bounds =
  (lo, hi)`` are mapped to it exactly by ``u = (x − lo)/(hi − lo)``, with the radius divided by
  ``hi − lo`` (both balls scale alike). For ``bounds=None`` the box is built from the batch as
  ``[min x − ε, max x + ε]``: every point of the ε-ball around every sample lies inside it
  (‖δ‖∞ ≤ ‖δ‖₂ ≤ ε), so the box constraint is never active and AutoAttack solves the unbounded
  problem itself, not something weaker.
- **Any input shape.** Inputs other than ``(B, C, H, W)`` images (tabular ``(B, D)``,
  sequences) are shown to the package as one-row images ``(B, 1, 1, D)`` and reshaped back
  before the model sees them (the package's Square attack needs the image layout).
- **Fewer than 10 classes.** The targeted attacks use ``min(9, C − 1)`` targets. Targeted DLR
  needs 4 classes: with 3, APGD-T is replaced by untargeted APGD-DLR; with 2, it is dropped
  (for two classes cross-entropy is a monotone function of the margin, so APGD-CE already
  maximises it) and FAB-T by untargeted FAB. :meth:`AutoAttack.attacks_for` says what runs.
- **Side-effect free.** The model runs in eval mode (every module's mode restored afterwards, so
  BatchNorm running statistics are untouched) with its parameters detached
  (:func:`robustreg.func.detached_parameters`): FAB's ``.backward()`` calls can reach no parameter's ``.grad``. The
  package seeds the global RNG (``torch.manual_seed``); the call runs inside
  ``torch.random.fork_rng``, so the caller's random stream is the same afterwards. Inputs of
  any floating dtype: the package computes in float32 and the model sees the caller's dtype;
  the result is returned in the caller's dtype and, where the round trip moved a sample
  outside the threat model by rounding, projected back.
- **Seeded.** ``seed`` (default 0) makes every call reproducible (the package's default is the
  clock).

The package's own diagnostics (a model that looks randomised or dynamic, probabilities instead
of logits, Square finding more than the gradient attacks) are logged as warnings on the
``auto-attack`` logger.

Install with ``pip install "robustreg[eval]"``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import _checks
from .func import detached_parameters, per_sample
from .modes import inner_mode, unwrap
from .perturb import Bounds, check_bounds, clamp_to_box, get_ball

VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "apgd": ("apgd-ce", "apgd-t"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
}
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
_NORMS = {"linf": "Linf", "l2": "L2"}
INSTALL = 'pip install "robustreg[eval]"  (or: pip install pyautoattack)'


def load_package() -> Any:
    """The ``pyautoattack`` module; an ImportError that says how to install it otherwise."""
    try:
        return importlib.import_module("pyautoattack")
    except ImportError as err:
        raise ImportError(
            f"AutoAttack needs the authors' package pyautoattack, which is not installed: {INSTALL}"
        ) from err


def available() -> bool:
    """Whether ``pyautoattack`` can be imported."""
    try:
        load_package()
    except ImportError:
        return False
    return True


class _Frozen(nn.Module):
    """``net(lo + scale·u)`` with the parameters and buffers detached, in the caller's dtype and
    per-sample ``shape``."""

    def __init__(self, net: nn.Module, lo: float, scale: float, dtype: torch.dtype, shape: torch.Size) -> None:
        super().__init__()
        self._net = (net,)  # a tuple, so the model is not registered as a submodule
        self._lo, self._scale, self._dtype, self._shape = lo, scale, dtype, shape

    def forward(self, u: Tensor) -> Tensor:
        x = (self._lo + self._scale * u.to(self._dtype)).reshape(-1, *self._shape)
        with detached_parameters(self._net[0]):
            return self._net[0](x)


@contextmanager
def _quiet_construction() -> Iterator[None]:
    """The package logs "setting parameters for standard version" at INFO on every construction
    (once per batch here); hold its logger at WARNING for the constructor alone."""
    logger = logging.getLogger("auto-attack")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=devices):
        yield


@dataclass(frozen=True)
class AutoAttack:
    """AutoAttack from ``pyautoattack`` as a robustreg attack (see the module docstring).

    Args:
        eps: radius of the threat model, in the units of ``x``.
        norm: ``"linf"`` or ``"l2"``.
        version: ``"standard"``, ``"apgd"`` (APGD-CE + APGD-T), ``"plus"`` or ``"custom"``.
        attacks: with ``version="custom"`` only, the attacks to run, a subset of
            ``("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")``, in that order of use.
        bounds: the valid input box ``(lo, hi)``, or ``None`` for unbounded inputs (then the
            batch's own enclosing box, never active).
        seed: the package's seed; every call with the same inputs gives the same result.
        batch_size: the package's batch size.

    Calling ``attack(model, x, y)`` returns ``x_adv`` (detached, the dtype of ``x``): the
    adversarial example where one of the attacks found a misclassification, ``x`` elsewhere
    (and where the clean prediction is already wrong). Plug it into
    :func:`robustreg.robust_accuracy`, alone or beside robustreg's own attacks, which merges
    the per-sample worst case.

    Example:
        >>> aa = AutoAttack(eps=0.3, version="standard")
        >>> acc = robustreg.robust_accuracy(model, (x, y), attack=aa)
        >>> acc.robust <= acc.clean
        True
    """

    eps: float = 8 / 255
    norm: str = "linf"
    version: str = "standard"
    attacks: tuple[str, ...] | None = None
    bounds: Bounds = (0.0, 1.0)
    seed: int = 0
    batch_size: int = 500

    def __post_init__(self) -> None:
        eps = _checks.nonneg_float("eps", self.eps)
        if eps == 0:
            raise ValueError("eps must be > 0 (an ε of 0 is the clean accuracy)")
        get_ball(self.norm)
        allowed = (*VERSIONS, "custom")
        if self.version not in allowed:
            raise ValueError(f"version must be one of {allowed}, got {self.version!r}")
        if self.version == "custom":
            if not self.attacks or isinstance(self.attacks, str):
                raise ValueError(f"version='custom' needs attacks=, a non-empty tuple drawn from {ATTACKS}")
            unknown = [a for a in self.attacks if a not in ATTACKS]
            if unknown or len(set(self.attacks)) != len(self.attacks):
                raise ValueError(f"attacks must be distinct names from {ATTACKS}, got {tuple(self.attacks)}")
            object.__setattr__(self, "attacks", tuple(self.attacks))
        elif self.attacks is not None:
            raise ValueError(f"attacks= is for version='custom' only; version={self.version!r} fixes its attacks")
        object.__setattr__(self, "bounds", check_bounds(self.bounds))
        _checks.count("seed", self.seed)
        _checks.count("batch_size", self.batch_size, minimum=1)

    def attacks_for(self, num_classes: int) -> tuple[str, ...]:
        """The attacks that run on a ``num_classes``-way classifier (module docstring)."""
        names = self.attacks if self.version == "custom" else VERSIONS[self.version]
        assert names is not None
        if num_classes < 2:
            raise ValueError(f"AutoAttack needs at least 2 classes, the model returns {num_classes}")
        swap: dict[str, str | None] = {}
        if num_classes == 3:
            swap = {"apgd-t": "apgd-dlr"}
        elif num_classes == 2:
            swap = {"apgd-t": None, "apgd-dlr": None, "fab-t": "fab"}
        out: list[str] = []
        for name in names:
            name = swap.get(name, name)
            if name is not None and name not in out:
                out.append(name)
        return tuple(out)

    def _box(self, x: Tensor) -> tuple[float, float]:
        if self.bounds is not None:
            return self.bounds
        with torch.no_grad():
            return float(x.min()) - self.eps, float(x.max()) + self.eps

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """``x_adv`` (see the class docstring). Checked first, changing nothing on failure: the
        package installed, model a module returning ``(B, C)`` logits, x a finite floating batch
        inside ``bounds`` of the model's dtype, y integer labels ``(B,)`` in the model's classes."""
        package = load_package()
        _checks.module("model", model)
        x = _checks.check_x(x, self.bounds).detach()
        y = _checks.check_y(y, x.shape[0])
        net = unwrap(model)
        classes = _checks.num_classes(net, x)
        _checks.check_classes(y, classes)
        attacks = list(self.attacks_for(classes))
        lo, hi = self._box(x)
        scale = hi - lo
        frozen = _Frozen(net, lo, scale, x.dtype, x.shape[1:])
        with inner_mode(net, "eval"), _forked_rng(x.device):
            with _quiet_construction():
                aa = package.AutoAttack(
                    frozen, norm=_NORMS[self.norm], eps=self.eps / scale, seed=self.seed, device=x.device,
                    version="plus" if self.version == "plus" else "standard",
                )  # fmt: skip
            aa.verbose = False
            aa.attacks_to_run = attacks
            targets = min(9, classes - 1)
            aa.apgd_targeted.n_target_classes = targets
            aa.fab.n_target_classes = targets
            u = ((x - lo) / scale).float()
            if u.dim() != 4:  # the package's Square attack wants (B, C, H, W): vectors as one row
                u = u.reshape(u.shape[0], 1, 1, -1)
            u_adv, _ = aa.run_standard_evaluation(u, y, batch_size=self.batch_size)
        x_adv = (lo + scale * u_adv.to(x.dtype)).reshape(x.shape).detach()
        return self._feasible(x, x_adv)

    def _feasible(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """``x_adv``, with the samples that rounding moved outside the threat model projected
        back onto it (ball, then box; the others unchanged, bit for bit)."""
        ball = get_ball(self.norm)
        delta = x_adv - x
        fixed = clamp_to_box(x, ball.project(delta, self.eps), self.bounds)
        bad = ball.norm(delta) > self.eps
        if self.bounds is not None:
            outside = (x_adv < self.bounds[0]) | (x_adv > self.bounds[1])
            bad = bad | outside.reshape(x.shape[0], -1).any(1)
        if not bool(bad.any()):
            return x_adv
        return x + torch.where(per_sample(bad, x), fixed, delta)
