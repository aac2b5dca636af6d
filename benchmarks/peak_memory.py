"""Peak memory of one training step, YOPO against PGD.

    python benchmarks/peak_memory.py
    python benchmarks/peak_memory.py --model preact-resnet18 --batch-size 32 --methods natural,pgd10,yopo5-3
    python benchmarks/peak_memory.py --device cuda --model wrn-34-10 --amp bf16

Each (method, repeat) runs in a fresh Python process: it builds the network (``--model``, SmallCNN
by default; the networks and methods of ``benchmarks/workloads.py``), runs one warm-up step
on a batch of 2 (so that lazily created kernels and caches exist), reads the process's peak
resident set size, runs one step on an MNIST-shaped batch of ``--batch-size`` (128), and reports
how far the peak grew: the memory that step needed at its peak beyond what the process already
held. The report gives the median over ``--repeats`` processes per method and the ratio
YOPO-5-3 / PGD-10, the issue's yardstick (≤ 1.25). YOPO never holds more than one pass's graph:
each pass's graph is freed by ``torch.autograd.grad`` before the next pass starts, and nothing of
a pass but η outlives it. On CUDA (``--device cuda``) the measure is the peak of allocated memory
during the step beyond what was allocated before it (``torch.cuda.max_memory_allocated``).

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

DEFAULT_METHODS = ("natural", "pgd10", "yopo5-3", "yopo5-10")


def one(args: argparse.Namespace) -> float:
    """Run in a child process: how far one full-size step of ``args.child`` raised the peak, in MiB
    (CPU: the peak resident set size; CUDA: the peak of allocated memory)."""
    from workloads import Setup, Trainer, device, make_batch  # the children import what they measure

    setup = Setup(device(args.device), args.amp, False, args.channels_last)
    trainer = Trainer(args.child, args.model, setup, 0)
    trainer.step(*make_batch(args.model, 2, setup, 0))  # lazily created kernels and caches
    x, y = make_batch(args.model, args.batch_size, setup, 0)
    if setup.device.type == "cuda":
        return trainer.peak_memory(x, y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainer.step(x, y)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) / 1024  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    from robustreg import cli  # here, not at the top: the children import only what they measure

    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="child processes per method (the median is reported)")
    p.add_argument("--batch-size", type=int, default=128, help="batch of the measured step")
    p.add_argument("--glibc-cache", action="store_true", help="measure with glibc's default heap caching")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report to this path")
    p.add_argument("--model", default="smallcnn", help="network (benchmarks/workloads.py NETWORKS), with its input")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma list (workloads.METHODS)")
    p.add_argument("--device", default="cpu", help="cpu (peak RSS) or cuda (peak allocated memory)")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="autocast dtype of the step")
    p.add_argument("--channels-last", action="store_true", help="channels-last network and batch")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # workloads.py, reporting.py beside this file
    if args.child:
        print(one(args))
        return {}
    from workloads import METHODS, NETWORKS

    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.model not in NETWORKS or not args.methods or set(args.methods) - set(METHODS):
        p.error(f"--model from {', '.join(NETWORKS)}; --methods from {', '.join(METHODS)}")
    from reporting import progress_bar, write_json  # not in the children: they import what they measure, no more

    env = dict(os.environ)
    if not args.glibc_cache:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    peaks: dict[str, list[float]] = {m: [] for m in args.methods}
    child = ["--batch-size", str(args.batch_size), "--model", args.model, "--device", args.device]
    child += (["--amp", args.amp] if args.amp else []) + (["--channels-last"] if args.channels_last else [])
    with progress_bar() as bar:
        methods = len(args.methods)
        task = bar.add_task(f"{methods} methods × {args.repeats} processes", total=args.repeats * methods)
        for _ in range(args.repeats):
            for method in args.methods:
                cmd = [sys.executable, __file__, "--child", method, *child]
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
            "model": args.model,
            "device": args.device,
            "amp": args.amp,
            "channels_last": args.channels_last,
            "measure": "peak allocated memory (CUDA)" if args.device == "cuda" else "peak RSS growth (CPU)",
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "malloc_mmap_threshold": env.get("MALLOC_MMAP_THRESHOLD_"),
            "torch": torch.__version__,
        },
        "peak_growth_mib": {m: {"median": med[m], "all": peaks[m]} for m in args.methods if m in med},
        "ratios": {
            "yopo5-3 / pgd10": ratio("yopo5-3", "pgd10"),
            "yopo3-5 / pgd10": ratio("yopo3-5", "pgd10"),
            "yopo5-10 / pgd10": ratio("yopo5-10", "pgd10"),
        },
    }


if __name__ == "__main__":
    main()
