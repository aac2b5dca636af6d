"""The device seam: where robustreg's hand-written kernels run.

Two places carry kernels written and measured for CPUs: YOPO's closed-form first-layer products
(:mod:`robustreg.adversarial.first_layer`) and the written-out Jacobian products of the
convolutional charts (:mod:`robustreg.charts.linearize`, TNAR). They run for tensors on a device
in :data:`KERNEL_DEVICES`; tensors elsewhere take the generic path (``torch.func`` and autograd),
which computes the same products. A device joins the set when a measurement on it
(``benchmarks/step_cost.py``) shows the kernels winning there. :func:`kernels` forces either path
for a block of code, to compare them on one device.

Example:
    >>> with robustreg.devices.kernels("off"):  # the generic path, whatever the device
    ...     loss = YOPO(model, m=2, n=2)(x, y)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor

#: Device types on which the hand-written kernels run.
KERNEL_DEVICES = frozenset({"cpu"})

MODES = ("auto", "on", "off")
_forced: list[bool | None] = []  # per open kernels() block, innermost last: True on, False off, None auto


def uses_kernels(t: Tensor) -> bool:
    """Whether products with ``t``'s data take the hand-written kernels: as the innermost
    :func:`kernels` block forces it, else whether ``t`` is on a device in :data:`KERNEL_DEVICES`."""
    if _forced and _forced[-1] is not None:
        return _forced[-1]
    return t.device.type in KERNEL_DEVICES


@contextmanager
def kernels(mode: str) -> Iterator[None]:
    """Inside the block, the hand-written kernels run on every device (``"on"``), on none
    (``"off"``: the generic ``torch.func`` path), or by :data:`KERNEL_DEVICES` (``"auto"``).
    Blocks nest; the setting is process-wide (not per thread)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _forced.append(None if mode == "auto" else mode == "on")
    try:
        yield
    finally:
        _forced.pop()
