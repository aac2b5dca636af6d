"""Train/eval mode and BatchNorm policy for the passes an engine runs on its own.

Adversarial and semi-supervised methods run extra forward passes (the attack, the power
iteration) that the user never sees. What BatchNorm should do in them is where the papers
differ, so every engine takes an explicit ``bn=`` policy:

``"train"``
    the model in train mode: batch statistics, running statistics updated by every inner
    pass (the official YOPO, Free-AT and Fast-AT code);
``"eval"``
    the model in eval mode: running statistics used and untouched, dropout off (the official
    TRADES and ATTA code; MadryLab's ``robustness``);
``"frozen"``
    batch statistics used, running statistics untouched; every other module keeps the mode
    the user set (the official VAT and TNAR code).

:func:`inner_mode` applies a policy and restores every module's own ``training`` flag (and
BatchNorm's ``track_running_stats``) on exit, also when the body raises. The loss the user
back-propagates is always computed in the mode the user left the model in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parallel import DistributedDataParallel

BN_POLICIES = ("train", "eval", "frozen")


def check_bn(bn: object) -> str:
    """Validate a BatchNorm policy name."""
    if bn not in BN_POLICIES:
        raise ValueError(f"bn must be one of {BN_POLICIES}, got {bn!r}")
    return bn  # type: ignore[return-value]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel wrappers.

    Inner passes run on the bare module: they only need input gradients, so they must not
    arm DDP's gradient reducer or broadcast buffers once per attack step. The loss the user
    back-propagates goes through the wrapped model, so its gradients are still all-reduced.
    """
    while isinstance(model, DistributedDataParallel):
        model = model.module
    return model


@contextmanager
def preserve_mode(model: nn.Module) -> Iterator[None]:
    """Restore each module's ``training`` flag and norm layers' ``track_running_stats`` on exit."""
    modes = [(m, m.training) for m in model.modules()]
    tracking = [(m, m.track_running_stats) for m in model.modules() if isinstance(m, _NormBase)]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for m, track in tracking:
            m.track_running_stats = track


@contextmanager
def inner_mode(model: nn.Module, bn: str) -> Iterator[None]:
    """Run the body under BatchNorm policy ``bn`` (see the module docstring), then restore."""
    check_bn(bn)
    with preserve_mode(model):
        if bn == "train":
            model.train()
        elif bn == "eval":
            model.eval()
        else:  # frozen: batch statistics without running-statistic updates
            for m in model.modules():
                if isinstance(m, _NormBase):
                    m.train()
                    # With training=True and no tracking, F.batch_norm gets no running buffers:
                    # it normalises by the batch and updates nothing (num_batches_tracked too).
                    m.track_running_stats = False
        yield
