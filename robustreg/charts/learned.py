"""Learned charts: a convolutional VAE (z = the encoder's mean) and a plain convolutional
autoencoder for images, a fully connected autoencoder for vectors, with one training function
and a safe save/load (tensors and a small config, read back with
``torch.load(weights_only=True)``: no arbitrary objects are unpickled)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from .base import save_chart_file
from .linearize import Linearization, sigmoid_stack


def _check_shape(image_shape: Sequence[int], latent: int, width: int) -> tuple[int, int, int]:
    if len(image_shape) != 3 or any(int(s) < 1 for s in image_shape):
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    c, h, w = (int(s) for s in image_shape)
    if h % 4 or w % 4:
        raise ValueError(f"image height and width must be multiples of 4, got {h}×{w}")
    _checks.count("latent", latent, minimum=1)
    _checks.count("width", width, minimum=1)
    return c, h, w


def conv_geometry(chart: nn.Module, image_shape: Sequence[int], latent: int, width: int) -> tuple[int, int]:
    """Check the arguments of a convolutional chart and set its ``config``, ``image_shape``,
    ``latent`` and ``_grid`` (the feature grid after two stride-2 convolutions); returns the
    channel count C and the grid's size."""
    c, h, w = _check_shape(image_shape, latent, width)
    chart.config = {"image_shape": [c, h, w], "latent": int(latent), "width": int(width)}
    chart.image_shape, chart.latent = (c, h, w), int(latent)
    chart._grid = (2 * width, h // 4, w // 4)
    return c, math.prod(chart._grid)


def downsampler(c: int, width: int) -> nn.Sequential:
    """``(C, H, W) → conv 4×4/2 (width) → ReLU → conv 4×4/2 (2·width) → ReLU``."""
    return nn.Sequential(nn.Conv2d(c, width, 4, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 4, 2, 1), nn.ReLU())


class _ConvChart(nn.Module):
    """Encoder ``(C, H, W) → conv 4×4/2 (width) → conv 4×4/2 (2·width) → fc`` and the mirrored
    decoder ``fc → transposed convs → sigmoid``: images in [0, 1]."""

    kind = "conv"

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), latent: int = 20, width: int = 32) -> None:
        super().__init__()
        c, flat = conv_geometry(self, image_shape, latent, width)
        self.features = nn.Sequential(*downsampler(c, width), nn.Flatten())
        self.head = nn.Linear(flat, self._head_size())
        self.expand = nn.Linear(latent, flat)
        self.generate = nn.Sequential(
            nn.ReLU(), nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(width, c, 4, 2, 1)
        )

    def _head_size(self) -> int:
        return self.latent

    def encode(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, latent)
        return self.head(self.features(x))[:, : self.latent]

    def decode(self, z: Tensor) -> Tensor:  # (B, latent) -> (B, C, H, W)
        h = self.expand(z).view(-1, *self._grid)
        return torch.sigmoid(self.generate(h))

    def linearize(self, z: Tensor) -> Linearization:
        """``decode(z)`` with the exact products ``v ↦ Jv`` and ``u ↦ Jᵀu`` of ``J = ∂decode/∂z``
        at z, written out layer by layer (:mod:`robustreg.charts.linearize`); what
        :class:`robustreg.TNAR` uses for this chart. Not differentiable in the chart's weights."""
        w = self.expand.weight  # (flat, latent)
        with torch.no_grad():
            head = sigmoid_stack(self.generate, self.expand(z).view(-1, *self._grid))

        @torch.no_grad()
        def jvp(v: Tensor) -> Tensor:  # (B, latent) -> (B, C, H, W)
            return head.jvp((v @ w.t()).view(-1, *self._grid))

        @torch.no_grad()
        def vjp(u: Tensor) -> Tensor:  # (B, C, H, W) -> (B, latent)
            return head.vjp(u).flatten(1) @ w

        return Linearization(head.point, jvp, vjp)

    def loss(self, x: Tensor) -> Tensor:
        """Reconstruction loss: binary cross-entropy summed over pixels, batch mean."""
        recon = self.decode(self.encode(x))
        return F.binary_cross_entropy(recon, x, reduction="sum") / x.shape[0]

    def save(self, path: str | Path) -> None:
        """Deprecated: ``robustreg.checkpoint.save_model(chart, directory)`` (see :func:`save_chart_file`)."""
        save_chart_file(self, path)


class AutoEncoder(_ConvChart):
    """A deterministic convolutional autoencoder chart: ``encode`` the code, ``decode`` the image."""

    kind = "ae"


