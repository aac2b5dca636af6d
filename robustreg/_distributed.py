"""What the objects that update weights themselves (:class:`robustreg.control.MSA`,
:class:`robustreg.bayes.BAL`) need of ``torch.distributed``: gradients averaged over processes."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def several_processes() -> bool:
    """``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(grads: list[Tensor]) -> list[Tensor]:
    """Average gradients over processes when ``torch.distributed`` runs with several (one
    all-reduce of the flattened list); returned as they are otherwise."""
    if not several_processes():
        return grads
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return [f.view_as(g) for f, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)]
