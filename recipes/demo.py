"""The robust-training demo on generated data, in about half a minute on a laptop CPU.

    python recipes/demo.py

Trains the same MLP on two rings with 48 nuisance dimensions (:func:`robustreg.data.two_rings`)
naturally and with PGD-AT, Fast-AT, Free-AT and TRADES, then reports clean, AutoAttack (APGD, from
the authors' ``pyautoattack`` when the ``eval`` extra is installed), PGD-20 and CW-20 accuracy
(ℓ∞, ε = 0.25, no input box), their per-sample worst case and each run's training time, and runs
the gradient-masking checks (convergence and the gap to APGD included) on the PGD-AT model.
Without ``pyautoattack`` the AutoAttack column reads n/a and the worst case is over PGD and CW
only, which the table says. Natural training is accurate but not robust;
every adversarial method is both. The training ε grows linearly over the first quarter of the
epochs: at the full ε from the start, PGD-AT and Fast-AT collapsed to a constant classifier on
seeds 1 and 2.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import Tensor, nn

from robustreg import cli
from robustreg.adversarial import PGDAT, TRADES, AdversarialLoss, EpsWarmup, FastAT, FreeAT, replay
from robustreg.attacks import CW, PGD
from robustreg.autoattack import INSTALL, AutoAttack, available
from robustreg.data import two_rings
from robustreg.evaluate import gradient_masking_report, robust_accuracy

METHODS = ("natural", "pgdat", "fast", "free", "trades")
FREE_REPLAYS = 4


def mlp(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))


def make_loss(method: str, model: nn.Module, eps: float) -> Callable[[Tensor, Tensor], Tensor]:
    common = {"eps": eps, "bounds": None}
    if method == "natural":
        return lambda x, y: F.cross_entropy(model(x), y)
    if method == "pgdat":
        return PGDAT(model, alpha=eps / 4, steps=7, **common)
    if method == "fast":
        return FastAT(model, **common)
    if method == "free":
        return FreeAT(model, alpha=eps / 2, **common)
    return TRADES(model, alpha=eps / 4, steps=7, beta=6.0, **common)


def train(method: str, data: tuple[Tensor, Tensor], args: argparse.Namespace, progress: Progress) -> nn.Module:
    torch.manual_seed(args.seed)
    x, y = data
    model = mlp(x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = make_loss(method, model, args.eps)
    # Free-AT replays each batch m times and runs epochs/m passes, for the same cost.
    epochs, m = (max(1, args.epochs // FREE_REPLAYS), FREE_REPLAYS) if method == "free" else (args.epochs, 1)
    task = progress.add_task(f"{method:>8}", total=epochs)
    # ε (and α with it) grows linearly over the first quarter of the passes: at the full ε from the
    # start, adversarial training of this MLP collapses to a constant classifier on most seeds
    warmup = EpsWarmup(loss_fn, max(1, epochs // 4)) if isinstance(loss_fn, AdversarialLoss) else None
    for epoch in range(epochs):
        if warmup is not None:
            warmup.set_epoch(epoch)
        order = torch.randperm(x.shape[0])
        batches = ((x[i], y[i]) for i in order.split(args.batch_size))
        for xb, yb in replay(batches, m):
            loss = loss_fn(xb, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        progress.advance(task)
    return model


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(
        prog="python recipes/demo.py", description=cli.summary(__doc__), formatter_class=cli.HelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=20, help="training epochs per method")
    parser.add_argument("--eps", type=float, default=0.25, help="ℓ∞ radius for training and evaluation")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch")
    parser.add_argument("--n-train", type=int, default=4000, help="training points")
    parser.add_argument("--n-test", type=int, default=1000, help="test points")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data, the models and the attacks")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (the small MLPs gain nothing from a second one)"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list from {METHODS}")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(parser, args)
    finally:
        torch.set_num_threads(threads_before)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    methods = [m for m in args.methods.split(",") if m]
    if unknown := set(methods) - set(METHODS):
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")

    gen = torch.Generator().manual_seed(args.seed)
    train_data = two_rings(args.n_train, generator=gen)
    test_data = two_rings(args.n_test, generator=gen)
    attacks = {
        "pgd20": PGD(eps=args.eps, steps=20, bounds=None),  # α = 2.5ε/20: the steps cross the ball
        "cw20": CW(eps=args.eps, steps=20, bounds=None),
    }
    with_aa = available()
    if with_aa:
        attacks["autoattack"] = AutoAttack(eps=args.eps, version="apgd", bounds=None, seed=args.seed)
    # One untimed step first, so that the first method's time holds no one-off start-up cost
    # (the first optimizer step imports and compiles ~2 s of lazily loaded code).
    warm = mlp(train_data[0].shape[1])
    F.cross_entropy(warm(train_data[0][: args.batch_size]), train_data[1][: args.batch_size]).backward()
    torch.optim.Adam(warm.parameters()).step()
    console = Console(stderr=args.json)
    results: dict[str, dict[str, float]] = {}
    models: dict[str, nn.Module] = {}
    with Progress(console=console, transient=True, disable=args.json) as progress:
        for method in methods:
            start = time.perf_counter()
            models[method] = train(method, train_data, args, progress)
            seconds = time.perf_counter() - start
            acc = robust_accuracy(models[method], test_data, attack=attacks)
            results[method] = {"clean": acc.clean, **acc.per_attack, "robust": acc.robust, "train_s": seconds}

    if args.json:
        print(json.dumps(results, indent=2))
        return results
    table = Table(title=f"two rings + 48 nuisance dims, ℓ∞ ε = {args.eps}, {args.epochs} epochs")
    worst = "robust (worst)" if with_aa else "robust (PGD/CW only)"
    for col in ("method", "clean", "AutoAttack", "PGD-20", "CW-20", worst, "train time"):
        table.add_column(col, justify="right")
    for method, r in results.items():
        aa = f"{r['autoattack']:.1%}" if with_aa else "n/a"
        table.add_row(
            method, f"{r['clean']:.1%}", aa, f"{r['pgd20']:.1%}", f"{r['cw20']:.1%}", f"{r['robust']:.1%}",
            f"{r['train_s']:.1f} s",
        )  # fmt: skip
    console.print(table)
    if not with_aa:
        console.print(f"no AutoAttack (pyautoattack is not installed: {INSTALL}): not an AutoAttack-grade figure")
    if "pgdat" in models:
        report = gradient_masking_report(models["pgdat"], test_data, eps=args.eps, bounds=None, steps=(10, 40))
        verdict = "[green]passed[/]" if report.passed else "[red]FAILED[/]"
        console.print(f"gradient-masking checks on the PGD-AT model: {verdict}")
        for check in report.checks:
            mark = {True: "ok  ", False: "FAIL", None: "skip"}[check.passed]
            console.print(f"  {mark} {check.name}: {check.detail}")
    return results


if __name__ == "__main__":
    main()
