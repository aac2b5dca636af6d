"""Plots of the recipes and benchmarks: two-rings decision regions, rows of images, and the TNAR
perturbation grid (the TNAR paper's Fig. 4). matplotlib draws them off-screen (Agg)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from .data import RingsSSL


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def decision_regions(models: dict[str, nn.Module], data: RingsSSL, path: Path) -> Path:
    """Each model's predicted class over the plane of the rings (``[-2, 2]²``, embedded as the data
    is), the unlabeled points coloured by their true ring and the labeled points circled."""
    plt = _pyplot()
    grid = torch.linspace(-2.0, 2.0, 200)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    plane = torch.stack([gx.flatten(), gy.flatten()], 1)  # (40000, 2)
    cols = min(len(models), 4)
    rows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(models) :]:
        ax.axis("off")
    u, lab = data.x_unlabeled @ data.embedding, data.x_labeled @ data.embedding  # (N, 2)
    for ax, (name, model) in zip(axes.flat, models.items(), strict=False):
        device = next(model.parameters()).device
        with torch.no_grad():
            pred = model(plane.to(device) @ data.embedding.t().to(device)).argmax(1).cpu().reshape(gx.shape)
        ax.contourf(gx, gy, pred, levels=[-0.5, 0.5, 1.5], colors=["#cfe0f3", "#f6d5c5"])
        ax.scatter(u[:, 0], u[:, 1], s=1, c=data.y_unlabeled, cmap="coolwarm", alpha=0.4)
        ax.scatter(lab[:, 0], lab[:, 1], s=60, c=data.y_labeled, cmap="coolwarm", edgecolors="black")
        ax.set_title(name, fontsize=10)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def perturbation_grid(x: Tensor, r_tangent: Tensor, r_normal: Tensor, path: Path, title: str) -> Path:
    """Rows: images x, x + r_tangent, x + r_normal (clipped to [0, 1]) and the two perturbations."""
    rows = [
        ("x", x),
        ("x + r_tangent", (x + r_tangent).clamp(0, 1)),
        ("x + r_normal", (x + r_normal).clamp(0, 1)),
        ("r_tangent", r_tangent),
        ("r_normal", r_normal),
    ]
    return image_rows(rows, path, title)


def image_rows(rows: list[tuple[str, Tensor]], path: Path, title: str) -> Path:
    """One row of images ``(n, C, H, W)`` per ``(name, images)``. Rows named ``r_…`` are signed
    perturbations: a symmetric colour scale per image (grey-scale) or rescaled to [0, 1] (colour);
    the others are images in [0, 1]."""
    plt = _pyplot()
    n = rows[0][1].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)), squeeze=False)
    for i, (name, imgs) in enumerate(rows):
        imgs = imgs.detach().float().cpu()
        for j in range(n):
            ax, img = axes[i, j], imgs[j]  # (C, H, W)
            if img.shape[0] == 1:
                if name.startswith("r_"):
                    bound = float(img.abs().max().clamp_min(1e-12))
                    ax.imshow(img[0], cmap="seismic", vmin=-bound, vmax=bound)
                else:
                    ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
            else:
                if name.startswith("r_"):
                    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