class VAE(_ConvChart):
    """A convolutional VAE chart (Kingma and Welling): ``encode(x)`` is the posterior mean
    ``μ(x)``, ``decode(z)`` the Bernoulli mean; trained on the ELBO (:meth:`loss`), its KL term
    weighted by ``kl_weight`` (1: the ELBO; TNAR's official VAE uses 0.5)."""

    kind = "vae"

    def __init__(
        self, image_shape: Sequence[int] = (1, 28, 28), latent: int = 20, width: int = 32, kl_weight: float = 1.0
    ) -> None:
        super().__init__(image_shape, latent, width)
        self.kl_weight = _checks.nonneg_float("kl_weight", kl_weight)
        if self.kl_weight != 1.0:  # saved with the chart; older configs (no key) load as 1
            self.config["kl_weight"] = self.kl_weight

    def _head_size(self) -> int:
        return 2 * self.latent  # mean and log-variance

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.head(self.features(x))
        return out[:, : self.latent], out[:, self.latent :]

    def loss(self, x: Tensor) -> Tensor:
        """The negative ELBO, batch mean: Bernoulli reconstruction + ``kl_weight`` · KL(q(z|x) ‖ N(0, I))."""
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = F.binary_cross_entropy(self.decode(z), x, reduction="sum")
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
        return (recon + self.kl_weight * kl) / x.shape[0]


class MLPAutoEncoder(nn.Module):
    """A fully connected autoencoder chart for data of any shape (vectors, small images):
    ``flatten → [Linear, tanh] × depth → Linear(latent)`` and the mirror image back; trained on
    the squared reconstruction error. Smooth (tanh) so that its Jacobian, the tangent space,
    varies smoothly along the data.

    ``circular=True`` makes every latent coordinate an angle (the circular units of Kirby and
    Miranda, 1996, and of Scholz's circular PCA, 2007): the encoder's last layer gives a pair
    ``(a, b)`` per coordinate and ``z = atan2(b, a)``; the decoder reads ``(cos z, sin z)``. The
    decoder is then 2π-periodic in each z: a closed curve of the data (a ring, a rotation, a
    phase) gets a chart with no seam, where a real-valued code must cut it somewhere and has a
    wrong or vanishing tangent ``∂decode/∂z`` at the cut."""

    kind = "mlp-ae"

    def __init__(
        self, shape: Sequence[int], latent: int, hidden: int = 128, depth: int = 2, *, circular: bool = False
    ) -> None:
        super().__init__()
        if len(shape) < 1 or any(int(s) < 1 for s in shape):
            raise ValueError(f"shape must be the shape of one sample, got {tuple(shape)}")
        _checks.count("latent", latent, minimum=1)
        _checks.count("hidden", hidden, minimum=1)
        _checks.count("depth", depth, minimum=1)
        self.config = {"shape": [int(s) for s in shape], "latent": int(latent), "hidden": int(hidden)}
        self.config["depth"] = int(depth)
        self.config["circular"] = bool(circular)
        self.image_shape, self.latent, self.circular = tuple(int(s) for s in shape), int(latent), bool(circular)
        code = 2 * self.latent if self.circular else self.latent  # (cos z, sin z) per angle
        dim = math.prod(self.image_shape)

        def mlp(sizes: list[int]) -> nn.Sequential:
            layers: list[nn.Module] = []
            for a, b in itertools.pairwise(sizes[:-1]):
                layers += [nn.Linear(a, b), nn.Tanh()]
            return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))

        self.encoder = mlp([dim] + [hidden] * depth + [code])
        self.decoder = mlp([code] + [hidden] * depth + [dim])

    def encode(self, x: Tensor) -> Tensor:  # (B, *shape) -> (B, latent)
        h = self.encoder(x.flatten(1))
        if self.circular:
            h = h.unflatten(1, (self.latent, 2))  # (B, latent, 2)
            return torch.atan2(h[..., 1], h[..., 0])
        return h

    def decode(self, z: Tensor) -> Tensor:  # (B, latent) -> (B, *shape)
        if self.circular:
            z = torch.cat([z.cos(), z.sin()], dim=1)  # (B, 2·latent)
        return self.decoder(z).view(-1, *self.image_shape)

    def loss(self, x: Tensor) -> Tensor:
        """Squared reconstruction error summed over features, batch mean."""
        return (self.decode(self.encode(x)) - x).pow(2).flatten(1).sum(1).mean()

    def save(self, path: str | Path) -> None:
        """Deprecated: ``robustreg.checkpoint.save_model(chart, directory)`` (see :func:`save_chart_file`)."""
        save_chart_file(self, path)


def train_chart(
    chart: nn.Module, images: Tensor, *, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3, seed: int = 0
) -> list[float]:
    """Fit ``chart`` (:class:`VAE`, :class:`AutoEncoder`, :class:`MLPAutoEncoder`) to ``images``
    ``(N, *chart.image_shape)`` (in [0, 1] for the convolutional charts) with Adam on its
    ``loss``; returns the mean loss of every epoch. Leaves the chart in eval mode."""
    _checks.count("epochs", epochs, minimum=1)
    _checks.count("batch_size", batch_size, minimum=1)
    if tuple(images.shape[1:]) != tuple(chart.image_shape):
        raise ValueError(f"images must be (N, *{chart.image_shape}), got {tuple(images.shape)}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(chart.parameters(), lr=lr)
    chart.train()
    history = []
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        total = 0.0
        for i in range(0, len(order), batch_size):
            x = images[order[i : i + batch_size]]
            loss = chart.loss(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
        history.append(total / len(images))
    chart.eval()
    return history
