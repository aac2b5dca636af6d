"""Spectral norms, the projection onto the spectral-norm ball, and stable parametrisations.

The stability condition of the MSA paper is ρ(θ) ≤ 1 for every layer's linear map θ, enforced
through the sufficient condition ‖θ‖₂ ≤ 1 (``[[I, θ], [θᵀ, I]] ⪰ 0``), since ρ(θ) ≤ ‖θ‖₂.

- :func:`project_spectral` is the nearest point in Frobenius norm of the ball
  ``{θ : ‖θ‖₂ ≤ r}``: with ``θ = U diag(s) Vᵀ``, it is ``U diag(min(s, r)) Vᵀ``. (The ball is
  invariant under ``θ ↦ PθQ`` for orthogonal P, Q, so the nearest point shares θ's singular
  vectors, and for singular values the nearest point of ``{s : s_i ≤ r}`` is the clip.)
- A convolution's weight ``(Cout, Cin, k, k)`` is read as the matrix ``(Cout, Cin·k·k)`` for
  the norm and the projection, as in the paper. Its operator norm as a map of images of a
  given size differs (for stride 1 it is at most √(k·k)·‖θ‖₂): :func:`conv_operator_norm`
  estimates it by power iteration on ``AᵀA`` with ``torch.func.vjp`` (from below, converging
  to it), and :func:`conv_circular_norm` bounds it from above by the exact norm of the
  circular convolution on the padded grid, computed by FFT.
- :class:`AntisymmetricLinear` is ``x ↦ (W − Wᵀ − γI) x + b``: every eigenvalue of the map has
  real part −γ, so the residual ODE ``ẋ = σ(Ax + b)`` it drives (:class:`ResidualODEBlock`)
  is stable for any W, with no constraint to enforce.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vjp

from ..func import power_steps

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def as_matrix(weight: Tensor) -> Tensor:
    """A layer's weight as a matrix: ``(out, in)`` for Linear, ``(Cout, Cin·k…)`` for a convolution."""
    return weight.reshape(weight.shape[0], -1)


def spectral_norm(weight: Tensor) -> float:
    """``‖θ‖₂``, the largest singular value of :func:`as_matrix` of ``weight``."""
    return float(torch.linalg.matrix_norm(as_matrix(weight.detach()), ord=2))


def spectral_radius(weight: Tensor) -> float:
    """``ρ(θ) = max |λ_i(θ)|`` for a square weight matrix."""
    w = as_matrix(weight.detach())
    if w.shape[0] != w.shape[1]:
        raise ValueError(f"the spectral radius needs a square weight, got {tuple(w.shape)}")
    return float(torch.linalg.eigvals(w).abs().max())


def project_spectral(weight: Tensor, radius: float = 1.0) -> Tensor:
    """The Frobenius-nearest point of ``{θ : ‖θ‖₂ ≤ radius}``: singular values clipped at
    ``radius``. A weight already inside the ball is returned unchanged (the same tensor)."""
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    w = as_matrix(weight)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    if float(s.max()) <= radius:
        return weight
    return ((u * s.clamp(max=radius)) @ vh).reshape(weight.shape)


