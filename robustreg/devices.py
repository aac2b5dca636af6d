"""The device seam: where robustreg's hand-written kernels run.

Two places carry kernels written and measured for CPUs: YOPO's closed-form first-layer products
(:mod:`robustreg.adversarial.first_layer`) and the written-out Jacobian products of the
convolutional charts (:mod:`robustreg.charts.linearize`, TNAR). They run for tensors on a device
in :data:`KERNEL_DEVICES`; tensors elsewhere take the generic path (``torch.func`` and autograd),
which computes the same products. A device joins the set when a measurement on it
(``benchmarks/step_cost.py``) shows the kernels winning there.
"""

from __future__ import annotations

from torch import Tensor

#: Device types on which the hand-written kernels run.
KERNEL_DEVICES = frozenset({"cpu"})


def uses_kernels(t: Tensor) -> bool:
    """Whether products with ``t``'s data take the hand-written kernels (``t`` on a device in
    :data:`KERNEL_DEVICES`)."""
    return t.device.type in KERNEL_DEVICES
