"""FashionMNIST with 100 labels: supervised-only, VAT, TAR, NAR and TNAR with a VAE chart (and a
Localized-GAN chart), test error at equal iterations (the TNAR paper's Table, FashionMNIST).

    python benchmarks/fashion_ssl.py --stage chart                 # train the VAE and LGAN charts once
    python benchmarks/fashion_ssl.py --stage train --methods vat   # one process per method
    python benchmarks/fashion_ssl.py --stage summary               # table + perturbation image

Setting (the same for every method): SmallCNN without dropout, Adam (lr 1e-3, linearly decayed
to 0 after ``--decay-from`` of the iterations: over the last third by default), ``--iters``
iterations, each on a batch of ``--batch-labeled`` labeled images (10 per class, drawn by
``--seed`` with :func:`robustreg.data.label_split`, cycled) plus, for the regularised methods,
the regulariser on ``--batch-unlabeled`` images of the whole training set (their clean logits
shared). VAT: ε = ``--eps-vat``; TAR/NAR/TNAR: ε_t = ``--eps-tangent`` (on the manifold:
``decode(z + η) − decode(z) + x``), ε_n =
``--eps-normal``, one power step, 4 CG iterations, weights 1. The chart is
:class:`robustreg.charts.VAE` (latent ``--latent``, width ``--width``) trained on the
training images for ``--chart-epochs`` epochs, or the Localized GAN
(:class:`robustreg.charts.LocalizedGAN`) for ``tnar-lgan``. Test error is measured on the
10,000 test images every ``--eval-every`` iterations. The LGAN (latent 10, width 32) trains for
``--lgan-epochs`` epochs with :data:`LGAN_TRAIN` (its locality and orthonormality errors on test
images, before and after, go to ``charts/lgan.json``).

Each stage shows a progress bar with an ETA on stderr (``--stage train``: one per method, over its
iterations). Each ``--stage train`` run writes ``<out>/<method>.json`` at every evaluation, with
``"partial": true`` until its last iteration (atomically: a killed run leaves its curve so far);
``--stage summary`` gathers the finished ones into
``summary.json`` and draws ``perturbations.png`` and ``perturbations-lgan.png`` (x, its tangent
and normal perturbations, as the paper's Fig. 4) from the TNAR runs' classifiers.
``--synthetic`` replaces the data by random tensors of the same shape (a smoke run of the code
path).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robustreg
from robustreg import cli
from robustreg.charts import VAE, LocalizedGAN, load_chart, train_chart, train_lgan
from robustreg.checkpoint import save_model
from robustreg.data import cycle_batches, label_split, load_vision, synthetic_vision
from robustreg.models import SmallCNN
from robustreg.plots import perturbation_grid

from reporting import progress_bar, write_json

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("supervised", "vat", "tar", "nar", "tnar", "tnar-lgan")
WEIGHTS = {"tar": (1.0, 0.0), "nar": (0.0, 1.0), "tnar": (1.0, 1.0), "tnar-lgan": (1.0, 1.0)}


def load(args: argparse.Namespace) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if args.synthetic:
        gen = torch.Generator().manual_seed(args.seed)
        x, y = synthetic_vision("fashionmnist", 512, generator=gen)
        xt, yt = synthetic_vision("fashionmnist", 256, generator=gen)
        return x, y, xt, yt
    x, y = load_vision("fashionmnist", args.data_dir, train=True)
    xt, yt = load_vision("fashionmnist", args.data_dir, train=False)
    return x, y, xt, yt


def chart_path(args: argparse.Namespace, kind: str) -> Path:
    """Where the chart ``kind`` is saved: a model directory (safetensors + JSON)."""
    return args.out / "charts" / kind


# the LGAN's training settings (train_lgan's defaults, the Jacobian term on 16 of every 64 images)
LGAN_TRAIN = {"batch_size": 64, "lr": 2e-4, "sigma": 1.0, "locality": 10.0, "orthonormality": 10.0}
LGAN_TRAIN["jacobian_batch"] = 16


def held_out(chart: LocalizedGAN, xt: Tensor, n_loc: int = 1000, n_jac: int = 256) -> dict:
    """The LGAN's locality ‖G(x, 0) − x‖₂ and orthonormality ‖JᵀJ − I‖²_F on test images."""
    with torch.no_grad():
        loc = chart.locality_error(xt[:n_loc]).sqrt()
    ortho = torch.cat([chart.orthonormality_error(xt[i : i + 64]).detach() for i in range(0, n_jac, 64)])
    return {
        "locality_l2_mean": float(loc.mean()),
        "relative_locality": float((loc / xt[:n_loc].flatten(1).norm(dim=1)).mean()),
        "orthonormality_fro2_mean": float(ortho.mean()),
    }


