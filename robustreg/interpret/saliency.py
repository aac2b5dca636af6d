"""Saliency maps: which input values the class score is most sensitive to (Zhang and Zhu, ICML
2019, Sec. 3, after Simonyan et al. 2014 and Smilkov et al. 2017).

With ``S_c(x) = log p_c(x)``, the log-probability the model gives class c:

- **Grad** (:func:`input_gradient`): ``E(x) = ∂S_c(x)/∂x``;
- **SmoothGrad** (:func:`smooth_grad`): ``Ê(x) = (1/n) Σ_{i=1..n} E(x + g_i)``,
  ``g_i ~ N(0, σ²I)`` with ``σ = noise · (x_max − x_min)``, the range of each image's own values
  (the paper's n = 100 and σ/(x_max − x_min) = 0.1 are the defaults). The noisy copies are not
  clamped to a box (SmoothGrad does not).

Both run the model in eval mode (dropout off, BatchNorm's running statistics: each copy's
gradient is its own, whatever else is in the pass), restore every module's mode afterwards and
take gradients with ``torch.autograd.grad`` with respect to the input only: ``.grad``,
``requires_grad`` and running statistics are left as they were. :func:`saliency_image` turns a
map into the picture the papers show.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..modes import inner_mode


def _prepare(model: nn.Module, x: object, target: object) -> tuple[Tensor, Tensor]:
    """Check the arguments and resolve ``target`` (None: the predicted class, in eval mode)."""
    _checks.module("model", model)
    x = _checks.check_x(x, None)
    _checks.check_dtype(model, x)
    if target is not None:  # its shape and dtype before any pass
        target = _checks.check_y(target, x.shape[0], name="target").to(x.device)
    with torch.no_grad(), inner_mode(model, "eval"):
        logits = _checks.check_output(model(x[:1] if target is not None else x))
    if target is None:
        return x, logits.argmax(1)
    _checks.check_classes(target, logits.shape[1], name="target")
    return x, target


def _log_prob_grad(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """``∂ log p_target(x) / ∂x`` row by row (the model in eval mode: rows are independent)."""
    x = x.detach().requires_grad_(True)
    logits = _checks.check_output(model(x), x.shape[0])
    score = F.log_softmax(logits, 1).gather(1, target[:, None]).sum()
    (g,) = torch.autograd.grad(score, x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g  # a model whose output ignores x


def input_gradient(model: nn.Module, x: Tensor, target: Tensor | None = None) -> Tensor:
    """Grad: ``∂ log p_c(x) / ∂x`` for each sample's class c.

    Args:
        model: a classifier returning logits ``(B, C)``.
        x: a batch ``(B, ...)`` of any shape the model takes (finite floats).
        target: the class c of each sample, integers ``(B,)``; None: the model's prediction on x.

    Returns ``E``, of x's shape, dtype and device.
    """
    x, target = _prepare(model, x, target)
    with inner_mode(model, "eval"), torch.enable_grad():
        return _log_prob_grad(model, x, target)


def smooth_grad(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = None,
    *,
    samples: int = 100,
    noise: float = 0.1,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SmoothGrad: the mean of :func:`input_gradient` over ``samples`` noisy copies of x.

    Args:
        model: a classifier returning logits ``(B, C)``.
        x: a batch ``(B, ...)`` of any shape the model takes.
        target: the class of each sample ``(B,)``; None: the model's prediction on the clean x
            (the same class for every copy).
        samples: n ≥ 1, the noisy copies per sample (the paper: 100).
        noise: σ / (x_max − x_min) ≥ 0, per image (the paper: 0.1); 0 gives Grad.
        batch_size: rows per forward/backward pass: ``batch_size // B`` copies of the whole
            batch go through the model together (or, when B > batch_size, one copy in chunks);
            it changes the speed and the memory, not the result.
        generator: draws the noise, on x's device (torch's global generator when None). Copy i's
            noise is the i-th ``torch.randn(x.shape)`` drawn from it, whatever ``batch_size``.

    Returns ``Ê``, of x's shape, dtype and device.
    """
    samples = _checks.count("samples", samples, minimum=1)
    noise = _checks.nonneg_float("noise", noise)
    batch_size = _checks.count("batch_size", batch_size, minimum=1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    x, target = _prepare(model, x, target)
    b, shape = x.shape[0], x.shape[1:]
    flat = x.flatten(1)
    sigma = (noise * (flat.amax(1) - flat.amin(1))).view(b, *[1] * len(shape))  # (B, 1, ...)
    copies = max(1, batch_size // b)  # copies of the batch per pass
    total = torch.zeros_like(x)
    with inner_mode(model, "eval"), torch.enable_grad():
        for first in range(0, samples, copies):
            m = min(copies, samples - first)
            draws = [torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) for _ in range(m)]
            noisy = (x.detach() + sigma * torch.stack(draws)).flatten(0, 1)  # (m·B, ...), copy-major
            labels = target.repeat(m)
            rows = torch.arange(m * b, device=x.device) % b  # each row's sample
            for start in range(0, m * b, batch_size):  # one pass unless B > batch_size
                part = slice(start, start + batch_size)
                total.index_add_(0, rows[part], _log_prob_grad(model, noisy[part], labels[part]))
    return total / samples


def saliency_image(saliency: Tensor, *, clip: float = 0.99) -> Tensor:
    """The picture of a map ``(B, C, H, W)`` or ``(B, H, W)``: ``|E|`` summed over channels, divided
    by its ``clip`` quantile per image and capped at 1 (Smilkov et al.'s visualisation), so that
    a few extreme pixels do not wash out the rest (by its maximum when more than ``clip`` of it is
    zero). Returns ``(B, H, W)`` in [0, 1]; an all-zero map stays zero."""
    if not isinstance(saliency, Tensor) or saliency.dim() not in (3, 4) or not saliency.is_floating_point():
        got = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
        raise ValueError(f"saliency must be a floating tensor (B, C, H, W) or (B, H, W), got {got}")
    clip = _checks.unit_float("clip", clip)
    mass = saliency.detach().abs()
    mass = mass.sum(1) if mass.dim() == 4 else mass  # (B, H, W)
    flat = mass.flatten(1)
    top = torch.quantile(flat.float(), clip, dim=1).to(mass.dtype)
    top = torch.where(top > 0, top, flat.amax(1)).view(-1, 1, 1)  # a map sparser than the quantile: its max
    return (mass / top.clamp_min(torch.finfo(mass.dtype).tiny)).clamp_(0, 1)
