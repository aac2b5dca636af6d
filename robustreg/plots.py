"""Plots of the recipes and benchmarks: two-rings decision regions, rows of images, and the TNAR
perturbation grid (the TNAR paper's Fig. 4). matplotlib draws them off-screen (Agg)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from ._extras import missing_extra
from .data import RingsSSL


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError as err:
        raise missing_extra(err, "robustreg.plots") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def decision_regions(models: dict[str, nn.Module], data: RingsSSL, path: Path) -> Path:
    """Each model's predicted class over the plane of the rings (``[-2, 2]²``, embedded as the data
    is), the unlabeled points coloured by their true ring and the labeled points circled; one
    legend for all panels."""
    plt = _pyplot()
    grid = torch.linspace(-2.0, 2.0, 200)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    plane = torch.stack([gx.flatten(), gy.flatten()], 1)  # (40000, 2)
    cols = min(len(models), 4)
    rows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows + 0.7), squeeze=False)
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
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cmap = plt.get_cmap("coolwarm")
    handles = [
        Patch(color="#cfe0f3", label=f"predicted class 0 (the ring of radius {data.radii[0]:g})"),
        Patch(color="#f6d5c5", label=f"predicted class 1 (the ring of radius {data.radii[1]:g})"),
        Line2D([], [], ls="none", marker="o", ms=4, color=cmap(0.0), label="unlabeled point, true class 0"),
        Line2D([], [], ls="none", marker="o", ms=4, color=cmap(1.0), label="unlabeled point, true class 1"),
        Line2D([], [], ls="none", marker="o", ms=9, mfc="white", mec="black", label="labeled point"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Decision regions: a good model's boundary runs between the rings", fontsize=10)
    fig.tight_layout(rect=(0, 0.12 / rows, 1, 1))
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
    perturbations: grey-scale ones on one symmetric colour scale per row, with its colour bar;
    colour ones rescaled to [0, 1] per image (said in the row's label). The others are images in
    [0, 1]."""
    plt = _pyplot()
    n = rows[0][1].shape[0]
    fig, axes = plt.subplots(
        len(rows), n, figsize=(1.3 * n + 0.9, 1.4 * len(rows)), squeeze=False, layout="constrained"
    )
    for i, (name, imgs) in enumerate(rows):
        imgs = imgs.detach().float().cpu()
        signed = name.startswith("r_")
        bound = float(imgs.abs().max().clamp_min(1e-12))
        label, shown = name, None
        for j in range(n):
            ax, img = axes[i, j], imgs[j]  # (C, H, W)
            if img.shape[0] == 1:
                if signed:
                    shown = ax.imshow(img[0], cmap="seismic", vmin=-bound, vmax=bound)
                else:
                    ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
            else:
                if signed:
                    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
                    label = f"{name}\n(rescaled)"
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(label, fontsize=8)
        if shown is not None:
            bar = fig.colorbar(shown, ax=list(axes[i, :]), fraction=0.02, pad=0.01)
            bar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
