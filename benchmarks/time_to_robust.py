"""Robust accuracy against training time on real MNIST: PGD-40 adversarial training vs YOPO-5-10
(the YOPO paper's Fig. 2), each for the same wall-clock budget.

    python benchmarks/time_to_robust.py --budget-s 1200 --out runs/time_to_robust

SmallCNN, ε = 0.3 (ℓ∞), batch 128, Adam (lr 1e-3 by default, the same for both). YOPO uses
f0 = conv1 + ReLU (``model.layer_one``), m = 5, n = 10; the papers' MNIST step α = 0.01 serves
PGD-40 and YOPO's inner steps alike. Every ``--eval-every-s``
seconds of *training* time the run pauses its clock and evaluates clean and PGD-20 robust
accuracy (ε = 0.3, α = 0.01, random start) on a fixed subset of the test set (the first
``--n-test`` images). It writes ``curves.json`` (every evaluation point of every method, plus
the time each method needed to reach the PGD-40 run's final robust accuracy) and
``robust_vs_time.png`` (needs matplotlib: ``pip install -e ".[plot]"``). The time to reach the
target is given at evaluation granularity (the first evaluation at or above it) and linearly
interpolated between the evaluations around the crossing. ``--summarize curves.json`` recomputes
the summary and the plot of a saved run.

The learning rate is exposed on purpose: the official YOPO MNIST code sums its m gradients and
divides the learning rate by m (SGD 0.1/5), which is SGD at 0.1 on the mean gradient that
:class:`robustreg.YOPO` returns; that run is reported to collapse, so the default here is a
stable Adam at 1e-3 for both methods.

Data: ``--data-dir`` holds ``MNIST/raw/*.gz`` (torchvision's layout); by default
``$ROBUSTREG_DATA`` or ``../shared/data`` next to this repository. The files are copied to a
temporary directory when the given one is read-only (torchvision extracts them).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robustreg
from robustreg.models import SmallCNN

log = logging.getLogger("time_to_robust")
ROOT = Path(__file__).resolve().parents[1]
EPS, ALPHA = 0.3, 0.01


def load_mnist(data_dir: Path) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """MNIST as float tensors in [0, 1], through torchvision (no hand-written parser)."""
    import torchvision

    raw = data_dir / "MNIST" / "raw"
    if not raw.is_dir():
        raise SystemExit(f"MNIST not found: place train-images-idx3-ubyte.gz etc. in {raw} (torchvision layout)")
    root = data_dir
    if not os.access(raw, os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="mnist-"))
        shutil.copytree(raw, root / "MNIST" / "raw")
    train = torchvision.datasets.MNIST(root, train=True, download=True)
    test = torchvision.datasets.MNIST(root, train=False, download=True)

    def tensors(ds) -> tuple[Tensor, Tensor]:
        return (ds.data.float() / 255).unsqueeze(1), ds.targets  # (N, 1, 28, 28), (N,)

    return tensors(train), tensors(test)


def make_method(name: str, model: SmallCNN):
    if name == "pgd40":
        return robustreg.PGDAT(model, eps=EPS, alpha=ALPHA, steps=40)
    if name == "yopo5-10":
        return robustreg.YOPO(model, m=5, n=10, eps=EPS, alpha=ALPHA, first_layer=model.layer_one)
    if name == "natural":
        return lambda x, y: F.cross_entropy(model(x), y)
    raise SystemExit(f"unknown method {name!r}")


def evaluate(model: nn.Module, test: tuple[Tensor, Tensor]) -> dict[str, float]:
    attack = robustreg.PGD(eps=EPS, alpha=ALPHA, steps=20)
    acc = robustreg.robust_accuracy(model, test, attack=attack, batch_size=500)
    return {"clean": acc.clean, "robust": acc.robust}


def run(name: str, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], args) -> list[dict]:
    """Train ``name`` for ``args.budget_s`` seconds of training time, evaluating on the way."""
    torch.manual_seed(args.seed)
    model = SmallCNN().train()
    loss_fn = make_method(name, model)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    x, y = train
    gen = torch.Generator().manual_seed(args.seed)
    curve = [{"train_s": 0.0, "step": 0, "epoch": 0.0, **evaluate(model, test)}]
    trained, step, next_eval = 0.0, 0, args.eval_every_s
    while trained < args.budget_s:
        for idx in torch.randperm(x.shape[0], generator=gen).split(args.batch_size):
            start = time.perf_counter()
            loss = loss_fn(x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            trained += time.perf_counter() - start
            step += 1
            if trained >= next_eval or trained >= args.budget_s:
                point = {"train_s": trained, "step": step, "epoch": step * args.batch_size / x.shape[0]}
                point |= evaluate(model, test)
                model.train()
                curve.append(point)
                log.info("%s %s", name, json.dumps({k: round(v, 4) for k, v in point.items()}))
                next_eval += args.eval_every_s
            if trained >= args.budget_s:
                break
    return curve


def time_to_reach(curve: list[dict], target: float) -> float | None:
    """Training seconds at the first evaluation whose robust accuracy is ≥ ``target``."""
    return next((p["train_s"] for p in curve if p["robust"] >= target), None)


def time_to_reach_interpolated(curve: list[dict], target: float) -> float | None:
    """The crossing of ``target``, linearly interpolated between the two evaluations around it
    (evaluations are ``--eval-every-s`` apart, so the first one above can be late by that much)."""
    for before, after in itertools.pairwise(curve):
        if after["robust"] >= target:
            if before["robust"] >= target:
                return before["train_s"]
            w = (target - before["robust"]) / (after["robust"] - before["robust"])
            return before["train_s"] + w * (after["train_s"] - before["train_s"])
    return None


def summarize(report: dict) -> dict:
    """Target (PGD-40's final robust accuracy), each method's time to reach it, and the ratios."""
    curves = report["curves"]
    for key in [k for k in report if k.startswith(("target_", "time_to_target", "yopo_over_pgd40"))]:
        del report[key]  # recomputed below
    if "pgd40" not in curves:
        return report
    target = curves["pgd40"][-1]["robust"]
    report["target_robust"] = target
    for key, fn in (("time_to_target_s", time_to_reach), ("time_to_target_interpolated_s", time_to_reach_interpolated)):
        reach = {name: fn(c, target) for name, c in curves.items()}
        report[key] = reach
        if reach.get("yopo5-10") is not None and reach.get("pgd40"):
            ratio_key = key.replace("time_to_target", "yopo_over_pgd40").removesuffix("_s")
            report[ratio_key] = reach["yopo5-10"] / reach["pgd40"]
    return report


def plot(curves: dict[str, list[dict]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install -e '.[plot]'): no plot written")
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot([p["train_s"] / 60 for p in curve], [100 * p["robust"] for p in curve], marker="o", label=name)
    ax.set_xlabel("training time (min, CPU)")
    ax.set_ylabel(f"PGD-20 accuracy (%), ε = {EPS}")
    ax.set_title("MNIST SmallCNN: robust accuracy vs training time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict:
    default_data = Path(os.environ.get("ROBUSTREG_DATA", ROOT.parent / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=default_data)
    p.add_argument("--methods", default="pgd40,yopo5-10")
    p.add_argument("--budget-s", type=float, default=1200.0, help="training seconds per method")
    p.add_argument("--eval-every-s", type=float, default=120.0, help="training seconds between evaluations")
    p.add_argument("--n-test", type=int, default=1000, help="fixed test subset: the first N test images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, the same for every method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "time_to_robust")
    p.add_argument("--summarize", type=Path, help="recompute the summary of a saved curves.json (and its plot)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.summarize:
        report = summarize(json.loads(args.summarize.read_text()))
        args.summarize.write_text(json.dumps(report, indent=2) + "\n")
        plot(report["curves"], args.summarize.with_name("robust_vs_time.png"))
        print(json.dumps({k: v for k, v in report.items() if k != "curves"}, indent=2))
        return report
    train, (xt, yt) = load_mnist(args.data_dir)
    test = (xt[: args.n_test], yt[: args.n_test])
    curves = {name: run(name, train, test, args) for name in args.methods.split(",")}
    report: dict = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    report["config"] |= {"torch": torch.__version__, "threads": torch.get_num_threads(), "eps": EPS, "alpha": ALPHA}
    report["curves"] = curves
    summarize(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curves.json").write_text(json.dumps(report, indent=2) + "\n")
    if plot(curves, args.out / "robust_vs_time.png"):
        report["plot"] = str(args.out / "robust_vs_time.png")
    print(json.dumps({k: v for k, v in report.items() if k != "curves"}, indent=2))
    return report


if __name__ == "__main__":
    main()
