"""Does a second CPU thread help? Training-step time at 1 and 2 torch threads for the recipes'
workloads, which decides the recipes' ``--threads 0`` default (``recipes/skeleton.py``,
``auto_threads``).

Workloads (one optimisation step each: ``zero_grad``, loss, ``backward``, ``step``):

- ``rings-vat``: the main job's step (``recipes/semisupervised.py`` on two rings): MLP 2-100-100-2,
  6 labeled + 128 unlabeled points, CE + VAT, Adam;
- ``rings-trades``: ``recipes/robust.py --dataset two-rings --method trades``: MLP 50-64-64-2,
  batch 128, TRADES with 7 steps, Adam;
- ``mnist-pgd10``: SmallCNN, batch 128 of MNIST-shaped images, PGD-AT with 10 steps, SGD;
- ``mnist-vat``: SmallCNN, 32 labeled + 64 unlabeled MNIST-shaped images, CE + VAT, Adam.

How: every workload is built once; each of ``--repeats`` rounds times every (workload, threads)
pair once, in an order rotated every round, so that drift in machine speed hits all alike; a
timing covers ``--steps-per-timing`` steps (more for the fast MLPs). The report gives per pair
the median seconds per step and every timing, and per workload the ratio 2 threads / 1 thread
(below 1: the second thread helps). The load average before and after is recorded: measure on
a quiet machine, since a second thread that has to share a core with another process is far
slower (the point of the measurement).

    python benchmarks/threads.py --out benchmarks/results/threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console

import robustreg
from robustreg import cli
from robustreg.checkpoint import atomic_write_text
from robustreg.models import MLP, SmallCNN

from reporting import loadavg

WORKLOADS = ("rings-vat", "rings-trades", "mnist-pgd10", "mnist-vat")
STEPS_PER_TIMING = {"rings-vat": 20, "rings-trades": 10, "mnist-pgd10": 1, "mnist-vat": 2}


def build(name: str, seed: int) -> Callable[[], None]:
    """One training step of ``name`` as a closure over its model, optimizer, loss object and data."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "rings-vat":
        model, x_l, x_u = MLP(2), torch.randn(6, 2, generator=gen), torch.randn(128, 2, generator=gen)
        y_l = torch.randint(0, 2, (6,), generator=gen)
        reg, opt = robustreg.VAT(model, eps=0.3), torch.optim.Adam(model.parameters(), 1e-3)
    elif name == "mnist-vat":
        model = SmallCNN()
        x_l, x_u = torch.rand(32, 1, 28, 28, generator=gen), torch.rand(64, 1, 28, 28, generator=gen)
        y_l = torch.randint(0, 10, (32,), generator=gen)
        reg, opt = robustreg.VAT(model, eps=2.0), torch.optim.Adam(model.parameters(), 1e-3)
    if name in ("rings-vat", "mnist-vat"):

        def ssl_step() -> None:
            logits = model(torch.cat([x_l, x_u]))
            loss = F.cross_entropy(logits[: len(x_l)], y_l) + reg(x_u, logits=logits[len(x_l) :])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return ssl_step
    if name == "rings-trades":
        model = MLP(50, hidden=(64, 64))
        x, y = torch.randn(128, 50, generator=gen), torch.randint(0, 2, (128,), generator=gen)
        loss_fn = robustreg.TRADES(model, eps=0.25, alpha=0.0625, steps=7, bounds=None)
        opt = torch.optim.Adam(model.parameters(), 3e-3)
    elif name == "mnist-pgd10":
        model = SmallCNN()
        x, y = torch.rand(128, 1, 28, 28, generator=gen), torch.randint(0, 10, (128,), generator=gen)
        loss_fn = robustreg.PGDAT(model, eps=0.3, alpha=0.075, steps=10)
        opt = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9)
    else:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {name!r}")

    def sup_step() -> None:
        loss = loss_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return sup_step


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list")
    p.add_argument("--threads", default="1,2", help="comma list of thread counts")
    p.add_argument("--repeats", type=int, default=9, help="timed rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--seed", type=int, default=0, help="seeds the models and the batches")
    p.add_argument("--out", type=Path, default=None, help="the JSON report (also written after every round)")
    args = p.parse_args(argv)
    names = args.workloads.split(",")
    if unknown := set(names) - set(WORKLOADS):
        p.error(f"--workloads: unknown {sorted(unknown)}; choose from {WORKLOADS}")
    counts = [int(t) for t in args.threads.split(",")]
    if args.repeats < 1 or args.warmup < 0 or min(counts) < 1:
        p.error("--repeats must be >= 1, --warmup >= 0 and every --threads >= 1")
    steps = {name: build(name, args.seed) for name in names}
    pairs = [(name, t) for name in names for t in counts]
    times: dict[str, list[float]] = {f"{n}@{t}": [] for n, t in pairs}
    report: dict[str, Any] = {
        "config": {**vars(args), "out": str(args.out), "torch": torch.__version__, "cpus": os.cpu_count(),
                   "machine": platform.machine(), "loadavg_start": loadavg(),
                   "steps_per_timing": {n: STEPS_PER_TIMING[n] for n in names}},
    }  # fmt: skip
    default_threads = torch.get_num_threads()
    try:
        with cli.progress_bar(console=Console(stderr=True), timed=True) as bar:
            task = bar.add_task("rounds (warm-up first)", total=args.warmup + args.repeats)
            for r in range(args.warmup + args.repeats):
                k = r % len(pairs)
                for name, t in pairs[k:] + pairs[:k]:
                    torch.set_num_threads(t)
                    start = time.perf_counter()
                    for _ in range(STEPS_PER_TIMING[name]):
                        steps[name]()
                    if r >= args.warmup:
                        times[f"{name}@{t}"].append((time.perf_counter() - start) / STEPS_PER_TIMING[name])
                bar.update(task, advance=1, refresh=True)
                if r >= args.warmup:
                    report |= summarise(times, names, counts)
                    report["config"]["loadavg_end"] = loadavg()
                    report["partial"] = r < args.warmup + args.repeats - 1  # true until the last round
                    if args.out:
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        atomic_write_text(args.out, json.dumps(report, indent=2))
    finally:
        torch.set_num_threads(default_threads)
    print(json.dumps({k: report[k] for k in ("median_s", "ratio")}, indent=2))
    return report


def summarise(times: dict[str, list[float]], names: list[str], counts: list[int]) -> dict[str, Any]:
    """Medians per (workload, threads), and per workload each count's median over the first's."""
    median = {key: statistics.median(v) for key, v in times.items() if v}
    ratio = {
        name: {f"{t}/{counts[0]}": median[f"{name}@{t}"] / median[f"{name}@{counts[0]}"] for t in counts[1:]}
        for name in names
    }
    return {"median_s": median, "ratio": ratio, "times_s": times}


if __name__ == "__main__":
    main()
