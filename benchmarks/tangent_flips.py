"""How often does a tangent perturbation change an image's class? FashionMNIST test images moved
along the VAE chart of ``benchmarks/fashion_ssl.py`` (its ``charts/vae``, or ``charts/vae@<tag>``
with ``--chart-tag``), by the tangent step
TNAR trains on, judged by an *oracle*: a SmallCNN trained on every labelled training image
outside the validation split (trained once, kept as ``charts/oracle_e<epochs>_s<seed>.pt``).

    python benchmarks/fashion_ssl.py --stage chart                 # the VAE, once
    python benchmarks/tangent_flips.py --runs tnar@it8k,vat@it8k --seeds 0,1

For each classifier ``<run>`` of each seed (``seed<N>/<run>.classifier.pt`` of the protocol's
results; those absent are skipped and listed as ``missing``, an error if all are) and each ε_t
of ``--eps-tangent`` (latent units, ``normalize="official"``, as the
protocol), two moves of the first ``--n`` test images: TNAR's tangent step against that
classifier (``TNAR(weights=(1, 0), tangent="manifold")``: ``x + decode(z + ε_t·η) − decode(z)``,
η the adversarial tangent direction, max-abs 1), and the same move along a random latent
direction (Gaussian, max-abs 1). Reported per move, over the images the oracle labels correctly:
the fraction whose oracle label changes (``oracle_flip``: the move crossed a class boundary, as
far as the oracle can tell), per true class, and the fraction whose label the
classifier itself changes (``model_flip``: what the tangent KL term penalises). The oracle's own
test error is reported beside them (its errors bound what ``oracle_flip`` can resolve), and each
classifier's error on the whole test set, overall, per class and as a confusion matrix.

Results: ``<results>/tangent_flips.json`` (written atomically after every classifier, ``"partial":
true`` until the last). ``--synthetic`` replaces the data by random tensors of the same shape and
trains a throwaway VAE and classifier (a smoke run of the code path).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robustreg
from robustreg import cli
from robustreg.charts import VAE, load_chart, train_chart
from robustreg.models import SmallCNN

from fashion_ssl import RESULTS, add_data_dir, chart_path, check_tags, load, split
from reporting import progress_bar, write_json

CLASSES = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


@torch.no_grad()
def predict(model: nn.Module, x: Tensor) -> Tensor:
    return torch.cat([model(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])


def train_oracle(x: Tensor, y: Tensor, epochs: int, seed: int) -> SmallCNN:
    """SmallCNN on every labelled image of ``x``: Adam 1e-3, batches of 128, ``epochs`` epochs."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    with progress_bar() as bar:
        task = bar.add_task(f"oracle ({epochs} epochs on {len(x)} images)", total=epochs * ((len(x) + 127) // 128))
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=gen).split(128):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                if not bool(torch.isfinite(loss)):  # nothing saved: a NaN oracle would judge every move
                    raise SystemExit("error: the oracle's loss is not finite; no oracle written")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.advance(task)
    return model.eval()


def oracle(args: argparse.Namespace, x: Tensor, y: Tensor) -> SmallCNN:
    """The oracle classifier of ``--oracle-epochs`` and ``--oracle-seed``: read from its file in
    ``charts/`` (weights only), else trained and saved there."""
    path = args.results / "charts" / f"oracle_e{args.oracle_epochs}_s{args.oracle_seed}.pt"
    model = SmallCNN()
    if path.exists() and not args.synthetic:
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model = train_oracle(x, y, args.oracle_epochs, args.oracle_seed)
    if not args.synthetic:
        tmp = path.with_suffix(".pt.tmp")  # written whole, then renamed: a kill leaves no torn file
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return model


def latent_move(chart: VAE, x: Tensor, eps: float, gen: torch.Generator) -> Tensor:
    """``decode(z + ε·η) − decode(z)`` for a Gaussian latent η scaled to max-abs 1 per image."""
    with torch.no_grad():
        z = chart.encode(x)
        eta = torch.randn(z.shape, generator=gen, dtype=z.dtype)
        eta = eta / eta.flatten(1).abs().amax(1).view(-1, *[1] * (eta.dim() - 1))
        return chart.decode(z + eps * eta) - chart.decode(z)


def tangent_move(model: nn.Module, chart: VAE, x: Tensor, eps: float, batch: int = 250) -> Tensor:
    """TNAR's tangent perturbation of x against ``model`` (its training step, ``reg.last.r_tangent``)."""
    reg = robustreg.TNAR(
        model, chart, eps_tangent=eps, eps_normal=1.0, weights=(1.0, 0.0), tangent="manifold", normalize="official"
    )
    parts = []
    for i in range(0, len(x), batch):
        reg(x[i : i + batch])
        parts.append(reg.last.r_tangent)
    return torch.cat(parts)


def flips(model: nn.Module, judge: nn.Module, x: Tensor, y: Tensor, r: Tensor) -> dict:
    """Over the images ``judge`` labels correctly: the fraction whose judge label changes at x + r
    (overall and per true class), and the fraction whose ``model`` label changes."""
    right = predict(judge, x) == y
    oracle_flip = (predict(judge, x + r) != y) & right
    model_flip = (predict(model, x + r) != predict(model, x)) & right
    n = max(1, int(right.sum()))  # (no image right: every fraction 0)
    per_class = {
        CLASSES[c]: float(oracle_flip[y == c].sum() / right[y == c].sum().clamp_min(1)) for c in range(len(CLASSES))
    }
    return {
        "images": int(right.sum()), "oracle_flip": float(oracle_flip.sum()) / n,
        "model_flip": float(model_flip.sum()) / n, "oracle_flip_per_class": per_class,
        "l2": float(r.flatten(1).norm(dim=1).mean()),
    }  # fmt: skip


def test_errors(model: nn.Module, x: Tensor, y: Tensor) -> dict:
    """The test error (%), per class (None for a class without images), and the confusion counts
    (``confusion[i][j]``: images of class i predicted j)."""
    pred = predict(model, x)
    wrong = pred != y
    k = len(CLASSES)
    per_class = {CLASSES[c]: 100.0 * float(wrong[y == c].float().mean()) if bool((y == c).any()) else None
                 for c in range(k)}  # fmt: skip
    confusion = torch.bincount(y * k + pred, minlength=k * k).view(k, k)
    return {"test_error": 100.0 * float(wrong.float().mean()), "test_error_per_class": per_class,
            "confusion": confusion.tolist()}  # fmt: skip


def classifier_jobs(args: argparse.Namespace) -> tuple[list[tuple[int, str]], dict, list[str]]:
    """``(jobs, weights, missing)``: the (seed, run) pairs of ``--seeds`` × ``--runs`` whose classifier
    ``<results>/seed<N>/<run>.classifier.pt`` exists (every pair with ``--synthetic``), their weight
    files, and the pairs without one (skipped, named; an error when none is left)."""
    jobs = [(s, r) for s in args.seeds for r in args.runs]
    weights = {job: args.results / f"seed{job[0]}" / f"{job[1]}.classifier.pt" for job in jobs}
    missing = [] if args.synthetic else [f"{r}, seed {s}" for (s, r) in jobs if not weights[s, r].exists()]
    if len(missing) == len(jobs):
        raise SystemExit(f"error: no classifier of {', '.join(missing)} in {args.results}: train with fashion_ssl.py")
    if missing:  # a run trained on some seeds only (as TAR and NAR at 8000 iterations): measured where it exists
        print(f"no classifier of {', '.join(missing)}: skipped")
        jobs = [(s, r) for (s, r) in jobs if f"{r}, seed {s}" not in missing]
    return jobs, weights, missing


def run(args: argparse.Namespace) -> dict:
    jobs, weights, missing = classifier_jobs(args)
    x, y, x_test, y_test = load(args)
    (x, y), _ = split(x, y, args)
    xt, yt = x_test[: args.n], y_test[: args.n]  # the images moved
    if args.synthetic:
        torch.manual_seed(0)
        chart = VAE(tuple(x.shape[1:]), latent=4, width=4)
        train_chart(chart, x, epochs=1, batch_size=128)
    else:
        path = chart_path(args.results, "vae", args.chart_tag)
        if not path.exists():
            raise SystemExit(f"error: no chart {path}: run benchmarks/fashion_ssl.py --stage chart first")
        chart = load_chart(path)
    chart.requires_grad_(False)
    judge = oracle(args, x, y)
    report = {"oracle_test_error": 100.0 * float((predict(judge, x_test) != y_test).float().mean()), "n": len(xt)}
    report |= {"chart": {"tag": args.chart_tag, "config": chart.config}}
    report |= {"eps_tangent": args.eps_tangent, "partial": True, "missing": missing, "results": {}}
    with progress_bar() as bar:
        task = bar.add_task("classifiers", total=len(jobs))
        for seed, name in jobs:
            model = SmallCNN()
            if args.synthetic:
                model = train_oracle(x[:256], y[:256], 1, seed)
            else:
                model.load_state_dict(torch.load(weights[seed, name], weights_only=True))
            model.eval()
            row = test_errors(model, x_test, y_test)
            for eps in args.eps_tangent:
                torch.manual_seed(seed)
                gen = torch.Generator().manual_seed(seed)
                row[str(eps)] = {
                    "tangent": flips(model, judge, xt, yt, tangent_move(model, chart, xt, eps)),
                    "random": flips(model, judge, xt, yt, latent_move(chart, xt, eps, gen)),
                }
            report["results"][f"{name}, seed {seed}"] = row
            write_json(args.out, report)
            bar.advance(task)
    report["partial"] = False
    write_json(args.out, report)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument("--runs", default="tnar@it8k,vat@it8k", help="comma list of the protocol's runs")
    p.add_argument("--seeds", default="0,1", help="comma list of seeds")
    p.add_argument("--eps-tangent", default="0.1,0.25,0.5", help="comma list of ε_t (latent units)")
    p.add_argument("--n", type=int, default=2000, help="test images moved")
    p.add_argument("--oracle-epochs", type=int, default=3, help="epochs of the oracle's training")
    p.add_argument("--oracle-seed", type=int, default=0, help="seeds the oracle's training")
    p.add_argument("--val-size", type=int, default=1000, help="the protocol's validation split (not trained on)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--synthetic", action="store_true", help="random tensors, a throwaway chart and classifiers")
    add_data_dir(p)
    p.add_argument("--results", type=Path, default=RESULTS, help="fashion_ssl.py's results (charts, classifiers)")
    p.add_argument("--chart-tag", default="", help="the moves follow charts/vae@<tag> (empty: charts/vae)")
    p.add_argument(
        "--out", type=Path, default=None, help="report (default: <results>/tangent_flips[@<chart-tag>].json)"
    )
    args = p.parse_args(argv)
    args.runs = [r for r in args.runs.split(",") if r]
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s]
        args.eps_tangent = [float(e) for e in args.eps_tangent.split(",") if e]
    except ValueError:
        p.error("--seeds must be integers and --eps-tangent numbers, comma-separated")
    if not args.runs or not args.seeds or not args.eps_tangent:
        p.error("--runs, --seeds and --eps-tangent: give at least one each")
    if not all(0 < e < float("inf") for e in args.eps_tangent):
        p.error(f"--eps-tangent must be finite numbers > 0, got {args.eps_tangent}")
    for name in ("n", "oracle_epochs", "val_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    check_tags(p, args, ("chart_tag",))
    args.out = args.out or args.results / (
        f"tangent_flips@{args.chart_tag}.json" if args.chart_tag else "tangent_flips.json"
    )
    args.per_class = 10  # split()'s check: enough training images left
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    for name, row in report["results"].items():
        print(f"{name}: test error {row['test_error']:.2f}%")
        for eps in map(str, args.eps_tangent):
            moves = row[eps]
            t, r = moves["tangent"], moves["random"]
            print(
                f"{name}, ε_t = {eps}: oracle flips {100 * t['oracle_flip']:.1f}% (random direction "
                f"{100 * r['oracle_flip']:.1f}%), the classifier's own {100 * t['model_flip']:.1f}%"
            )
    print(f"oracle test error {report['oracle_test_error']:.2f}%; moves of {report['n']} test images")


if __name__ == "__main__":
    main()