def conv_operator_norm(
    conv: nn.Module,
    input_shape: Sequence[int],
    *,
    iters: int = 300,
    tol: float = 1e-9,
    start: Tensor | None = None,
    weight: Tensor | None = None,
) -> tuple[float, Tensor]:
    """The operator norm of a convolution (without its bias) on inputs of ``input_shape``
    ``(Cin, *spatial)``, by power iteration on ``AᵀA`` (``A`` by the convolution itself,
    ``Aᵀ`` by ``torch.func.vjp``; :func:`robustreg.func.power_steps`): stops when the estimate
    ``σ² = ⟨v, AᵀA v⟩`` changes by at most ``tol`` (relative) or after ``iters`` products.
    ``start`` warm-starts it (e.g. the vector it returned last time); ``weight`` replaces the
    module's weight.

    Returns ``(σ_max, v)`` with ``v`` the (unit) top right-singular vector, shaped like an input.
    """
    if not isinstance(conv, _CONV):
        raise TypeError(f"conv must be an nn.Conv1d/2d/3d, got {type(conv).__name__}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    w = (conv.weight if weight is None else weight).detach()
    dims = w.dim() - 2
    if len(input_shape) != dims + 1:
        raise ValueError(f"input_shape must be (Cin, {dims} spatial sizes), got {tuple(input_shape)}")

    def apply(t: Tensor) -> Tensor:
        return conv._conv_forward(t, w, None)  # the module's own padding (any mode), without bias

    gen = torch.Generator(device="cpu").manual_seed(0)
    if start is not None and start.numel() != math.prod(input_shape):
        start = None  # a warm start for another input size
    v = start if start is not None else torch.randn(1, *input_shape, generator=gen).to(w)

    def gram(u: Tensor) -> Tensor:  # AᵀA u
        out, pullback = vjp(apply, u)
        return pullback(out)[0]

    v, _ = power_steps(gram, v.reshape(1, *input_shape) / v.norm(), iters=iters, tol=tol)
    sigma = float(apply(v).norm())  # ‖A v‖ for the final unit v: a lower bound that converges
    return sigma, v[0]


def conv_circular_norm(conv: nn.Module, input_shape: Sequence[int], *, weight: Tensor | None = None) -> float:
    """An upper bound of a convolution's operator norm (without bias) on inputs of
    ``input_shape`` ``(Cin, *spatial)``: the exact norm of the *circular* convolution with the
    same kernel on the zero-padded grid, ``max_ω ‖K̂(ω)‖₂`` over the grid's frequencies
    (Sedghi, Gupta, Long, ICLR 2019), by one FFT of the kernel and a batched SVD.

    The convolution with zero padding maps x to a restriction of the circular convolution of
    x embedded in the padded grid (an isometry), and a stride keeps a subset of its outputs,
    so its norm is at most this bound; it is exact for circular padding and stride 1."""
    if not isinstance(conv, _CONV):
        raise TypeError(f"conv must be an nn.Conv1d/2d/3d, got {type(conv).__name__}")
    if conv.padding_mode != "zeros":
        raise ValueError(f"conv_circular_norm bounds zero-padded convolutions; got padding_mode={conv.padding_mode!r}")
    w = (conv.weight if weight is None else weight).detach()
    dims = w.dim() - 2
    if len(input_shape) != dims + 1:
        raise ValueError(f"input_shape must be (Cin, {dims} spatial sizes), got {tuple(input_shape)}")
    if isinstance(conv.padding, str):
        pads = [0] * dims if conv.padding == "valid" else [conv.dilation[i] * (w.shape[2 + i] - 1) for i in range(dims)]
    else:
        pads = [2 * p for p in conv.padding]
    grid = [input_shape[1 + i] + pads[i] for i in range(dims)]
    grid = [max(g, conv.dilation[i] * (w.shape[2 + i] - 1) + 1) for i, g in enumerate(grid)]
    groups, cout = conv.groups, w.shape[0]
    if groups > 1:  # the dense (Cout, Cin) kernel, block-diagonal over the groups
        cin_g, cout_g = w.shape[1], cout // groups
        dense = w.new_zeros(cout, cin_g * groups, *w.shape[2:])
        for g in range(groups):
            dense[g * cout_g : (g + 1) * cout_g, g * cin_g : (g + 1) * cin_g] = w[g * cout_g : (g + 1) * cout_g]
        w = dense
    placed = w.new_zeros(*w.shape[:2], *grid)  # the kernel's taps at their dilated offsets
    index = (
        slice(None),
        slice(None),
        *(slice(0, conv.dilation[i] * (w.shape[2 + i] - 1) + 1, conv.dilation[i]) for i in range(dims)),
    )
    placed[index] = w
    spectrum = torch.fft.fftn(placed, dim=tuple(range(2, 2 + dims)))  # (Cout, Cin, *grid)
    per_frequency = spectrum.permute(*range(2, 2 + dims), 0, 1).reshape(-1, *w.shape[:2])
    return float(torch.linalg.matrix_norm(per_frequency, ord=2).max())


class AntisymmetricLinear(nn.Module):
    """``x ↦ (W − Wᵀ − γI) x + b``: the eigenvalues of ``W − Wᵀ`` are imaginary, so every
    eigenvalue of the map has real part ``−γ`` (γ ≥ 0), whatever W is."""

    def __init__(self, features: int, gamma: float = 0.01, bias: bool = True) -> None:
        super().__init__()
        if features < 1:
            raise ValueError(f"features must be >= 1, got {features}")
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.features, self.gamma = features, float(gamma)
        self.weight = nn.Parameter(torch.empty(features, features))
        self.bias = nn.Parameter(torch.zeros(features)) if bias else None
        nn.init.normal_(self.weight, std=features**-0.5)

    def matrix(self) -> Tensor:
        """The effective matrix ``W − Wᵀ − γI``."""
        eye = torch.eye(self.features, dtype=self.weight.dtype, device=self.weight.device)
        return self.weight - self.weight.t() - self.gamma * eye

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.matrix(), self.bias)

    def extra_repr(self) -> str:
        return f"features={self.features}, gamma={self.gamma}, bias={self.bias is not None}"


class ResidualODEBlock(nn.Module):
    """One forward-Euler step of the stable ODE ``ẋ = σ(A x + b)``: ``x + h·σ(Ax + b)`` with
    ``A = W − Wᵀ − γI`` (:class:`AntisymmetricLinear`) and σ = tanh by default."""

    def __init__(self, features: int, *, h: float = 0.1, gamma: float = 0.01, activation: nn.Module | None = None):
        super().__init__()
        if not h > 0:
            raise ValueError(f"h must be > 0, got {h}")
        self.h = float(h)
        self.linear = AntisymmetricLinear(features, gamma)
        self.activation = nn.Tanh() if activation is None else activation

    def forward(self, x: Tensor) -> Tensor:
        return x + self.h * self.activation(self.linear(x))
