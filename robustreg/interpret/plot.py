"""The figures of the interpretation study (Zhang and Zhu, ICML 2019): saliency maps of several
models side by side (the paper's Fig. 2), the transforms themselves (Figs. 1, 4, 6) and accuracy on
correctly classified images against a transform's level (Figs. 5, 7). Needs matplotlib, part of
the ``recipes`` extra (``pip install 'robustreg[recipes]'``); drawn off-screen (Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import Tensor

from .._extras import missing_extra
from .saliency import saliency_image


def _pyplot(what: str):
    try:
        import matplotlib
    except ModuleNotFoundError as err:
        raise missing_extra(err, what) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _show(ax, img: Tensor, cmap: str | None = None) -> None:
    """An image ``(C, H, W)`` (1 or 3 channels) or a map ``(H, W)`` on ``ax``, without ticks."""
    img = img.detach().float().cpu()
    if img.dim() == 3:
        img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
    gray = img.dim() == 2
    ax.imshow(img.clamp(0, 1).numpy(), cmap=cmap or ("gray" if gray else None), vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_saliency(
    images: Tensor, maps: Mapping[str, Tensor], path: str | Path, *, title: str = "", clip: float = 0.99
) -> Path:
    """One row of images ``(B, C, H, W)``, then one row of saliency maps per model
    (``name -> (B, C, H, W)`` or ``(B, H, W)`` maps of those images, shown by
    :func:`~robustreg.interpret.saliency_image`); saved to ``path``."""
    plt = _pyplot("plot_saliency")
    rows, cols = 1 + len(maps), images.shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 1.4, 1.3 * rows + 0.5), squeeze=False)
    for j in range(cols):
        _show(axes[0, j], images[j])
    axes[0, 0].set_ylabel("input", rotation=0, ha="right", va="center")
    for i, (name, m) in enumerate(maps.items(), start=1):
        pictures = saliency_image(m, clip=clip)
        for j in range(cols):
            _show(axes[i, j], pictures[j], cmap="inferno")
        axes[i, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    fig.suptitle(title or "saliency |E| (SmoothGrad), by model")
    return _save(plt, fig, path)


def plot_transforms(images: Tensor, rows: Mapping[str, Tensor], path: str | Path, *, title: str = "") -> Path:
    """The clean images ``(B, C, H, W)`` and, one row per transform, the transformed ones
    (``name -> (B, C, H, W)``); saved to ``path``."""
    plt = _pyplot("plot_transforms")
    all_rows = {"clean": images, **rows}
    cols = images.shape[0]
    fig, axes = plt.subplots(len(all_rows), cols, figsize=(1.3 * cols + 1.4, 1.3 * len(all_rows) + 0.5), squeeze=False)
    for i, (name, batch) in enumerate(all_rows.items()):
        for j in range(cols):
            _show(axes[i, j], batch[j])
        axes[i, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    fig.suptitle(title or "the transforms")
    return _save(plt, fig, path)


def plot_accuracy_on_correct(
    levels: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    xlabel: str,
    title: str = "",
    log_x: bool = False,
) -> Path:
    """Accuracy on correctly classified images (in %) against a transform's level, one line per
    model (``name -> accuracies``, fractions, one per level); saved to ``path``."""
    plt = _pyplot("plot_accuracy_on_correct")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, acc in curves.items():
        ax.plot(list(levels), [100 * a for a in acc], marker="o", ms=3.5, label=name)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy on correctly classified images (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title)
    return _save(plt, fig, path)
