"""Semi-supervised two rings: supervised-only, VAT, and TAR, NAR and TNAR with the oracle chart or
with an autoencoder chart learned from the unlabeled points.

The problem of the TNAR paper: two concentric rings (radii 1 and 1.5 in the plane), 3 labeled
points per ring and 3000 unlabeled ones (:func:`robustreg.data.rings_ssl`). An MLP (2 hidden
layers of 100, ReLU) trains with Adam (lr 1e-3) for ``--steps`` steps on cross-entropy over the
6 labeled points plus, for the regularised methods, the regulariser on a batch of 128
unlabeled points (their own clean logits shared). ``tar``/``nar``/``tnar`` use the oracle chart
(:class:`robustreg.charts.RingsChart`, the angle parametrisation), ``tar-ae``/``nar-ae``/``tnar-ae``
the same regulariser and ε with a :class:`robustreg.charts.MLPAutoEncoder` chart trained (seeded)
on the unlabeled points only; both with on-manifold tangent perturbations. Reported is the
accuracy on the unlabeled points, the training time, for the learned chart its reconstruction
error and the alignment of its tangent with the true ring tangent, and, for the plane
(``--dim 2``), a plot of every method's decision regions (first seed).

The learned chart has one *circular* latent (``--ae-circular``, the default): a real-valued 1-D
code must cut each ring somewhere, its tangent is wrong at the cuts, and between two cuts an arc
that holds no labeled point of its ring is free to take the other ring's label (81-88% with
``--no-ae-circular``). An angle code has no cut. On two concentric rings it learns their
middle circle (reconstruction error ≈ 0.25, half the gap): the tangent, all TNAR uses, is right.

    python benchmarks/two_rings_ssl.py
    python benchmarks/two_rings_ssl.py --methods supervised,vat,tar,nar,tnar,tar-ae,tnar-ae --seed 0,1,2 --threads 1
    python benchmarks/two_rings_ssl.py --dim 10 --off-manifold 0.02 --out runs/rings10

Writes ``results.json`` and ``decision_boundaries.png`` to ``--out``
(default ``benchmarks/results/two_rings``). A progress bar with an ETA (over every training step of
every seed and method, the chart's epochs counted as one step each) goes to stderr, and
``results.json`` is rewritten (atomically) after every run with ``"partial": true`` until the last.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import robustreg
from robustreg import cli
from robustreg.charts import MLPAutoEncoder, RingsChart, train_chart
from robustreg.data import RingsSSL, cycle_batches, rings_ssl
from robustreg.plots import decision_regions

from reporting import progress_bar, write_json

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("supervised", "vat", "tar", "nar", "tnar")  # the default run: oracle chart
AE_METHODS = ("tar-ae", "nar-ae", "tnar-ae")  # the same regularisers with the learned chart
WEIGHTS = {"tar": (1.0, 0.0), "nar": (0.0, 1.0), "tnar": (1.0, 1.0)}


def make_reg(method: str, model: nn.Module, chart: object, args: argparse.Namespace):
    if method == "supervised":
        return None
    if method == "vat":
        return robustreg.VAT(model, eps=args.eps_vat)
    return robustreg.TNAR(
        model,
        chart,
        eps_tangent=args.eps_tangent,
        eps_normal=args.eps_normal,
        weights=WEIGHTS[method.removesuffix("-ae")],
        tangent="manifold",
    )


def train(
    method: str,
    data: RingsSSL,
    chart: object,
    args: argparse.Namespace,
    seed: int,
    *,
    on_step: Callable[[], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Train ``method``'s classifier for ``args.steps`` steps; ``on_step`` is called after each one
    (a progress bar)."""
    torch.manual_seed(seed)
    dim = data.x_labeled.shape[1]
    model = nn.Sequential(nn.Linear(dim, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 2))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    reg = make_reg(method, model, chart, args)
    stream = cycle_batches(
        (data.x_labeled, data.y_labeled), data.x_unlabeled, batch_labeled=6, batch_unlabeled=128, seed=seed
    )
    start = time.perf_counter()
    for x_l, y_l, x_u in itertools.islice(stream, args.steps):
        loss = F.cross_entropy(model(x_l), y_l)
        if reg is not None:
            loss = loss + reg(x_u, logits=model(x_u))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        acc = (model(data.x_unlabeled).argmax(1) == data.y_unlabeled).float().mean()
    return model, {"seed": seed, "unlabeled_accuracy": float(acc), "train_seconds": seconds}


def chart_quality(chart: MLPAutoEncoder, data: RingsSSL) -> dict:
    """On the unlabeled points: the reconstruction error ``‖decode(encode(x)) − x‖₂`` and the
    tangent accuracy ``|cos|`` between the true ring tangent ``t = E(−sin θ, cos θ)`` and the
    chart's tangent space span(J), ``J = ∂decode/∂z`` at ``encode(x)`` (``‖P_J t‖`` for a unit t)."""
    x = data.x_unlabeled  # (N, dim)
    with torch.no_grad():
        z = chart.encode(x)  # (N, k)
        recon = (chart.decode(z) - x).norm(dim=1)
    jac = torch.func.vmap(torch.func.jacfwd(lambda v: chart.decode(v[None])[0]))(z)  # (N, dim, k)
    plane = x @ data.embedding  # (N, 2)
    theta = torch.atan2(plane[:, 1], plane[:, 0])
    tangent = torch.stack([-theta.sin(), theta.cos()], dim=1) @ data.embedding.t()  # (N, dim), unit
    basis = torch.linalg.qr(jac.detach()).Q  # (N, dim, k)
    cos = (basis.transpose(1, 2) @ tangent[:, :, None]).flatten(1).norm(dim=1)
    return {
        "recon_error_median": float(recon.median()),
        "recon_error_mean": float(recon.mean()),
        "tangent_cos_median": float(cos.median()),
        "tangent_cos_p05": float(cos.quantile(0.05)),
        "tangent_cos_below_0.9": float((cos < 0.9).float().mean()),
    }


