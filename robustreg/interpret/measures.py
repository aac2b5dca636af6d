"""Two measures of a saliency map's shape, for the interpretation study (Zhang and Zhu, ICML 2019;
its accuracy on correctly classified images is :func:`robustreg.evaluate.accuracy_on_correct`,
beside the other evaluations over a data set).

**Sparsity** (:func:`gini`): the Gini coefficient of the map's mass ``a = |E|`` summed over
channels, per image, with the n pixel masses sorted increasingly,

    G = Σ_i (2i − n − 1)·a_(i) / (n·Σ_i a_i),

0 for a uniform map, (n − 1)/n for all mass on one pixel. Of the sparsity measures Hurley and
Rickard compare ("Comparing Measures of Sparsity", 2009), it is one of the two that meet all six
of their criteria; those that matter here: it does not change with the map's scale (maps of
different models differ in magnitude by orders) nor when the map is cloned (the number of
pixels), and it rises when mass moves from a weaker pixel to a stronger one.

**Edge alignment** (:func:`edge_mass`): the fraction of the map's mass on the image's edges, the
``top`` fraction of pixels with the largest Sobel gradient magnitude of the (channel-averaged)
image. A map that ignores edges puts ``top`` of its mass there on average; "shape-aligned"
saliency puts more. Both are per image: average them over a test set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks


def _mass(saliency: Tensor, name: str = "saliency") -> Tensor:
    """``|E|`` summed over channels, flattened per image: ``(B, H·W)``."""
    if not isinstance(saliency, Tensor) or saliency.dim() not in (3, 4) or not saliency.is_floating_point():
        got = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
        raise ValueError(f"{name} must be a floating tensor (B, C, H, W) or (B, H, W), got {got}")
    mass = saliency.detach().abs()
    return (mass.sum(1) if mass.dim() == 4 else mass).flatten(1)


def gini(saliency: Tensor) -> Tensor:
    """The Gini coefficient of each map's mass (see the module docstring): ``(B,)`` in [0, 1);
    NaN for an all-zero map (no mass to be spread or concentrated)."""
    mass = _mass(saliency).sort(1).values  # (B, n), increasing
    n = mass.shape[1]
    rank = torch.arange(1, n + 1, device=mass.device, dtype=mass.dtype)
    total = mass.sum(1)
    g = ((2 * rank - n - 1) * mass).sum(1) / (n * total)
    return torch.where(total > 0, g, torch.full_like(g, math.nan))


def sobel_magnitude(x: Tensor) -> Tensor:
    """The Sobel gradient magnitude ``√(G_h² + G_v²)`` of each image ``(B, C, H, W)`` averaged over its
    channels (replicated borders): ``(B, H, W)``."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating batch of images (B, C, H, W), got {got}")
    gray = F.pad(x.detach().mean(1, keepdim=True), (1, 1, 1, 1), mode="replicate")  # (B, 1, H+2, W+2)
    kernel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    kernels = torch.stack([kernel, kernel.T])[:, None]  # (2, 1, 3, 3): horizontal, vertical
    g = F.conv2d(gray, kernels)  # (B, 2, H, W)
    return g.pow(2).sum(1).sqrt()


def edge_mass(saliency: Tensor, x: Tensor, *, top: float = 0.2) -> Tensor:
    """The fraction of each map's mass ``|E|`` on its image's edges: the ``⌈top·H·W⌉`` pixels of largest
    :func:`sobel_magnitude` (ties broken by position). ``(B,)``; a map blind to edges scores ``top``
    on average; NaN for an all-zero map.

    Args:
        saliency: maps ``(B, C, H, W)`` or ``(B, H, W)``.
        x: the images ``(B, C, H, W)`` the maps are of.
        top: the fraction of pixels counted as edges, in (0, 1].
    """
    mass = _mass(saliency)
    edges = sobel_magnitude(x).flatten(1)  # (B, H·W)
    if edges.shape != mass.shape:
        raise ValueError(f"saliency {tuple(saliency.shape)} and x {tuple(x.shape)} must be maps of the same images")
    top = _checks.unit_float("top", top)
    if top == 0:
        raise ValueError("top must be in (0, 1], got 0.0")
    k = math.ceil(top * edges.shape[1])
    on_edges = torch.zeros_like(mass, dtype=torch.bool).scatter_(1, edges.topk(k, 1).indices, True)
    total = mass.sum(1)
    frac = (mass * on_edges).sum(1) / total
    return torch.where(total > 0, frac, torch.full_like(frac, math.nan))
