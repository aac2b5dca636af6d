"""Exact Jacobian products of the convolutional decoders of this package, written out layer by
layer, for :class:`robustreg.TNAR`.

TNAR's products with a chart's Jacobian J (``Jv`` and ``Jᵀu``, nine and ten of them a call with
the defaults) go through ``torch.func`` for any chart. For the decoders here,
``sigmoid ∘ [ReLU, ConvTranspose2d]*`` after a linear (VAE, autoencoder) or FiLM (Localized GAN)
map of z, the same two linear maps are cheap to write directly: the ReLU masks and the sigmoid's
slope are stored once per point, ``Jv`` pushes v through the transposed convolutions and ``Jᵀu``
pulls u back through their adjoints, plain convolutions. The charts expose them as
``linearize(z)``, which :class:`robustreg.TNAR` uses when a chart has it; the tests compare both
products with ``torch.func.jvp``/``vjp`` of ``decode``.

It also evaluates each transposed convolution by the kernel measured fastest for it on the CPU
(each layer of the FashionMNIST VAE timed alone, batch 128, 2 cores, PyTorch 2.14; the effect on
a whole step is ``tnar`` against ``tnar-func`` in ``benchmarks/step_cost.py``): channels-last
``conv_transpose2d`` (oneDNN) in general, about 1.6× faster than on a contiguous input, and, for
a layer with at most four output channels (the image layer), the equivalent sub-pixel
convolution (Shi et al., 2016) — a dense convolution to ``s²·C_out`` channels followed by
``pixel_shuffle`` — about 2× faster than either. Both the written-out products and these kernels are used on the
devices of :data:`robustreg.devices.KERNEL_DEVICES` (TNAR's products go through ``torch.func``
elsewhere); ``conv_transpose`` itself falls back to ``conv_transpose2d`` on other devices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..devices import uses_kernels
from .base import Linearization

SUBPIXEL_MAX_CHANNELS = 4  # a transposed conv with at most this many outputs runs as a sub-pixel conv on the CPU


def _subpixel_taps(kernel: int, stride: int, padding: int) -> tuple[Tensor, Tensor, int] | None:
    """For one spatial dimension of a transposed convolution whose output is exactly ``stride``
    times its input (``kernel − 2·padding = stride``): the kernel index ``κ[a, d]`` used by output
    phase a at tap d of the equivalent dense convolution, whether that tap exists, and the dense
    convolution's padding. Output ``y = s·i + a`` sums ``h[i − t]·w[s·t + a + p]`` over the t with
    ``0 ≤ s·t + a + p < k``; tap ``d = t_max − t``."""
    if kernel - 2 * padding != stride:
        return None
    t_max = (stride + padding - 1) // stride  # = −t_min when kernel = stride + 2·padding
    t = t_max - torch.arange(2 * t_max + 1)
    kappa = stride * t[None, :] + torch.arange(stride)[:, None] + padding  # (s, K)
    valid = (kappa >= 0) & (kappa < kernel)
    return kappa.clamp(0, kernel - 1), valid, t_max


def subpixel_weight(layer: nn.ConvTranspose2d) -> tuple[Tensor, int] | None:
    """The weight ``(s_h·s_w·C_out, C_in, K_h, K_w)`` and padding of the dense convolution that,
    followed by ``pixel_shuffle``, computes ``layer`` without its bias; None when no such form
    exists here (groups, dilation, output padding, unequal strides, or an output that is not
    exactly ``stride ×`` the input)."""
    (sh, sw), (kh, kw), (ph, pw) = layer.stride, layer.kernel_size, layer.padding
    if layer.groups != 1 or layer.dilation != (1, 1) or layer.output_padding != (0, 0) or sh != sw:
        return None
    taps_h, taps_w = _subpixel_taps(kh, sh, ph), _subpixel_taps(kw, sw, pw)
    if taps_h is None or taps_w is None or taps_h[2] != taps_w[2]:
        return None
    (kap_h, ok_h, pad), (kap_w, ok_w, _) = taps_h, taps_w
    w = layer.weight  # (C_in, C_out, kh, kw)
    g = w[:, :, kap_h[:, :, None, None], kap_w[None, None, :, :]]  # (C_in, C_out, s, K_h, s, K_w)
    g = g * (ok_h[:, :, None, None] & ok_w[None, None, :, :]).to(w.dtype)
    c_in, c_out = w.shape[:2]
    # channel c·s² + a_h·s + a_w, the order pixel_shuffle reads
    return g.permute(1, 2, 4, 0, 3, 5).reshape(c_out * sh * sw, c_in, g.shape[3], g.shape[5]), pad


def conv_transpose(x: Tensor, layer: nn.ConvTranspose2d, *, bias: bool = True, contiguous: bool = True) -> Tensor:
    """``layer(x)`` (``bias=False``: without the bias, the layer's linear part), computed by the
    kernel measured fastest for it on the CPU (module docstring); a contiguous output, or
    (``contiguous=False``) the output in the memory format of the kernel that made it (channels-last
    after a channels-last ``conv_transpose2d``), for a caller whose next step is elementwise or
    another such layer: converting back and forth costs more than the layer itself."""
    b = layer.bias if bias else None
    geometry = (layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation)
    if not uses_kernels(x):
        return F.conv_transpose2d(x, layer.weight, b, *geometry)
    if layer.out_channels <= SUBPIXEL_MAX_CHANNELS and (dense := subpixel_weight(layer)) is not None:
        weight, pad = dense
        s = layer.stride[0]
        b = None if b is None else b.repeat_interleave(s * s)
        return F.pixel_shuffle(F.conv2d(x, weight, b, padding=pad), s).contiguous()
    out = F.conv_transpose2d(x.contiguous(memory_format=torch.channels_last), layer.weight, b, *geometry)
    return out.contiguous() if contiguous else out


def _adjoint(u: Tensor, layer: nn.ConvTranspose2d) -> Tensor:
    """The adjoint of ``layer``'s linear part (no output padding), a convolution with the same weight."""
    return F.conv2d(u, layer.weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def sigmoid_stack(layers: nn.Sequential, h: Tensor) -> Linearization:
    """``sigmoid(layers(h))`` and its exact Jacobian products in h, for ``layers`` made of
    ``nn.ReLU`` and ``nn.ConvTranspose2d`` (no output padding). Computed without gradients: the
    products are of the decoder as it is, not differentiable in its parameters.

    The ReLU masks are stored in the data's dtype and in the memory format the hidden layers leave
    their outputs in (channels-last, on the CPU), so that ``Jv``'s mask products and layers meet no
    conversion (a boolean mask, or a mask and a vector in different formats, take a slow
    elementwise path: measured 2.4× the float, same-format ``Jᵀu``); the point and the products
    are returned contiguous."""
    steps: list[tuple[nn.ConvTranspose2d | None, Tensor | None]] = []  # (layer, None) or (None, ReLU mask)
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, nn.ReLU):
                mask = (h > 0).to(h.dtype)
                steps.append((None, mask))
                h = h * mask
            elif isinstance(layer, nn.ConvTranspose2d):
                if layer.output_padding != (0, 0):
                    raise ValueError(f"sigmoid_stack: output_padding is not supported, got {layer}")
                steps.append((layer, None))
                h = conv_transpose(h, layer, contiguous=False)
            else:
                name = type(layer).__name__
                raise TypeError(f"sigmoid_stack supports nn.ReLU and nn.ConvTranspose2d layers, got {name}")
        point = torch.sigmoid(h).contiguous()
        slope = point * (1 - point)

    def jvp(v: Tensor) -> Tensor:
        with torch.no_grad():
            for layer, mask in steps:
                v = v * mask if layer is None else conv_transpose(v, layer, bias=False, contiguous=False)
            return v.contiguous() * slope

    def vjp(u: Tensor) -> Tensor:
        with torch.no_grad():
            u = u * slope
            for layer, mask in reversed(steps):
                u = u * mask if layer is None else _adjoint(u, layer)
            return u

    return Linearization(point, jvp, vjp)
