"""Generated data sets that need no files (the default job runs on a fresh machine)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _checks


def two_rings(
    n: int,
    *,
    nuisance: int = 48,
    radii: tuple[float, float] = (1.0, 2.0),
    noise: float = 0.1,
    nuisance_std: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Two concentric rings in the plane, padded with label-independent Gaussian features.

    Class k lies at radius ``radii[k] + noise·N(0, 1)`` and a uniform angle in its first two
    coordinates; the other ``nuisance`` coordinates are ``nuisance_std·N(0, 1)`` for both
    classes. A classifier needs only the first two; a naturally trained one also puts weight
    on the nuisance coordinates, which an ℓ∞ adversary exploits in every one of them at once,
    so natural training is accurate but not robust, and adversarial training learns to ignore
    them.

    Returns ``x`` of shape ``(n, 2 + nuisance)`` (float32) and labels ``y`` in {0, 1}.
    """
    _checks.count("n", n, minimum=1)
    _checks.count("nuisance", nuisance)
    _checks.nonneg_float("noise", noise)
    _checks.nonneg_float("nuisance_std", nuisance_std)
    y = torch.randint(0, 2, (n,), generator=generator)
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    radius = torch.tensor(radii, dtype=torch.float32)[y] + noise * torch.randn(n, generator=generator)
    ring = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)  # (n, 2)
    extra = nuisance_std * torch.randn(n, nuisance, generator=generator)  # (n, nuisance)
    return torch.cat([ring, extra], dim=1), y
