"""Numbers for the interpretation study: accuracy on correctly classified images under a transform
(Zhang and Zhu, ICML 2019, Sec. 4), and two measures of a saliency map's shape.

**Accuracy on correctly classified images** (:func:`accuracy_on_correct`): of the test images the
model classifies correctly when clean, the fraction it still classifies correctly after a
transform. It separates what the transform does from what the model got wrong anyway, so models
of different clean accuracy can be compared.

**Sparsity** (:func:`gini`): the Gini coefficient of the map's mass ``a = |E|`` summed over
channels, per image, with the n pixel masses sorted increasingly,

    G = Σ_i (2i − n − 1)·a_(i) / (n·Σ_i a_i),

0 for a uniform map, (n − 1)/n for all mass on one pixel. It is the sparsity measure that meets
Hurley and Rickard's criteria ("Comparing Measures of Sparsity", 2009): invariant to the map's
scale (maps of different models have different magnitudes) and to the number of pixels, and
raised by moving mass from a weak pixel to a strong one.

**Edge alignment** (:func:`edge_mass`): the fraction of the map's mass on the image's edges, the
``top`` fraction of pixels with the largest Sobel gradient magnitude of the (channel-averaged)
image. A map that ignores edges puts ``top`` of its mass there on average; "shape-aligned"
saliency puts more. Both are per image: average them over a test set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..evaluate import Data, ProgressEvent, ProgressHook, check_hook, count_batches, iter_batches
from ..modes import inner_mode

Transform = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class OnCorrect:
    """What :func:`accuracy_on_correct` measured.

    Attributes:
        clean: clean accuracy, ``correct / n``.
        n: samples evaluated.
        correct: of these, the ones classified correctly when clean (the denominator below).
        per_transform: per transform, the fraction of the ``correct`` samples still classified
            correctly after it (NaN when ``correct`` is 0).
    """

    clean: float
    n: int
    correct: int
    per_transform: dict[str, float]


def accuracy_on_correct(
    model: nn.Module,
    data: Data,
    transforms: Mapping[str, Transform],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: ProgressHook | None = None,
) -> OnCorrect:
    """Accuracy on correctly classified images under each of ``transforms``, in one pass over ``data``.

    Args:
        model: a classifier returning logits, evaluated in eval mode without gradients (each
            module's mode restored afterwards).
        data: an iterable of ``(x, y, ...)`` batches (a DataLoader) or a pair of tensors.
        transforms: ``name -> transform``, each a callable on a batch ``x -> x'`` of x's shape
            (:class:`~robustreg.interpret.Saturate`, :class:`~robustreg.interpret.PatchShuffle`,
            a user's stylisation network, …); applied to the whole batch, clean-misclassified
            samples included, in the mapping's order.
        batch_size: the chunk size when ``data`` is a pair of tensors.
        device: where batches go; by default the device of the model's parameters.
        progress: called with a :class:`robustreg.ProgressEvent` before the first batch and after
            every transform on every batch: ``attack`` is the transform's name, ``clean`` the
            clean-correct samples so far, ``attacked[name]`` those the transform has seen,
            ``correct[name]`` how many of them it kept correct, ``robust`` how many of the
            clean-correct samples of the finished batches every transform kept correct.

    Returns:
        :class:`OnCorrect`.

    Example:
        >>> res = accuracy_on_correct(model, (x, y), {"saturate-1024": Saturate(1024)})
        >>> res.per_transform["saturate-1024"]  # doctest: +SKIP
        0.93
    """
    _checks.module("model", model)
    if not isinstance(transforms, Mapping) or not transforms or not all(callable(t) for t in transforms.values()):
        raise TypeError("transforms must be a non-empty mapping name -> callable x -> x'")
    _checks.count("batch_size", batch_size, minimum=1)
    check_hook("progress", progress)
    batches = iter_batches(data, batch_size)
    num_batches = count_batches(data, batch_size)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else None
    names = list(transforms)
    total = None if num_batches is None else num_batches * len(names)
    batch = done = samples = clean = finished = every = 0
    kept, seen = dict.fromkeys(names, 0), dict.fromkeys(names, 0)

    def report(name: str | None) -> None:
        if progress is not None:
            counts = (samples, clean, dict(kept), dict(seen), finished, every)
            progress(ProgressEvent(name, batch, num_batches, done, total, *counts))

    report(None)
    with inner_mode(model, "eval"), torch.no_grad():
        for x, y in batches:
            x = _checks.check_x(x, None)
            y = _checks.check_y(y, x.shape[0])
            x, y = x.to(device), y.to(device)
            _checks.check_dtype(model, x)
            logits = _checks.check_output(model(x), x.shape[0])
            _checks.check_classes(y, logits.shape[1])
            ok = logits.argmax(1) == y
            batch += 1
            samples += x.shape[0]
            clean += int(ok.sum())
            kept_all = ok.clone()
            for name in names:
                moved = transforms[name](x)
                if not isinstance(moved, Tensor) or moved.shape != x.shape:
                    shape = tuple(moved.shape) if isinstance(moved, Tensor) else type(moved).__name__
                    want = tuple(x.shape)
                    raise ValueError(f"transform {name!r} must return a batch of x's shape {want}, got {shape}")
                hit = ok & (model(moved).argmax(1) == y)
                kept[name] += int(hit.sum())
                seen[name] = clean
                kept_all &= hit
                if name == names[-1]:
                    finished, every = samples, every + int(kept_all.sum())
                done += 1
                report(name)
    if samples == 0:
        raise ValueError("data yielded no samples")
    per = {k: v / clean if clean else math.nan for k, v in kept.items()}
    return OnCorrect(clean / samples, samples, clean, per)


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