def stage_chart(args: argparse.Namespace) -> None:
    """Train the charts of ``--charts``: the VAE (``--chart-epochs`` epochs) and the LGAN
    (``--lgan-epochs`` epochs, :data:`LGAN_TRAIN`)."""
    x, _, xt, _ = load(args)
    with progress_bar() as bar:
        task = bar.add_task(f"charts ({', '.join(args.charts)})", total=len(args.charts))
        for kind in args.charts:
            train_one_chart(kind, x, xt, args)
            bar.advance(task)


def train_one_chart(kind: str, x: Tensor, xt: Tensor, args: argparse.Namespace) -> None:
    """Train, save and describe (``charts/<kind>.json``) the chart ``kind`` (its epochs run in the
    library's loop: the bar advances per chart)."""
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    if kind == "vae":
        chart = VAE((1, 28, 28), latent=args.latent, width=args.width)
        history = train_chart(chart, x, epochs=args.chart_epochs, seed=args.seed)
        info = {"kind": kind, "config": chart.config, "epochs": args.chart_epochs, "loss_per_epoch": history}
    else:
        chart = LocalizedGAN((1, 28, 28), latent=args.lgan_latent, width=32)
        before = held_out(chart, xt)
        history = train_lgan(chart, x, epochs=args.lgan_epochs, seed=args.seed, **LGAN_TRAIN)
        info = {"kind": kind, "config": chart.config, "train": {"epochs": args.lgan_epochs, **LGAN_TRAIN}}
        info |= {"history": history, "held_out_before": before, "held_out_after": held_out(chart, xt)}
    info |= {"images": len(x), "threads": torch.get_num_threads(), "seconds": time.perf_counter() - start}
    path = chart_path(args, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(chart, path)
    write_json(path.parent / f"{kind}.json", info)
    print(kind, json.dumps(info), flush=True)


def make_reg(method: str, model: nn.Module, args: argparse.Namespace):
    if method == "supervised":
        return None
    if method == "vat":
        return robustreg.VAT(model, eps=args.eps_vat)
    chart = load_chart(chart_path(args, "lgan" if method == "tnar-lgan" else "vae"))
    chart.requires_grad_(False)
    return robustreg.TNAR(
        model,
        chart,
        eps_tangent=args.eps_tangent,
        eps_normal=args.eps_normal,
        weights=WEIGHTS[method],
        tangent="manifold",
    )


@torch.no_grad()
def test_error(model: nn.Module, xt: Tensor, yt: Tensor) -> float:
    wrong = sum(int((model(xt[i : i + 1000]).argmax(1) != yt[i : i + 1000]).sum()) for i in range(0, len(xt), 1000))
    return 100.0 * wrong / len(xt)


def stage_train(method: str, args: argparse.Namespace) -> dict:
    x, y, xt, yt = load(args)
    labeled, _ = label_split(y, args.per_class, seed=args.seed)
    torch.manual_seed(args.seed)
    model = SmallCNN(drop=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    decay_from = int(args.decay_from * args.iters)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 1.0 if i < decay_from else max(0.0, (args.iters - i) / max(1, args.iters - decay_from))
    )
    reg = make_reg(method, model, args)
    stream = cycle_batches(
        (x[labeled], y[labeled]),
        x,
        batch_labeled=args.batch_labeled,
        batch_unlabeled=args.batch_unlabeled,
        seed=args.seed,
    )
    curve, train_seconds = [], 0.0
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    with progress_bar() as bar:
        task = bar.add_task(f"{method} ({args.iters} iterations)", total=args.iters)
        for it, (x_l, y_l, x_u) in enumerate(itertools.islice(stream, args.iters), start=1):
            start = time.perf_counter()
            loss = F.cross_entropy(model(x_l), y_l)
            if reg is not None:
                loss = loss + reg(x_u, logits=model(x_u))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            train_seconds += time.perf_counter() - start
            bar.advance(task)
            if it % args.eval_every == 0 or it == args.iters:
                curve.append({"iter": it, "train_seconds": train_seconds, "test_error": test_error(model, xt, yt)})
                print(method, json.dumps(curve[-1]), flush=True)
                result = {
                    "method": method,
                    "partial": it < args.iters,
                    "iters_done": it,
                    "test_error": curve[-1]["test_error"],
                    "train_seconds": train_seconds,
                    "seconds_per_iter": train_seconds / it,
                    "curve": curve,
                    "labeled_indices": labeled.tolist(),
                    "config": config,
                }
                if it == args.iters:  # the classifier first: a finished JSON always has its weights
                    args.out.mkdir(parents=True, exist_ok=True)
                    torch.save(model.state_dict(), args.out / f"{method}.classifier.pt")
                write_json(args.out / f"{method}.json", result)
    return result


def stage_summary(args: argparse.Namespace) -> dict:
    rows, unfinished = {}, {}
    for method in METHODS:
        path = args.out / f"{method}.json"
        if path.exists():
            r = json.loads(path.read_text())
            if r.get("partial"):
                unfinished[method] = r["iters_done"]
                done, iters = r["iters_done"], r["config"]["iters"]
                print(f"{method:10s} unfinished: {done} of {iters} iterations (not in the table)")
                continue
            rows[method] = {k: r[k] for k in ("test_error", "train_seconds", "seconds_per_iter")}
    summary = {"paper_test_error": PAPER, "measured": rows, "unfinished_iters": unfinished}
    write_json(args.out / "summary.json", summary)
    for method, row in rows.items():
        print(f"{method:10s} test error {row['test_error']:6.2f}%  ({row['seconds_per_iter']:.3f} s/iter)")
    for method in ("tnar", "tnar-lgan"):
        if (args.out / f"{method}.classifier.pt").exists():
            plot_perturbations(args, method)
    return summary


PAPER = {"vat": 27.69, "tar": 26.45, "nar": 27.83, "tnar": 23.35, "tnar-lgan": 23.65}


def plot_perturbations(args: argparse.Namespace, method: str, n: int = 6) -> None:
    """``perturbations[-lgan].png``: rows of test images x, x + r_tangent (on the manifold),
    x + r_normal, and the two perturbations (each scaled to its own range), from ``method``'s
    trained classifier and its chart."""
    _, _, xt, _ = load(args)
    model = SmallCNN(drop=0.0)
    model.load_state_dict(torch.load(args.out / f"{method}.classifier.pt", weights_only=True))
    reg = make_reg(method, model, args)
    torch.manual_seed(args.seed)
    x = xt[:n]
    reg(x)
    chart = "LGAN" if method == "tnar-lgan" else "VAE"
    perturbation_grid(
        x, reg.last.r_tangent, reg.last.r_normal,
        args.out / ("perturbations-lgan.png" if method == "tnar-lgan" else "perturbations.png"),
        f"TNAR-{chart} perturbations (ε_t = {args.eps_tangent}, ε_n = {args.eps_normal})",
    )  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument(
        "--stage",
        choices=("chart", "train", "summary"),
        required=True,
        help="chart: train the charts; train: train --methods; summary: the table and plots",
    )
    p.add_argument("--methods", default="supervised", help=f"comma list of {','.join(METHODS)}")
    p.add_argument("--iters", type=int, default=3000, help="training iterations per method")
    p.add_argument("--eval-every", type=int, default=500, help="iterations between test-error evaluations")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--decay-from", type=float, default=2 / 3, help="fraction of --iters; the lr decays after it")
    p.add_argument("--per-class", type=int, default=10, help="labeled images per class")
    p.add_argument("--batch-labeled", type=int, default=32, help="labeled batch")
    p.add_argument("--batch-unlabeled", type=int, default=64, help="unlabeled batch")
    p.add_argument("--eps-vat", type=float, default=2.0, help="VAT's ε (ℓ2)")
    p.add_argument("--eps-tangent", type=float, default=2.0, help="TNAR's ε_t")
    p.add_argument("--eps-normal", type=float, default=2.0, help="TNAR's ε_n")
    p.add_argument("--latent", type=int, default=20, help="VAE latent dimension")
    p.add_argument("--width", type=int, default=16, help="VAE channels of the first convolution")
    p.add_argument("--chart-epochs", type=int, default=20, help="VAE training epochs")
    p.add_argument("--charts", default="vae,lgan", help="charts to train in --stage chart: vae, lgan")
    p.add_argument("--lgan-epochs", type=int, default=3, help="Localized-GAN training epochs")
    p.add_argument("--lgan-latent", type=int, default=10, help="Localized-GAN latent dimension")
    p.add_argument("--seed", type=int, default=0, help="seeds the labels, the charts and the classifiers")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--synthetic", action="store_true", help="random tensors instead of FashionMNIST")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("ROBUSTREG_DATA", ROOT.parent / "shared" / "data")),
        help="holds FashionMNIST/raw/*.gz ($ROBUSTREG_DATA, else ../shared/data)",
    )
    p.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "fashion_ssl", help="results directory"
    )
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"--methods: unknown {sorted(unknown)}")
    args.methods = methods
    args.charts = [c for c in args.charts.split(",") if c]
    if set(args.charts) - {"vae", "lgan"}:
        p.error(f"--charts: unknown {sorted(set(args.charts) - {'vae', 'lgan'})}")
    if not 0 <= args.decay_from <= 1:
        p.error(f"--decay-from must be in [0, 1], got {args.decay_from}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stage == "chart":
        stage_chart(args)
    elif args.stage == "train":
        for method in args.methods:
            stage_train(method, args)
    else:
        stage_summary(args)


if __name__ == "__main__":
    main()
