"""Image transforms that take texture away and leave shape, or the other way round (Zhang and Zhu,
"Interpreting Adversarially Trained Convolutional Neural Networks", ICML 2019, Sec. 4):

- **saturation** of level p (:func:`saturate`, :class:`Saturate`): with u = 2x − 1 ∈ [−1, 1],

      u' = sign(u)·|u|^(2/p),     x' = (u' + 1) / 2,

  p = 2 is the identity; as p grows, every value is pushed to 0 or 1 (p = ∞ binarises: texture
  and shading go, edges stay); as p → 0 every value goes to the gray 0.5 (the image fades);
- **patch-shuffle** into k×k patches (:func:`patch_shuffle`, :class:`PatchShuffle`): the image is
  cut into k rows and k columns of patches, which are put back in a random order (k = 1 is the
  identity; local texture survives, global shape does not).

Both work on ``(C, H, W)`` images and ``(B, C, H, W)`` batches of any dtype and device, as functions
and as torchvision-style transforms (``transforms.Compose([ToTensor(), Saturate(8)])``).

The paper's third probe, **stylisation** (Stylized-ImageNet, Geirhos et al. 2019), needs a trained
style-transfer network that this package does not ship: any callable ``x -> x'`` on a batch can
stand in its place (:func:`robustreg.evaluate.accuracy_on_correct` takes a mapping of them).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from .. import _checks
from ..perturb import Bounds, check_bounds


def _check_level(level: object) -> float:
    if isinstance(level, bool) or not isinstance(level, numbers.Real):
        raise TypeError(f"level must be a real number, got {type(level).__name__}")
    level = float(level)
    if not level > 0:  # NaN fails too
        raise ValueError(f"level must be > 0 (2: identity, math.inf: binarise), got {level}")
    return level


def _check_image(x: object, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor image (C, H, W) or batch (B, C, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (e.g. images scaled to [0, 1]), got dtype {x.dtype}")
    if x.dim() not in (3, 4) or x.numel() == 0:
        raise ValueError(f"{name} must be a non-empty image (C, H, W) or batch (B, C, H, W), got {tuple(x.shape)}")
    return x


def saturate(x: Tensor, level: float, *, bounds: Bounds = (0.0, 1.0)) -> Tensor:
    """Saturation of level ``p = level``: ``x' = (sign(2x − 1)·|2x − 1|^(2/p) + 1) / 2`` for x in
    [0, 1] (the paper's eq. in Sec. 4.1), on ``bounds`` rescaled to [0, 1] and back otherwise.

    Args:
        x: an image ``(C, H, W)`` or a batch ``(B, C, H, W)`` with values in ``bounds``.
        level: p > 0; 2 returns x unchanged (a copy), ``math.inf`` binarises (a value exactly in
            the middle of the box stays there), small p fades to the middle gray.
        bounds: the box of the values, ``(lo, hi)`` with lo < hi.

    Returns a new tensor of x's shape, dtype and device, inside ``bounds``; monotone in x.
    """
    x = _check_image(x)
    level = _check_level(level)
    bounds = check_bounds(bounds)
    if bounds is None:
        raise ValueError("bounds must be a box (lo, hi): saturation is defined on a bounded range")
    _checks.check_x(x.unsqueeze(0) if x.dim() == 3 else x, bounds)
    if level == 2:
        return x.clone()
    lo, hi = bounds
    u = (x - lo) * (2 / (hi - lo)) - 1  # [-1, 1]
    exponent = 0.0 if math.isinf(level) else 2 / level
    u = torch.sign(u) * u.abs().pow(exponent)
    return ((u + 1) * ((hi - lo) / 2) + lo).clamp_(lo, hi)


def _grid(size: int, k: int) -> tuple[int, int]:
    """``(offset, side)`` of k patches along an axis of ``size`` pixels: sides of ``size // k``,
    the ``size mod k`` pixels left over split between the two borders (which stay in place)."""
    side = size // k
    return (size - k * side) // 2, side


def patch_shuffle(x: Tensor, k: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Cut each image into k×k patches and put them back in a random order (the paper's Sec. 4.3),
    one permutation per image.

    Patches are ``H // k`` × ``W // k`` pixels. When k does not divide a side (28-pixel MNIST
    images with k = 8: 3-pixel patches covering 24 pixels), the block of whole patches is centred
    and the pixels left over on its borders (2 on each side there) stay where they are.

    Args:
        x: an image ``(C, H, W)`` or a batch ``(B, C, H, W)``.
        k: patches per side, 1 ≤ k ≤ min(H, W); 1 returns x unchanged (a copy).
        generator: draws the permutations (on its own device; torch's global generator when None).

    Returns a new tensor of x's shape: for each image, a permutation of its patches.
    """
    x = _check_image(x)
    k = _checks.count("k", k, minimum=1)
    h, w = x.shape[-2:]
    if k > min(h, w):
        raise ValueError(f"k must be <= min(H, W) = {min(h, w)} (patches of at least one pixel), got {k}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    single = x.dim() == 3
    batch = x.unsqueeze(0) if single else x  # (B, C, H, W)
    out = batch.clone()
    if k > 1:
        (top, sh), (left, sw) = _grid(h, k), _grid(w, k)
        b, c = batch.shape[:2]
        block = batch[:, :, top : top + k * sh, left : left + k * sw]  # (B, C, k·sh, k·sw)
        patches = block.reshape(b, c, k, sh, k, sw).permute(0, 2, 4, 1, 3, 5).reshape(b, k * k, c, sh, sw)
        device = generator.device if generator is not None else x.device
        order = torch.rand(b, k * k, generator=generator, device=device).argsort(1).to(x.device)  # (B, k²)
        patches = patches[torch.arange(b, device=x.device)[:, None], order]  # (B, k², C, sh, sw)
        block = patches.reshape(b, k, k, c, sh, sw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, k * sh, k * sw)
        out[:, :, top : top + k * sh, left : left + k * sw] = block
    return out[0] if single else out


class Saturate:
    """:func:`saturate` as a transform: ``Saturate(level, bounds=(0, 1))(x)``.

    Example:
        >>> from torchvision import transforms
        >>> t = transforms.Compose([transforms.ToTensor(), Saturate(1024)])
    """

    def __init__(self, level: float, *, bounds: Bounds = (0.0, 1.0)) -> None:
        self.level = _check_level(level)
        self.bounds = check_bounds(bounds)
        if self.bounds is None:
            raise ValueError("bounds must be a box (lo, hi): saturation is defined on a bounded range")

    def __call__(self, x: Tensor) -> Tensor:
        return saturate(x, self.level, bounds=self.bounds)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(level={self.level:g}, bounds={self.bounds})"


class PatchShuffle:
    """:func:`patch_shuffle` as a transform: ``PatchShuffle(k, generator=None)(x)``, a fresh
    permutation per image and call (drawn from ``generator``, or torch's global generator, which
    DataLoader workers seed)."""

    def __init__(self, k: int, *, generator: torch.Generator | None = None) -> None:
        self.k = _checks.count("k", k, minimum=1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator

    def __call__(self, x: Tensor) -> Tensor:
        return patch_shuffle(x, self.k, generator=self.generator)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})"
