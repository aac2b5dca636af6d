"""Oracle charts of known manifolds: an affine subspace, and the two rings of
:func:`robustreg.data.rings_ssl`."""

from __future__ import annotations

import torch
from torch import Tensor


class LinearChart:
    """The affine subspace ``{Az + b}``: ``decode(z) = Az + b``, ``encode`` the least-squares
    coordinates of x. Its tangent space is span(A) everywhere."""

    def __init__(self, a: Tensor, b: Tensor) -> None:
        if a.dim() != 2 or b.shape != a.shape[:1]:
            raise ValueError(f"a must be (dim, k) and b (dim,), got {tuple(a.shape)} and {tuple(b.shape)}")
        self.a, self.b = a, b

    def encode(self, x: Tensor) -> Tensor:  # (B, dim) -> (B, k)
        return torch.linalg.lstsq(self.a, (x - self.b).t()).solution.t()

    def decode(self, z: Tensor) -> Tensor:  # (B, k) -> (B, dim)
        return z @ self.a.t() + self.b


class RingsChart:
    """The angle parametrisation of two concentric rings embedded by an orthonormal ``(dim, 2)``
    map E: ``z = (θ, k)`` with k the index of the nearest ring, ``decode(z) = E·r_k(cos θ, sin θ)``.
    The ring index enters ``decode`` rounded, so the tangent space is the ring's direction only
    (``∂decode/∂k = 0``)."""

    def __init__(self, embedding: Tensor, radii: tuple[float, float]) -> None:
        if embedding.dim() != 2 or embedding.shape[1] != 2:
            raise ValueError(f"embedding must be (dim, 2), got {tuple(embedding.shape)}")
        self.embedding, self.radii = embedding, tuple(float(r) for r in radii)

    def encode(self, x: Tensor) -> Tensor:  # (B, dim) -> (B, 2)
        plane = x @ self.embedding.to(x)  # (B, 2)
        theta = torch.atan2(plane[:, 1], plane[:, 0])
        r = plane.norm(dim=1)
        k = ((r - self.radii[0]).abs() > (r - self.radii[1]).abs()).to(x.dtype)
        return torch.stack([theta, k], dim=1)

    def decode(self, z: Tensor) -> Tensor:  # (B, 2) -> (B, dim)
        theta, k = z[:, 0], z[:, 1].detach().round().clamp(0, 1)
        radius = self.radii[0] + (self.radii[1] - self.radii[0]) * k
        plane = torch.stack([radius * theta.cos(), radius * theta.sin()], dim=1)
        return plane @ self.embedding.to(z).t()
