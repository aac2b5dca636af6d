"""Semi-supervised two rings: supervised-only, VAT, TAR, NAR and TNAR with the oracle chart.

The problem of the TNAR paper: two concentric rings (radii 1 and 1.5 in the plane), 3 labeled
points per ring and 3000 unlabeled ones (:func:`robustreg.data.rings_ssl`). An MLP (2 hidden
layers of 100, ReLU) trains with Adam (lr 1e-3) for ``--steps`` steps on cross-entropy over the
6 labeled points plus, for the regularised methods, the regulariser on a batch of 128
unlabeled points (their own clean logits shared). TAR/NAR/TNAR use the oracle chart
(:class:`robustreg.charts.RingsChart`, the angle parametrisation) with on-manifold tangent
perturbations; reported is the accuracy on the unlabeled points, the training time and, for
the plane (``--dim 2``), a plot of every method's decision regions.

    python benchmarks/two_rings_ssl.py
    python benchmarks/two_rings_ssl.py --dim 10 --off-manifold 0.02 --out runs/rings10

Writes ``results.json`` and ``decision_boundaries.png`` to ``--out``
(default ``benchmarks/results/two_rings``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import robustreg
from robustreg.charts import RingsChart
from robustreg.data import RingsSSL, cycle_batches, rings_ssl

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("supervised", "vat", "tar", "nar", "tnar")


def make_reg(method: str, model: nn.Module, chart: RingsChart, args: argparse.Namespace):
    if method == "supervised":
        return None
    if method == "vat":
        return robustreg.VAT(model, eps=args.eps_vat)
    weights = {"tar": (1.0, 0.0), "nar": (0.0, 1.0), "tnar": (1.0, 1.0)}[method]
    return robustreg.TNAR(
        model, chart, eps_tangent=args.eps_tangent, eps_normal=args.eps_normal, weights=weights, tangent="manifold"
    )


def train(method: str, data: RingsSSL, args: argparse.Namespace) -> tuple[nn.Module, dict]:
    torch.manual_seed(args.seed)
    dim = data.x_labeled.shape[1]
    model = nn.Sequential(nn.Linear(dim, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 2))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    reg = make_reg(method, model, RingsChart(data.embedding, data.radii), args)
    stream = cycle_batches(
        (data.x_labeled, data.y_labeled), data.x_unlabeled, batch_labeled=6, batch_unlabeled=128, seed=args.seed
    )
    start = time.perf_counter()
    for x_l, y_l, x_u in itertools.islice(stream, args.steps):
        loss = F.cross_entropy(model(x_l), y_l)
        if reg is not None:
            loss = loss + reg(x_u, logits=model(x_u))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        acc = (model(data.x_unlabeled).argmax(1) == data.y_unlabeled).float().mean()
    return model, {"unlabeled_accuracy": float(acc), "train_seconds": seconds}


def plot(models: dict[str, nn.Module], data: RingsSSL, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = torch.linspace(-2.0, 2.0, 200)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    plane = torch.stack([gx.flatten(), gy.flatten()], 1)
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.4))
    for ax, (name, model) in zip(axes, models.items(), strict=True):
        with torch.no_grad():
            pred = model(plane @ data.embedding.t()).argmax(1).reshape(gx.shape)
        ax.contourf(gx, gy, pred, levels=[-0.5, 0.5, 1.5], colors=["#cfe0f3", "#f6d5c5"])
        u = data.x_unlabeled @ data.embedding
        ax.scatter(u[:, 0], u[:, 1], s=1, c=data.y_unlabeled, cmap="coolwarm", alpha=0.4)
        lab = data.x_labeled @ data.embedding
        ax.scatter(lab[:, 0], lab[:, 1], s=60, c=data.y_labeled, cmap="coolwarm", edgecolors="black")
        ax.set_title(name)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {','.join(METHODS)}")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eps-vat", type=float, default=0.3)
    p.add_argument("--eps-tangent", type=float, default=1.0)
    p.add_argument("--eps-normal", type=float, default=0.05)
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--off-manifold", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "two_rings")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"--methods: unknown {sorted(unknown)}")
    data = rings_ssl(dim=args.dim, off_manifold=args.off_manifold, seed=args.seed)
    models, results = {}, {}
    for method in methods:
        models[method], results[method] = train(method, data, args)
        print(method, json.dumps(results[method]), flush=True)
    report = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    if args.dim == 2 or args.off_manifold == 0:
        plot(models, data, args.out / "decision_boundaries.png")
    return report


if __name__ == "__main__":
    main()
