"""The eigenvalues of a square layer in the complex plane against the unit circle (the MSA
paper's Fig. 1). Needs matplotlib, part of the ``recipes`` extra (``pip install 'robustreg[recipes]'``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .._extras import missing_extra
from .spectral import as_matrix


def _matrix(layer: nn.Module | Tensor) -> Tensor:
    if isinstance(layer, Tensor):
        w = layer
    elif hasattr(layer, "matrix") and callable(layer.matrix):  # AntisymmetricLinear
        w = layer.matrix()
    elif isinstance(getattr(layer, "weight", None), Tensor):
        w = layer.weight
    else:
        raise TypeError(f"layer must be a tensor or a module with a weight, got {type(layer).__name__}")
    w = as_matrix(w.detach()).to("cpu", torch.float64)
    if w.shape[0] != w.shape[1]:
        raise ValueError(f"eigenvalues need a square weight matrix, got {tuple(w.shape)}")
    return w


def plot_eigenvalues(layers: Mapping[str, nn.Module | Tensor], path: str | Path | None = None, *, title: str = ""):
    """Scatter the eigenvalues of each named square layer (or matrix) in the complex plane with
    the unit circle; saves to ``path`` when given. Returns the matplotlib figure."""
    try:
        import matplotlib
    except ModuleNotFoundError as err:
        raise missing_extra(err, "plot_eigenvalues") from err
    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    t = torch.linspace(0, 2 * torch.pi, 400)
    ax.plot(torch.cos(t), torch.sin(t), color="black", lw=1, label="unit circle")
    for label, layer in layers.items():
        ev = torch.linalg.eigvals(_matrix(layer))
        rho = float(ev.abs().max())
        ax.scatter(ev.real, ev.imag, s=10, alpha=0.7, label=f"{label} (ρ = {rho:.3f})")
    ax.set_aspect("equal")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")
    ax.set_title(title or "eigenvalues of the layer matrices")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130)
    return fig
