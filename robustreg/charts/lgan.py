"""The Localized GAN chart (Qi, Wang, Zhang et al., "Global versus Localized Generative
Adversarial Nets", CVPR 2018): a generator ``G(x, z)`` that is a chart of the data manifold
around each point x, used by :class:`robustreg.TNAR` through ``at``.

**Local chart.** ``at(x)`` returns ``(0, z ↦ G(x, z))``: x has the coordinates ``z = 0`` on its
own chart and its neighbourhood on the manifold is ``{G(x, z)}``, so the tangent space at x is
the span of the columns of ``J_x = ∂G(x, z)/∂z`` at ``z = 0``. TNAR perturbs along ``J_x η``
(tangent) and orthogonally to it (normal).

**Objective.** With ``z ~ N(0, σ²I)`` and D a discriminator returning logits,

- discriminator: ``min_D  E_x[−log sigmoid(D(x))] + E_{x,z}[−log(1 − sigmoid(D(G(x, z))))]``;
- generator: ``min_G  E_{x,z}[−log sigmoid(D(G(x, z)))]``  (the non-saturating GAN loss)
  ``+ λ_loc · E_x ‖G(x, 0) − x‖₂²``  (locality: x lies on its own chart, ``G(x, 0) = x``)
  ``+ λ_orth · E_x ‖J_xᵀJ_x − I‖_F²``  (orthonormality: the tangent basis neither collapses nor
  degenerates, so ``‖J_x η‖₂ = ‖η‖₂``).

``J_x`` is computed matrix-free per sample: a ``torch.func.vmap`` over the ``latent`` basis
vectors of a forward-mode ``jvp`` in z, which stays differentiable in the generator's
parameters (forward-over-reverse), so the orthonormality term is trained like any loss.

Usage::

    lgan = LocalizedGAN((1, 28, 28), latent=10)
    history = train_lgan(lgan, images, epochs=5)     # images (N, 1, 28, 28) in [0, 1]
    reg = robustreg.TNAR(model, lgan, eps_tangent=..., eps_normal=..., cg_iters=10)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jvp, vmap

from .. import _checks
from .base import save_chart_file
from .learned import conv_geometry, downsampler
from .linearize import Linearization, sigmoid_stack

log = logging.getLogger(__name__)


class LocalizedGAN(nn.Module):
    """A Localized GAN: generator ``G(x, z)`` (:meth:`forward`) and discriminator ``D(x)``.

    Generator: ``x (C, H, W) → conv 4×4/2 (width) → conv 4×4/2 (2·width) = h(x)``, then z enters
    by FiLM, ``h ⊙ (1 + γ(z)) + β(z)`` with γ, β linear maps to the feature grid (so ``J_x``
    depends on x through h(x)), then two transposed convs and a sigmoid: images in [0, 1].
    Discriminator (``self.discriminator``): two strided convs with leaky ReLU and a linear logit.
    No BatchNorm, so ``torch.func`` transforms and train/eval modes behave the same.

    ``at(x)`` is the local chart at x for :class:`robustreg.TNAR`; ``tangents(x)`` the columns of
    ``J_x``; ``locality_error(x)`` and ``orthonormality_error(x)`` the per-sample penalties.
    """

    kind = "lgan"

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), latent: int = 10, width: int = 32) -> None:
        super().__init__()
        c, flat = conv_geometry(self, image_shape, latent, width)
        self.encoder = downsampler(c, width)
        self.scale = nn.Linear(latent, flat)  # γ(z)
        self.shift = nn.Linear(latent, flat)  # β(z)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(width, c, 4, 2, 1)
        )
        self.discriminator = nn.Sequential(
            nn.Conv2d(c, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(flat, 1),
        )

    def generator_parameters(self) -> list[nn.Parameter]:
        """Every parameter of G (all but the discriminator's)."""
        return [p for name, p in self.named_parameters() if not name.startswith("discriminator.")]

    def _generate(self, h: Tensor, z: Tensor) -> Tensor:  # h (B, 2w, H/4, W/4), z (B, latent) -> (B, C, H, W)
        gamma, beta = self.scale(z).view(-1, *self._grid), self.shift(z).view(-1, *self._grid)
        return torch.sigmoid(self.decoder(h * (1 + gamma) + beta))

    def _tangents(self, h: Tensor) -> Tensor:  # -> (B, latent, C, H, W), column k = ∂G/∂z_k at z = 0
        z0 = h.new_zeros(h.shape[0], self.latent)
        basis = torch.eye(self.latent, dtype=h.dtype, device=h.device)  # (latent, latent)
        cols = vmap(lambda e: jvp(lambda z: self._generate(h, z), (z0,), (e.expand_as(z0),))[1])(basis)
        return cols.transpose(0, 1)  # (latent, B, ...) -> (B, latent, ...)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:  # x (B, C, H, W), z (B, latent) -> G(x, z) (B, C, H, W)
        return self._generate(self.encoder(x), z)

    def discriminate(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> logits (B,)
        return self.discriminator(x).squeeze(1)

    def at(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """The local chart at the batch x: ``(zeros (B, latent), z ↦ G(x, z))`` with x detached
        (its features are computed once, here)."""
        h = self.encoder(x.detach())
        if type(self)._generate is not LocalizedGAN._generate:  # a subclass's generator: no linearize
            return x.new_zeros(x.shape[0], self.latent), lambda z: self._generate(h, z)
        return x.new_zeros(x.shape[0], self.latent), _LocalDecoder(self, h)

    def tangents(self, x: Tensor) -> Tensor:
        """``J_x`` per sample as ``(B, latent, C, H, W)``: column k is ``∂G(x, z)/∂z_k`` at z = 0."""
        return self._tangents(self.encoder(x))

    def locality_error(self, x: Tensor) -> Tensor:
        """``‖G(x, 0) − x‖₂²`` per sample, ``(B,)``."""
        return _locality(self._generate(self.encoder(x), x.new_zeros(x.shape[0], self.latent)), x)

    def orthonormality_error(self, x: Tensor) -> Tensor:
        """``‖J_xᵀJ_x − I‖_F²`` per sample, ``(B,)``."""
        return _orthonormality(self.tangents(x))

    def save(self, path: str | Path) -> None:
        """Deprecated: ``robustreg.checkpoint.save_model(chart, directory)`` (see :func:`save_chart_file`)."""
        save_chart_file(self, path)


class _LocalDecoder:
    """``z ↦ G(x, z)`` for a fixed batch x (its features ``h`` computed once), with the exact
    Jacobian products of :meth:`linearize`."""

    def __init__(self, lgan: LocalizedGAN, h: Tensor) -> None:
        self.lgan, self.h = lgan, h

    def __call__(self, z: Tensor) -> Tensor:  # (B, latent) -> (B, C, H, W)
        return self.lgan._generate(self.h, z)

    def linearize(self, z: Tensor) -> Linearization:
        """``G(x, z)`` with ``v ↦ Jv`` and ``u ↦ Jᵀu`` for ``J = ∂G(x, z)/∂z``: the FiLM input
        ``h ⊙ (1 + γ(z)) + β(z)`` moves by ``h ⊙ W_γv + W_βv``, then the decoder's products
        (:func:`robustreg.charts.linearize.sigmoid_stack`). Not differentiable in the weights."""
        g, h, grid = self.lgan, self.h, self.lgan._grid
        w_scale, w_shift = g.scale.weight, g.shift.weight  # (flat, latent)
        with torch.no_grad():
            head = sigmoid_stack(g.decoder, h * (1 + g.scale(z).view(-1, *grid)) + g.shift(z).view(-1, *grid))

        @torch.no_grad()
        def jvp(v: Tensor) -> Tensor:
            return head.jvp(h * (v @ w_scale.t()).view(-1, *grid) + (v @ w_shift.t()).view(-1, *grid))

        @torch.no_grad()
        def vjp(u: Tensor) -> Tensor:
            c = head.vjp(u)
            return (h * c).flatten(1) @ w_scale + c.flatten(1) @ w_shift

        return Linearization(head.point, jvp, vjp)


def _locality(x0: Tensor, x: Tensor) -> Tensor:  # (B,)
    return (x0 - x).flatten(1).pow(2).sum(1)


def _orthonormality(cols: Tensor) -> Tensor:  # cols (B, latent, ...) -> (B,)
    j = cols.flatten(2)  # (B, latent, P): the rows are the columns of J_x
    gram = j @ j.transpose(1, 2)  # (B, latent, latent) = J_xᵀJ_x
    eye = torch.eye(j.shape[1], dtype=j.dtype, device=j.device)
    return (gram - eye).pow(2).sum((1, 2))


def lgan_optimizers(lgan: LocalizedGAN, lr: float) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam (β = (0.5, 0.999)) for the generator's and for the discriminator's parameters."""
    opt_g = torch.optim.Adam(lgan.generator_parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(lgan.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
    return opt_g, opt_d


def lgan_step(
    lgan: LocalizedGAN,
    x: Tensor,
    z: Tensor,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    locality: float,
    orthonormality: float,
    jacobian_batch: int | None = None,
    sync: Callable[[list[Tensor]], None] | None = None,
) -> dict[str, Tensor]:
    """One step of :func:`train_lgan` on images ``x`` ``(B, C, H, W)`` with draws ``z`` ``(B, latent)``:
    an Adam step of D, then one of G. ``sync(params)``, if given, runs after each backward on the
    parameters about to step (e.g. averaging gradients over processes). Returns the detached
    ``d``, ``gan``, ``locality``, ``orthonormality`` and ``loss`` (G's weighted total)."""
    g_params = [p for group in opt_g.param_groups for p in group["params"]]
    d_params = [p for group in opt_d.param_groups for p in group["params"]]
    h = lgan.encoder(x)
    fake = lgan._generate(h, z)

    d_loss = F.softplus(-lgan.discriminate(x)).mean() + F.softplus(lgan.discriminate(fake.detach())).mean()
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward(inputs=d_params)
    if sync is not None:
        sync(d_params)
    opt_d.step()

    gan = F.softplus(-lgan.discriminate(fake)).mean()  # −log sigmoid(D(G(x, z))), non-saturating
    loc = _locality(lgan._generate(h, torch.zeros_like(z)), x).mean()
    ortho = _orthonormality(lgan._tangents(h[:jacobian_batch])).mean()
    loss = gan + locality * loc + orthonormality * ortho
    opt_g.zero_grad(set_to_none=True)
    loss.backward(inputs=g_params)
    if sync is not None:
        sync(g_params)
    opt_g.step()
    values = (d_loss, gan, loc, ortho, loss)
    return {k: v.detach() for k, v in zip(("d", "gan", "locality", "orthonormality", "loss"), values, strict=True)}


def train_lgan(
    lgan: LocalizedGAN,
    images: Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 2e-4,
    sigma: float = 1.0,
    locality: float = 10.0,
    orthonormality: float = 10.0,
    jacobian_batch: int | None = None,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Train ``lgan`` on ``images`` ``(N, *lgan.image_shape)`` in [0, 1] by the module's objective
    (alternating one Adam step of D and one of G per batch, Adam β = (0.5, 0.999)).

    Args:
        epochs, batch_size, lr: passes over the shuffled images, batch size, Adam's step size.
        sigma: σ of ``z ~ N(0, σ²I)`` in the GAN game.
        locality: λ_loc of ``‖G(x, 0) − x‖₂²`` (summed over pixels). The discriminator pulls
            ``G(x, 0)`` off x too (it judges ``G(x, z)`` for small z), so this term must dominate:
            10 (8×8 test images, 60 steps: mean ‖G(x, 0) − x‖₂ 0.27, against 0.69 with 1).
        orthonormality: λ_orth of ``‖J_xᵀJ_x − I‖_F²``, a sum of ``latent²`` entries of order ≤ 1
            against a locality term summed over pixels; 10 keeps it from being swamped
            (FashionMNIST, 400 steps, λ_loc = 1: error 0.31, against 0.87 with λ_orth = 1).
        jacobian_batch: compute the orthonormality term on the first ``jacobian_batch`` samples of
            each shuffled batch, an unbiased estimate; the term costs about ``latent`` extra
            forward-backward passes per sample (16 of 64 makes a FashionMNIST step ≈ 2.5×
            cheaper). None uses the whole batch.
        seed: seeds the shuffling and the draws of z.

    Returns the per-epoch means of ``d`` (discriminator loss), ``gan`` (generator GAN loss),
    ``locality``, ``orthonormality`` (unweighted, per sample) and ``loss`` (G's weighted total).
    Leaves the module in eval mode.
    """
    if not isinstance(lgan, LocalizedGAN):
        raise TypeError(f"lgan must be a LocalizedGAN, got {type(lgan).__name__}")
    _checks.count("epochs", epochs, minimum=1)
    _checks.count("batch_size", batch_size, minimum=1)
    if _checks.nonneg_float("lr", lr) == 0:
        raise ValueError("lr must be > 0, got 0")
    sigma = _checks.nonneg_float("sigma", sigma)
    locality = _checks.nonneg_float("locality", locality)
    orthonormality = _checks.nonneg_float("orthonormality", orthonormality)
    if jacobian_batch is not None:
        _checks.count("jacobian_batch", jacobian_batch, minimum=1)
    _checks.count("seed", seed)
    _checks.check_x(images, (0.0, 1.0), name="images")
    if tuple(images.shape[1:]) != tuple(lgan.image_shape):
        raise ValueError(f"images must be (N, *{lgan.image_shape}), got {tuple(images.shape)}")

    gen = torch.Generator().manual_seed(seed)
    opt_g, opt_d = lgan_optimizers(lgan, lr)
    keys = ("d", "gan", "locality", "orthonormality", "loss")
    lgan.train()
    history = []
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        totals = dict.fromkeys(keys, 0.0)
        for i in range(0, len(order), batch_size):
            x = images[order[i : i + batch_size]]  # (B, C, H, W)
            z = sigma * torch.randn(len(x), lgan.latent, generator=gen).to(x)  # (B, latent)
            values = lgan_step(lgan, x, z, opt_g, opt_d, locality, orthonormality, jacobian_batch)
            for key in keys:
                totals[key] += float(values[key]) * len(x)
        history.append({key: total / len(images) for key, total in totals.items()})
        log.info("lgan epoch %d: %s", epoch + 1, history[-1])
    lgan.eval()
    return history
