"""Argument and input validation shared by every public object: the engines, Amata, VAT, TNAR,
EntMin, MSA, the evaluation attacks and :func:`robustreg.robust_accuracy`.

Label-free objects (VAT, TNAR, EntMin) refuse a second positional argument with
:func:`no_labels`; a model and a batch meet through :func:`classes_of` (or :func:`num_classes`),
which checks x's dtype against the model's parameters (:func:`check_dtype`) at every call.

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


def no_labels(owner: str, extra: tuple[object, ...], *, reuse: str = "reg(x, logits=model(x))") -> None:
    """A label-free loss called with more positional arguments than ``x`` (labels, most likely):
    ``TypeError`` saying so, how to pass the logits of a clean pass (``reuse``), and how to add
    the supervised term."""
    if extra:
        raise TypeError(
            f"{owner} takes no labels: call it as reg(x) on a batch ({reuse} to reuse the "
            f"logits of your clean forward), got {len(extra)} more positional argument(s) after x; "
            f"add the supervised term yourself: loss = F.cross_entropy(model(x_l), y_l) + reg(x_u)"
        )


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


def check_dtype(model: nn.Module, x: Tensor, *, name: str = "x") -> None:
    """``x``'s dtype is the dtype of ``model``'s floating parameters (``TypeError`` naming ``name``,
    both dtypes and the fix otherwise), so that a float64 model fed float32 data gets this message
    instead of torch's error from deep inside the forward.

    Checked only where torch itself would refuse the mix, and nothing is cast:

    - the model's floating parameters must share one dtype: a model without parameters, or one
      that mixes precisions on purpose (say bfloat16 weights with float32 norm layers), is left
      to torch;
    - under ``torch.autocast`` for x's device, autocast casts float16, bfloat16 and float32
      operands itself, so those mixes pass; float64 on either side is still refused (autocast
      never casts float64, and torch raises).

    A model that casts its own input first (``x.to(self.weight.dtype)`` in ``forward``) is refused
    too: cast x before the call instead. Devices are not checked. Reads ``model.parameters()``
    only (no forward, no device sync).
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) != 1:
        return
    (dtype,) = dtypes
    if x.dtype == dtype:
        return
    if torch.is_autocast_enabled(x.device.type) and torch.float64 not in (dtype, x.dtype):
        return
    raise TypeError(
        f"{name} has dtype {x.dtype} but the model's parameters are {dtype}: convert one to the other, "
        f"model.to({x.dtype}) or {name}.to({dtype})"
    )


def classes_of(model: nn.Module, x: Tensor, cached: int | None = None) -> int:
    """The checks of a model meeting a batch, at every call: x's dtype against the model's
    (:func:`check_dtype`), then the class count, ``cached`` when known, else probed
    (:func:`num_classes`). Changes nothing."""
    if cached is None:
        return num_classes(model, x)
    check_dtype(model, x)
    return cached


def num_classes(model: nn.Module, x: Tensor) -> int:
    """The number of logits ``model`` returns, probed on one sample in eval mode; raises
    ``ValueError`` naming ``model`` unless the output is ``(1, C)`` logits. x's dtype is checked
    against the model's first (:func:`check_dtype`).

    Eval mode and ``no_grad`` leave running statistics, ``.grad`` and randomness of dropout
    untouched; the modes are restored before returning.
    """
    from .modes import inner_mode

    check_dtype(model, x)
    with torch.no_grad(), inner_mode(model, "eval"):
        out = model(x[:1])
    return check_output(out).shape[1]
