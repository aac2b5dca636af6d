"""Argument and input validation shared by every public object: the engines, Amata, VAT, TNAR,
EntMin, MSA, the evaluation attacks and :func:`robustreg.robust_accuracy`.

One dialect: a value of the wrong type raises ``TypeError``, a value of the right type outside
the allowed range (NaN and inf included) raises ``ValueError``, and every message names the
argument and what is allowed, so the same mistake reads the same from every object. Callers run
these checks before anything is changed (model modes, parameters, running statistics, ``.grad``,
``requires_grad``, an engine's knobs and stored state).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from .perturb import Bounds


def nonneg_float(name: str, value: object) -> float:
    """A finite float ``≥ 0``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def positive_float(name: str, value: object) -> float:
    """A finite float ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def unit_float(name: str, value: object) -> float:
    """A float in ``[0, 1]``."""
    value = nonneg_float(name, value)
    if value > 1:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def count(name: str, value: object, *, minimum: int = 0) -> int:
    """An integer ``≥ minimum`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def flag(name: str, value: object) -> bool:
    """Exactly a ``bool`` (``0``/``1`` are refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """One of the names in ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def module(name: str, value: object) -> nn.Module:
    """A ``torch.nn.Module``."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def finite(name: str, value: Tensor) -> Tensor:
    """A tensor without NaN or inf (one device sync)."""
    with torch.no_grad():
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} contains NaN or inf")
    return value


def check_x(x: object, bounds: Bounds, *, name: str = "x") -> Tensor:
    """A non-empty floating batch ``(B, ...)`` with finite values inside ``bounds``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (e.g. images scaled to [0, 1]), got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have a batch dimension and at least one more, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    with torch.no_grad():
        ok = torch.isfinite(x).all()
        if bounds is not None:
            ok = ok & (x >= bounds[0]).all() & (x <= bounds[1]).all()
        if bool(ok):  # one device sync for all three checks
            return x
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or inf")
        lo, hi = float(x.min()), float(x.max())
    raise ValueError(
        f"{name} has values in [{lo:.6g}, {hi:.6g}], outside bounds={bounds}; pass bounds=(lo, hi) "
        "matching your input range, or bounds=None for unbounded inputs (standardised features, embeddings)"
    )


def integer_vector(name: str, value: object, batch: int, what: str) -> Tensor:
    """An integer tensor of shape ``(batch,)`` (class labels, dataset indices)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of {what}, got {type(value).__name__}")
    if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
        raise TypeError(f"{name} must hold integer {what}, got dtype {value.dtype}")
    if value.dim() != 1 or value.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch},) to match x's batch size, got {tuple(value.shape)}")
    return value


def check_y(y: object, batch: int, *, name: str = "y") -> Tensor:
    """Integer class labels of shape ``(batch,)``, non-negative; returned as int64."""
    y = integer_vector(name, y, batch, "class indices")
    if bool((y < 0).any()):
        raise ValueError(f"{name} holds negative class indices (min {int(y.min())})")
    return y.long()  # cross-entropy and gather want int64 (int32 or uint8 labels are common)


def check_classes(y: Tensor, num_classes: int, *, name: str = "y") -> None:
    """Every label of ``y`` is a class of the model: in ``0..num_classes − 1``."""
    top = int(y.max())
    if top >= num_classes:
        raise ValueError(f"{name} holds class {top}, outside the model's classes 0..{num_classes - 1}")


def check_output(out: object, batch: int | None = None) -> Tensor:
    """A model's output: floating logits of shape ``(B, C)``, ``C ≥ 1`` and ``B = batch`` when given
    (``ValueError`` naming ``model`` otherwise: the model, not an argument, is at fault)."""
    if not isinstance(out, Tensor):
        raise ValueError(f"model must return logits of shape (B, num_classes), got {type(out).__name__}")
    rows = out.dim() == 2 and (batch is None or out.shape[0] == batch)
    if not (rows and out.shape[1] > 0 and out.is_floating_point()):
        raise ValueError(
            "model must return logits of shape (B, num_classes)"
            + ("" if batch is None else f" with B = {batch}")
            + f" and a floating dtype, got shape {tuple(out.shape)} and dtype {out.dtype}"
        )
    return out


def check_logits(logits: object, batch: int | None, classes: int | None = None, *, name: str = "logits") -> Tensor:
    """A ``logits=`` argument: a non-empty floating tensor ``(B, C)`` with ``B = batch`` (x's batch
    size) and ``C = classes`` (the model's class count) when given.

    Its values are not checked: logits= is the model's own output on x, and a non-finite value
    in it, like one the loss computes itself, shows in the returned loss (where training loops
    look for it) rather than being raised here."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, num_classes), got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    b = logits.shape[0] if batch is None else batch
    c = logits.shape[1] if classes is None and logits.dim() == 2 else classes
    if logits.dim() != 2 or logits.numel() == 0 or tuple(logits.shape) != (b, c):
        want = f"({'B' if batch is None else batch}, {'num_classes' if classes is None else classes})"
        raise ValueError(f"{name} must have shape {want} (x's batch, the model's classes), got {tuple(logits.shape)}")
    return logits


def num_classes(model: nn.Module, x: Tensor) -> int:
    """The number of logits ``model`` returns, probed on one sample in eval mode; raises
    ``ValueError`` naming ``model`` unless the output is ``(1, C)`` logits.

    Eval mode and ``no_grad`` leave running statistics, ``.grad`` and randomness of dropout
    untouched; the modes are restored before returning.
    """
    from .modes import inner_mode

    with torch.no_grad(), inner_mode(model, "eval"):
        out = model(x[:1])
    return check_output(out).shape[1]
