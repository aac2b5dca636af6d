"""Learned charts of image manifolds: a convolutional VAE (z = the encoder's mean) and a plain
autoencoder, each with its training function and a safe save/load (tensors and a small config,
read back with ``torch.load(weights_only=True)``: no arbitrary objects are unpickled)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks


def _check_shape(image_shape: Sequence[int], latent: int, width: int) -> tuple[int, int, int]:
    if len(image_shape) != 3 or any(int(s) < 1 for s in image_shape):
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    c, h, w = (int(s) for s in image_shape)
    if h % 4 or w % 4:
        raise ValueError(f"image height and width must be multiples of 4, got {h}×{w}")
    _checks.count("latent", latent, minimum=1)
    _checks.count("width", width, minimum=1)
    return c, h, w


class _ConvChart(nn.Module):
    """Encoder ``(C, H, W) → conv 4×4/2 (width) → conv 4×4/2 (2·width) → fc`` and the mirrored
    decoder ``fc → transposed convs → sigmoid``: images in [0, 1]."""

    kind = "conv"

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), latent: int = 20, width: int = 32) -> None:
        super().__init__()
        c, h, w = _check_shape(image_shape, latent, width)
        self.config = {"image_shape": [c, h, w], "latent": int(latent), "width": int(width)}
        self.image_shape, self.latent = (c, h, w), int(latent)
        self._grid = (2 * width, h // 4, w // 4)
        flat = math.prod(self._grid)
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 4, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 4, 2, 1), nn.ReLU(), nn.Flatten()
        )
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

    def loss(self, x: Tensor) -> Tensor:
        """Reconstruction loss: binary cross-entropy summed over pixels, batch mean."""
        recon = self.decode(self.encode(x))
        return F.binary_cross_entropy(recon, x, reduction="sum") / x.shape[0]

    def save(self, path: str | Path) -> None:
        torch.save({"kind": self.kind, "config": self.config, "state": self.state_dict()}, path)


class AutoEncoder(_ConvChart):
    """A deterministic convolutional autoencoder chart: ``encode`` the code, ``decode`` the image."""

    kind = "ae"


class VAE(_ConvChart):
    """A convolutional VAE chart (Kingma and Welling): ``encode(x)`` is the posterior mean
    ``μ(x)``, ``decode(z)`` the Bernoulli mean; trained on the ELBO (:meth:`loss`)."""

    kind = "vae"

    def _head_size(self) -> int:
        return 2 * self.latent  # mean and log-variance

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.head(self.features(x))
        return out[:, : self.latent], out[:, self.latent :]

    def loss(self, x: Tensor) -> Tensor:
        """The negative ELBO, batch mean: Bernoulli reconstruction + KL(q(z|x) ‖ N(0, I))."""
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = F.binary_cross_entropy(self.decode(z), x, reduction="sum")
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
        return (recon + kl) / x.shape[0]


_KINDS = {"ae": AutoEncoder, "vae": VAE}


def load_chart(path: str | Path, map_location: str | torch.device = "cpu") -> _ConvChart:
    """A chart saved by ``chart.save(path)``, rebuilt from its config (``weights_only`` load)."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(blob, dict) or blob.get("kind") not in _KINDS:
        raise ValueError(f"{path} is not a robustreg chart file")
    chart = _KINDS[blob["kind"]](**blob["config"])
    chart.load_state_dict(blob["state"])
    return chart.eval()


def train_chart(
    chart: _ConvChart, images: Tensor, *, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3, seed: int = 0
) -> list[float]:
    """Fit ``chart`` to ``images`` (N, C, H, W) in [0, 1] with Adam on :meth:`loss`; returns the
    mean loss of every epoch. Leaves the chart in eval mode."""
    _checks.count("epochs", epochs, minimum=1)
    _checks.count("batch_size", batch_size, minimum=1)
    if images.dim() != 4 or tuple(images.shape[1:]) != chart.image_shape:
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
