"""Robust accuracy against training time on real MNIST: PGD-40 adversarial training, Amata,
YOPO-5-10 and Amata+YOPO, each for the same budget of training time (the YOPO paper's Fig. 2,
the Amata paper's time comparison).

    python benchmarks/time_to_robust.py --budget-s 720 --eval-every-s 72 --out benchmarks/results/time_to_robust

SmallCNN, ε = 0.3 (ℓ∞), batch 128, Adam (lr 1e-3 by default, the same for every method).

- ``pgd40``: PGD-AT with 40 steps of α = 0.01 (the papers' MNIST setting).
- ``amata``: Amata on PGD-AT, K from 5 to 40 (linear), α_t = τ/K_t with τ = 40·0.01 = 0.4.
- ``yopo5-10``: YOPO with f0 = conv1 + ReLU (``model.layer_one``), m = 5, n = 10, α = 0.01.
- ``amata-yopo``: Amata on YOPO, m from 2 to 5 (n = 10), α_t = τ/m_t with τ = 5·0.01.

Progress t/T of the Amata schedules is the method's training time over the budget. The methods
run interleaved, each with its own clock, always stepping the one whose clock is the furthest
behind: the clocks advance together, so the machine's speed drifts (large on shared VMs) hit
the same stretch of every method's training. Every ``--eval-every-s``
seconds of a method's *training* time its clock pauses for an evaluation: clean and PGD-20
robust accuracy (ε = 0.3, α = 0.01, random start) on a fixed subset of the test set (the first
``--n-test`` images), and the mean FOSC of the PGD-20 adversaries. At the ``--c-at`` fractions
of its budget, the Amata run computes criterion C (:func:`robustreg.criterion_c`, γ =
``--gamma``) on a fixed training batch for its own (α_t, K_t) and for PGD-10, PGD-20 and
PGD-40 (the Amata paper's Table 1). It writes ``curves.json`` (every evaluation point, the C
table, the time each method needed to reach the PGD-40 run's final robust accuracy, and the
ratios) and ``robust_vs_time.png``. The time to
reach the target is given at evaluation granularity (the first evaluation at or above it) and
linearly interpolated between the evaluations around the crossing. ``--summarize curves.json``
recomputes the summary and the plot of a saved run.

The learning rate is exposed on purpose: the official YOPO MNIST code sums its m gradients and
divides the learning rate by m (SGD 0.1/5), which is SGD at 0.1 on the mean gradient that
:class:`robustreg.YOPO` returns; that run is reported to collapse, so the default here is a
stable Adam at 1e-3 for every method.

Data: ``--data-dir`` holds ``MNIST/raw/*.gz`` (torchvision's layout); by default
``$ROBUSTREG_DATA`` or ``../shared/data`` next to this repository, read by
:func:`robustreg.data.load_vision` (which works on a copy when the directory is read-only).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robustreg
from robustreg.data import load_vision
from robustreg.models import SmallCNN

log = logging.getLogger("time_to_robust")
ROOT = Path(__file__).resolve().parents[1]
EPS, ALPHA = 0.3, 0.01


def load_mnist(data_dir: Path) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """MNIST as float tensors in [0, 1], through torchvision (:func:`robustreg.data.load_vision`)."""
    try:
        return load_vision("mnist", data_dir, train=True), load_vision("mnist", data_dir, train=False)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None


AMATA_TAU = 40 * ALPHA  # Amata+PGD: the PGD-40 attack's total length, K_t·α_t = 0.4
YOPO_TAU = 5 * ALPHA  # Amata+YOPO: m_t·α_t = YOPO-5-10's 5 × 0.01, so every run travels n·τ = 0.5
C_SETTINGS = {"pgd10": (10, AMATA_TAU / 10), "pgd20": (20, AMATA_TAU / 20), "pgd40": (40, ALPHA)}  # (K, α)


def make_method(name: str, model: SmallCNN):
    """The loss object of ``name``; Amata variants are driven by progress = training time / budget."""
    if name == "pgd40":
        return robustreg.PGDAT(model, eps=EPS, alpha=ALPHA, steps=40)
    if name == "amata":
        return robustreg.Amata(robustreg.PGDAT(model, eps=EPS), k_min=5, k_max=40, tau=AMATA_TAU)
    if name == "yopo5-10":
        return robustreg.YOPO(model, m=5, n=10, eps=EPS, alpha=ALPHA, first_layer=model.layer_one)
    if name == "amata-yopo":
        yopo = robustreg.YOPO(model, m=5, n=10, eps=EPS, alpha=ALPHA, first_layer=model.layer_one)
        return robustreg.Amata(yopo, k_min=2, k_max=5, tau=YOPO_TAU)
    if name == "natural":
        return lambda x, y: F.cross_entropy(model(x), y)
    raise SystemExit(f"unknown method {name!r}")


def evaluate(model: nn.Module, test: tuple[Tensor, Tensor]) -> dict[str, float]:
    """Clean and PGD-20 accuracy on the test subset, and the mean FOSC of PGD-20's adversaries
    on its first 128 images (how close the evaluation attack gets to a stationary point)."""
    attack = robustreg.PGD(eps=EPS, alpha=ALPHA, steps=20)
    acc = robustreg.robust_accuracy(model, test, attack=attack, batch_size=500)
    x, y = test[0][:128], test[1][:128]
    c = robustreg.fosc(model, x, attack(model, x, y), y, eps=EPS)
    return {"clean": acc.clean, "robust": acc.robust, "fosc_pgd20": float(c.mean())}


def criterion_row(model: nn.Module, batch: tuple[Tensor, Tensor], current: tuple[int, float], gamma: float) -> dict:
    """Criterion C on a fixed training batch for the run's current setting and for PGD-10/20/40
    (one search over the default grid, every setting from one common start)."""
    x, y = batch
    c = robustreg.criterion_c(model, x, y, steps=current[0], alpha=current[1], eps=EPS, gamma=gamma, candidates=_grid())
    row = {"current": list(current), "best": list(c.best), "C_current": c.value}
    for name, setting in C_SETTINGS.items():
        row[f"C_{name}"] = max(c.scores.values()) - c.scores[setting]
    return row


def _grid() -> list[tuple[int, float]]:
    ks = robustreg.diagnostics.DEFAULT_KS
    alphas = [EPS * f for f in robustreg.diagnostics.DEFAULT_ALPHA_FRACTIONS]
    return [(k, a) for k in ks for a in alphas] + list(C_SETTINGS.values())


def trainer(name: str, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], args, curve: list, table: list):
    """Train ``name`` for ``args.budget_s`` seconds of its own training time, one step per
    ``next()``, which returns the training time so far (:func:`run_all` interleaves the runs).
    Evaluations (and, for Amata, criterion C at ``--c-at`` fractions of the budget) pause the clock."""
    torch.manual_seed(args.seed)
    model = SmallCNN().train()
    loss_fn = make_method(name, model)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    x, y = train
    c_batch = (x[: args.c_batch], y[: args.c_batch])
    c_marks = [float(f) * args.budget_s for f in args.c_at.split(",")] if name == "amata" and args.c_at else []
    gen = torch.Generator().manual_seed(args.seed)
    curve.append({"train_s": 0.0, "step": 0, "epoch": 0.0, **evaluate(model, test)})
    model.train()
    trained, step, next_eval = 0.0, 0, args.eval_every_s
    while trained < args.budget_s:
        for idx in torch.randperm(x.shape[0], generator=gen).split(args.batch_size):
            yield trained
            start = time.perf_counter()
            if isinstance(loss_fn, robustreg.Amata):
                loss_fn.set_progress(min(1.0, trained / args.budget_s))
            loss = loss_fn(x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            trained += time.perf_counter() - start
            step += 1
            done = trained >= args.budget_s
            if trained >= next_eval or done:
                point = {"train_s": trained, "step": step, "epoch": step * args.batch_size / x.shape[0]}
                if isinstance(loss_fn, robustreg.Amata):
                    point |= {"K": loss_fn.K, "alpha": loss_fn.alpha}
                point |= evaluate(model, test)
                model.train()
                curve.append(point)
                log.info("%s %s", name, json.dumps({k: round(v, 4) for k, v in point.items()}))
                next_eval += args.eval_every_s
            while c_marks and (trained >= c_marks[0] or done):
                c_marks.pop(0)
                row = {"train_s": trained, "progress": loss_fn.progress}
                row |= criterion_row(model, c_batch, loss_fn.knobs(), args.gamma)
                model.train()
                table.append(row)
                log.info("criterion C %s", json.dumps(row))
            if done:
                return


def run_all(names: list[str], train, test, args) -> tuple[dict[str, list], list]:
    """Every method to its budget, always stepping the one whose clock is the furthest behind:
    the clocks advance together, so a slow spell of the machine covers the same stretch of
    training time in every run."""
    curves: dict[str, list] = {name: [] for name in names}
    table: list = []
    runs = {name: trainer(name, train, test, args, curves[name], table) for name in names}
    clocks = {name: 0.0 for name in names}
    while runs:
        name = min(runs, key=lambda n: (clocks[n], names.index(n)))
        try:
            clocks[name] = next(runs[name])
        except StopIteration:
            del runs[name]
    return curves, table


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


RATIOS = [("yopo5-10", "pgd40"), ("amata", "pgd40"), ("amata-yopo", "pgd40"), ("amata-yopo", "yopo5-10")]


def summarize(report: dict) -> dict:
    """Target (PGD-40's final robust accuracy), each method's time to reach it, and the ratios."""
    curves = report["curves"]
    for key in [k for k in report if k.startswith(("target_", "time_to_target", "ratios", "yopo_over_pgd40"))]:
        del report[key]  # recomputed below
    if "pgd40" not in curves:
        return report
    target = curves["pgd40"][-1]["robust"]
    report["target_robust"] = target
    for suffix, fn in (("", time_to_reach), ("_interpolated", time_to_reach_interpolated)):
        reach = {name: fn(c, target) for name, c in curves.items()}
        report[f"time_to_target{suffix}_s"] = reach
        report[f"ratios{suffix}"] = {
            f"{a} / {b}": reach[a] / reach[b] for a, b in RATIOS if reach.get(a) is not None and reach.get(b)
        }
    return report


def plot(curves: dict[str, list[dict]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    p.add_argument("--methods", default="pgd40,amata,yopo5-10,amata-yopo")
    p.add_argument("--budget-s", type=float, default=900.0, help="training seconds per method")
    p.add_argument("--eval-every-s", type=float, default=60.0, help="training seconds between evaluations")
    p.add_argument("--n-test", type=int, default=1000, help="fixed test subset: the first N test images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, the same for every method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--c-at", default="0.1,0.4,0.7,1.0", help="fractions of the budget where Amata's run computes C")
    p.add_argument("--c-batch", type=int, default=128, help="training images (the first N) for criterion C")
    p.add_argument("--gamma", type=float, default=0.04, help="criterion C's cost per step γ")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "time_to_robust")
    p.add_argument("--summarize", type=Path, help="recompute the summary of a saved curves.json (and its plot)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.summarize:
        report = summarize(json.loads(args.summarize.read_text()))
        args.summarize.write_text(json.dumps(report, indent=2) + "\n")
        plot(report["curves"], args.summarize.with_name("robust_vs_time.png"))
        print(json.dumps({k: v for k, v in report.items() if k not in ("curves", "criterion_c")}, indent=2))
        return report
    train, (xt, yt) = load_mnist(args.data_dir)
    test = (xt[: args.n_test], yt[: args.n_test])
    curves, table = run_all(args.methods.split(","), train, test, args)
    report: dict = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    report["config"] |= {"torch": torch.__version__, "threads": torch.get_num_threads(), "eps": EPS, "alpha": ALPHA}
    report["curves"] = curves
    report["criterion_c"] = table
    summarize(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curves.json").write_text(json.dumps(report, indent=2) + "\n")
    if plot(curves, args.out / "robust_vs_time.png"):
        report["plot"] = str(args.out / "robust_vs_time.png")
    print(json.dumps({k: v for k, v in report.items() if k != "curves"}, indent=2))
    return report


if __name__ == "__main__":
    main()