def fit_ae_chart(data: RingsSSL, args: argparse.Namespace, seed: int) -> tuple[MLPAutoEncoder, dict]:
    """An :class:`MLPAutoEncoder` chart trained on the unlabeled points alone (no labels)."""
    torch.manual_seed(seed)
    chart = MLPAutoEncoder(
        tuple(data.x_unlabeled.shape[1:]),
        latent=args.ae_latent,
        hidden=args.ae_hidden,
        depth=args.ae_depth,
        circular=args.ae_circular,
    )
    start = time.perf_counter()
    history = train_chart(chart, data.x_unlabeled, epochs=args.ae_epochs, lr=args.ae_lr, seed=seed)
    seconds = time.perf_counter() - start
    chart.requires_grad_(False)
    return chart, {"seed": seed, "train_seconds": seconds, "final_loss": history[-1], **chart_quality(chart, data)}


def summarize(runs: list[dict]) -> dict:
    accs = [r["unlabeled_accuracy"] for r in runs]
    return {
        "unlabeled_accuracy": statistics.mean(accs),
        "min_unlabeled_accuracy": min(accs),
        "train_seconds": statistics.mean(r["train_seconds"] for r in runs),
        "per_seed": runs,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma list of {','.join(METHODS + AE_METHODS)} or all"
    )
    p.add_argument("--steps", type=int, default=3000, help="training steps per run")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--eps-vat", type=float, default=0.3, help="VAT's ε (ℓ2)")
    p.add_argument("--eps-tangent", type=float, default=1.0, help="TNAR's ε_t")
    p.add_argument("--eps-normal", type=float, default=0.05, help="TNAR's ε_n")
    p.add_argument("--dim", type=int, default=2, help="ambient dimension the plane of the rings is embedded in")
    p.add_argument(
        "--off-manifold",
        type=float,
        default=0.0,
        help="standard deviation of the Gaussian noise added to the points in every direction",
    )
    p.add_argument("--seed", default="0", help="a seed or a comma list (data, chart and classifier)")
    p.add_argument("--ae-latent", type=int, default=1, help="autoencoder chart: latent dimension")
    p.add_argument("--ae-circular", action=argparse.BooleanOptionalAction, default=True, help="angle latents")
    p.add_argument("--ae-hidden", type=int, default=128, help="autoencoder chart: hidden units")
    p.add_argument("--ae-depth", type=int, default=2, help="autoencoder chart: hidden layers")
    p.add_argument("--ae-epochs", type=int, default=30, help="autoencoder chart: training epochs")
    p.add_argument("--ae-lr", type=float, default=1e-3, help="autoencoder chart: Adam learning rate")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "two_rings", help="results directory")
    args = p.parse_args(argv)
    methods = list(METHODS + AE_METHODS) if args.methods == "all" else [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS + AE_METHODS)
    if unknown:
        p.error(f"--methods: unknown {sorted(unknown)}")
    try:
        seeds = [int(s) for s in args.seed.split(",")]
    except ValueError:
        p.error(f"--seed: integers separated by commas, got {args.seed!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    charts: list[dict] = []
    models, titles = {}, {}
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}

    def report(partial: bool) -> dict:
        out = {"partial": partial, "config": config | {"seed": seeds}}
        out["results"] = {m: summarize(r) for m, r in runs.items() if r}
        if charts:
            out["ae_chart"] = {
                "model": {"kind": MLPAutoEncoder.kind, **learned.config},
                "training": {"data": "x_unlabeled", "loss": "squared error", "optimizer": "Adam", "batch_size": 128}
                | {"lr": args.ae_lr, "epochs": args.ae_epochs},
                "per_seed": charts,
            }
        return out

    fits_chart = any(m in AE_METHODS for m in methods)
    with progress_bar() as bar:
        per_seed = len(methods) * args.steps + (args.ae_epochs if fits_chart else 0)
        task = bar.add_task(f"{len(methods)} methods × {len(seeds)} seeds", total=len(seeds) * per_seed)
        for seed in seeds:
            data = rings_ssl(dim=args.dim, off_manifold=args.off_manifold, seed=seed)
            oracle, learned = RingsChart(data.embedding, data.radii), None
            if fits_chart:
                learned, record = fit_ae_chart(data, args, seed)
                charts.append(record)
                print("ae-chart", json.dumps(record), flush=True)
                bar.advance(task, args.ae_epochs)
            for method in methods:
                chart = learned if method in AE_METHODS else oracle
                model, run = train(method, data, chart, args, seed, on_step=lambda: bar.advance(task))
                runs[method].append(run)
                print(method, json.dumps(run), flush=True)
                write_json(args.out / "results.json", report(partial=True))
                if seed == seeds[0]:
                    models[method], titles[method] = model, f"{method} ({100 * run['unlabeled_accuracy']:.1f}%)"
            if seed == seeds[0]:
                first = data
    final = report(partial=False)
    write_json(args.out / "results.json", final)
    if args.dim == 2 or args.off_manifold == 0:
        decision_regions({titles[n]: m for n, m in models.items()}, first, args.out / "decision_boundaries.png")
    return final


if __name__ == "__main__":
    main()
