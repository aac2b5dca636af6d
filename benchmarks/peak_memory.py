"""Peak memory of one training step, YOPO against PGD (CPU).

    python benchmarks/peak_memory.py

Each (method, repeat) runs in a fresh Python process: it builds SmallCNN, runs one warm-up step
on a batch of 2 (so that lazily created kernels and caches exist), reads the process's peak
resident set size, runs one step on an MNIST-shaped batch of ``--batch-size`` (128), and reports
how far the peak grew: the memory that step needed at its peak beyond what the process already
held. The report gives the median over ``--repeats`` processes per method and the ratio
YOPO-5-3 / PGD-10, the issue's yardstick (≤ 1.25). YOPO never holds more than one pass's graph:
each pass's graph is freed by ``torch.autograd.grad`` before the next pass starts, and nothing of
a pass but η outlives it.

The children run with ``MALLOC_MMAP_THRESHOLD_=131072`` (glibc): tensors above 128 KiB are mapped
and unmapped on their own, so the resident set follows the tensors alive at each moment instead
of what glibc's heap happens to keep cached (without it the same step's peak varies by ±15 MiB
from process to process). ``--glibc-cache`` measures with glibc's defaults instead.

A progress bar (with an ETA) goes to stderr and the report to stdout; with ``--out``, the report is
also written there after every child process, with ``"partial": true`` until the last one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

METHODS = ("natural", "pgd10", "yopo5-3", "yopo5-10")


def one(method: str, batch_size: int) -> float:
    """Run in a child process: the growth of peak RSS (MiB) caused by one full-size step."""
    import robustreg
    from robustreg.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN().train()
    loss_fn = {
        "natural": lambda x, y: F.cross_entropy(model(x), y),
        "pgd10": robustreg.PGDAT(model, eps=0.3, alpha=0.01, steps=10),
        "yopo5-3": robustreg.YOPO(model, m=5, n=3, eps=0.3, alpha=0.01, first_layer=model.layer_one),
        "yopo5-10": robustreg.YOPO(model, m=5, n=10, eps=0.3, alpha=0.01, first_layer=model.layer_one),
    }[method]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(n: int) -> None:
        x, y = torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,))
        opt.zero_grad(set_to_none=True)
        loss_fn(x, y).backward()
        opt.step()

    step(2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(batch_size)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) / 1024  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    from robustreg import cli  # here, not at the top: the children import only what they measure

    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="child processes per method (the median is reported)")
    p.add_argument("--batch-size", type=int, default=128, help="batch of the measured step")
    p.add_argument("--glibc-cache", action="store_true", help="measure with glibc's default heap caching")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report to this path")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(one(args.child, args.batch_size))
        return {}
    from reporting import progress_bar, write_json  # not in the children: they import what they measure, no more

    env = dict(os.environ)
    if not args.glibc_cache:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    peaks: dict[str, list[float]] = {m: [] for m in METHODS}
    with progress_bar() as bar:
        task = bar.add_task(f"{len(METHODS)} methods × {args.repeats} processes", total=args.repeats * len(METHODS))
        for _ in range(args.repeats):
            for method in METHODS:
                cmd = [sys.executable, __file__, "--child", method, "--batch-size", str(args.batch_size)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                peaks[method].append(float(out.stdout.strip()))
                bar.advance(task)
                if args.out is not None:
                    write_json(args.out, make_report(args, peaks, env, partial=True))
    report = make_report(args, peaks, env, partial=False)
    if args.out is not None:
        write_json(args.out, report)
    print(json.dumps(report, indent=2))
    return report


def make_report(args: argparse.Namespace, peaks: dict[str, list[float]], env: dict[str, str], *, partial: bool) -> dict:
    """The JSON report of the peaks measured so far; ``partial`` while children are still to run."""
    med = {m: statistics.median(v) for m, v in peaks.items() if v}

    def ratio(a: str, b: str) -> float | None:
        return med[a] / med[b] if a in med and b in med else None

    return {
        "partial": partial,
        "config": {
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "malloc_mmap_threshold": env.get("MALLOC_MMAP_THRESHOLD_"),
            "torch": torch.__version__,
        },
        "peak_growth_mib": {m: {"median": med[m], "all": peaks[m]} for m in METHODS if m in med},
        "ratios": {"yopo5-3 / pgd10": ratio("yopo5-3", "pgd10"), "yopo5-10 / pgd10": ratio("yopo5-10", "pgd10")},
    }


if __name__ == "__main__":
    main()
