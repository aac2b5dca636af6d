"""Wall-clock cost of one training step per adversarial-training method, relative to natural training.

What is measured: the time of ONE optimisation step,

    optimizer.zero_grad(); loss = objective(x, y); loss.backward(); optimizer.step()

for natural training (plain cross-entropy), PGD-10 and PGD-40 (:class:`robustreg.PGDAT`), Fast-AT
(:class:`robustreg.FastAT`), Free-AT (:class:`robustreg.FreeAT`; one replay = one step), TRADES-10
(:class:`robustreg.TRADES`), YOPO-5-3 / YOPO-5-10 (:class:`robustreg.YOPO`, f0 = conv1 + ReLU) and
cross-entropy + VAT (:class:`robustreg.VAT`, finite-difference or exact-HVP power step) and
cross-entropy + TNAR (:class:`robustreg.TNAR` with a convolutional VAE chart; the exact normal
projection, or ``normal="penalty"``),
by default on :class:`robustreg.models.SmallCNN` with one MNIST-shaped batch of random
images in [0, 1] (``torch.rand(B, 1, 28, 28)``, labels in 0..9), on the CPU, with the MNIST settings
eps = 0.3 and alpha = 0.01 for PGD and TRADES (Fast-AT and Free-AT use their default step sizes,
1.25·eps and eps). The model is in train mode (SmallCNN's dropout is active) and the optimizer is SGD
(lr 0.01, momentum 0.9). ``--model`` takes the CIFAR networks (``preact-resnet18``, ``wrn-34-10``,
``conv-large``: 3×32×32 batches, ε = 8/255, α = 2/255) or the two-rings ``mlp``; ``--device cuda``
times with CUDA events; ``--amp bf16|fp16`` runs the step under autocast; ``--compile``
``torch.compile``s the model (a method that cannot be built or stepped so is left out, the error in
the report's ``failed``); ``--channels-last``; ``--kernels on|off`` forces the hand-written CPU
kernels of YOPO's first layer and TNAR's charts (the device seam, :mod:`robustreg.devices`). Every
method's ATen operations per step (and on CUDA its kernels) are counted once, before timing
(``workloads.Trainer.count``; not under ``--compile``, where the counting mode would bypass the
compiled graph). Under ``--compile`` every method runs; YOPO runs the passes that read its first
layer's output (a forward hook, which a compiled graph never calls) eagerly, so compiling gains it
nothing.

How: every method gets its own network, built from the same seed so that all start from the same
weights, its own SGD optimizer and its loss object, each built once and reused for every step. All
methods are timed side by side in one process: after ``--warmup`` untimed rounds, each of the
``--repeats`` rounds times every method once (round-robin, with the starting method rotated each
round), so that drift in machine speed hits all methods alike. Each step is timed with
``time.perf_counter``; the report gives, per method, the median over the rounds, every timing, and
the ratio of the median to natural training's median. The system load average before and after is
recorded in ``config``: other processes competing for the cores inflate the timings (longest steps most).
``ratios`` gives the YOPO yardsticks: YOPO-5-10 / PGD-40, YOPO-5-3 / PGD-10 and YOPO-5-n / (5 × natural),
VAT's: a CE + VAT step / a supervised (natural) step, and TNAR's: a CE + TNAR step / a CE + VAT step;
BAL's (``--model bal-cnn --methods pgd15,bal1,bal3,bal5,bal10``): one BAL iteration (S_θ chains,
M = 15) / a PGD-15 step, and its scaling with S_θ.

Run from the repository root (after ``pip install -e .``; otherwise prefix ``PYTHONPATH=.``)::

    python benchmarks/step_cost.py
    python benchmarks/step_cost.py --repeats 11 --threads 1 --out step_cost.json
    python benchmarks/step_cost.py --methods natural,fast,free
    python benchmarks/step_cost.py --model preact-resnet18 --batch-size 32 --methods natural,pgd10,yopo5-3
    python benchmarks/step_cost.py --device cuda --model wrn-34-10 --amp bf16

The JSON report is the only output on stdout; a progress bar (with an ETA) and a line per round go
to stderr. With ``--out``, the report is also written there after every timed round, with
``"partial": true`` until the last one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import robustreg
from robustreg import cli

from reporting import progress_bar, setup_logging, write_json
from workloads import METHODS, NETWORKS, Setup, Trainer, device, kernel_path, make_batch

log = logging.getLogger("step_cost")

SEED = 0
#: the methods timed by default (the published table's); ``--methods`` adds any of :data:`METHODS`
DEFAULT_METHODS = ["natural", "pgd10", "pgd40", "fast", "free", "trades10", "yopo5-3", "yopo5-10", "vat",
                   "vat-hvp", "tnar", "tnar-func", "tnar-penalty"]  # fmt: skip
# The yardsticks, computed from the medians: (numerator, denominator, scale of denominator).
RATIOS = {
    "yopo5-10 / pgd40": ("yopo5-10", "pgd40", 1),
    "yopo5-3 / pgd10": ("yopo5-3", "pgd10", 1),
    "yopo3-5 / pgd10": ("yopo3-5", "pgd10", 1),
    "yopo5-3 / (5 x natural)": ("yopo5-3", "natural", 5),
    "yopo5-10 / (5 x natural)": ("yopo5-10", "natural", 5),
    "vat / natural": ("vat", "natural", 1),
    "vat-hvp / natural": ("vat-hvp", "natural", 1),
    "tnar / vat": ("tnar", "vat", 1),
    "tnar-func / vat": ("tnar-func", "vat", 1),
    "tnar-penalty / vat": ("tnar-penalty", "vat", 1),
    "tnar-residual / vat": ("tnar-residual", "vat", 1),
    "tnar-official / vat": ("tnar-official", "vat", 1),
    "ssl-vat / ssl-ce": ("ssl-vat", "ssl-ce", 1),
    "ssl-tnar / ssl-vat": ("ssl-tnar", "ssl-vat", 1),
    "bal5 / pgd15": ("bal5", "pgd15", 1),
    "bal1 / pgd15": ("bal1", "pgd15", 1),
    "bal10 / bal5": ("bal10", "bal5", 1),
    "bal5 / bal1": ("bal5", "bal1", 1),
}


def rotated(items: list[Trainer], k: int) -> list[Trainer]:
    k %= len(items)
    return items[k:] + items[:k]


def measure(
    trainers: list[Trainer],
    x: Tensor,
    y: Tensor,
    warmup: int,
    repeats: int,
    *,
    on_round: Callable[[dict[str, list[float]]], None] | None = None,
) -> dict[str, list[float]]:
    """Per method, the times of ``repeats`` steps, interleaved round-robin after ``warmup`` untimed
    rounds. A bar counts the steps (drawn between steps, never during one); ``on_round`` gets the
    timings so far after every timed round."""
    times: dict[str, list[float]] = {t.name: [] for t in trainers}
    with progress_bar(timed=True) as bar:
        task = bar.add_task(
            f"{len(trainers)} methods × {warmup} + {repeats} rounds", total=(warmup + repeats) * len(trainers)
        )
        for r in range(warmup + repeats):
            for t in rotated(trainers, r if r < warmup else r - warmup):  # each phase starts unrotated
                if r < warmup:
                    t.step(x, y)
                else:
                    times[t.name].append(t.step(x, y))
                bar.update(task, advance=1, refresh=True)
            if r < warmup:
                log.info("warm-up round %d/%d done", r + 1, warmup)
                continue
            log.info("round %d/%d: %s", r + 1 - warmup, repeats, {k: round(v[-1], 4) for k, v in times.items()})
            if on_round is not None:
                on_round(times)
    return times


def summarise(times: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Median, ratio of medians to natural (``None`` when natural was not measured) and all timings."""
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base = medians.get("natural")
    return {
        name: {
            "median_s": medians[name],
            "ratio_to_natural": None if base is None else medians[name] / base,
            "all_s": ts,
        }
        for name, ts in times.items()
    }


def ratios(times: dict[str, list[float]]) -> dict[str, float]:
    """The yardstick ratios of :data:`RATIOS` whose methods were measured."""
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {k: med[a] / (s * med[b]) for k, (a, b, s) in RATIOS.items() if a in med and b in med}


def parse_methods(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(names) - set(METHODS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown or empty methods {unknown}; choose from {', '.join(METHODS)}")
    return [n for n in METHODS if n in names]  # report order, duplicates dropped


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument("--repeats", type=positive_int, default=7, help="timed rounds; each times every method once")
    p.add_argument("--warmup", type=nonneg_int, default=2, help="untimed rounds before timing (steps per method)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="batch of the timed step")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report to this path")
    p.add_argument("--methods", type=parse_methods, default=DEFAULT_METHODS, help=f"comma list of {','.join(METHODS)}")
    p.add_argument("--seed", type=int, default=SEED, help="seeds the models and the batch")
    p.add_argument("--model", choices=list(NETWORKS), default="smallcnn", help="network, with its data set's input")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="autocast dtype (fp16 with a grad scaler)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (a method that fails says why)")
    p.add_argument("--channels-last", action="store_true", help="channels-last model and batch (images)")
    p.add_argument(
        "--kernels", choices=("auto", "on", "off"), default="auto",
        help="the hand-written CPU kernels (YOPO's first layer, the charts): by device, forced on, or off",
    )  # fmt: skip
    return p.parse_args(argv)


def build_all(args: argparse.Namespace, setup: Setup) -> tuple[list[Trainer], dict[str, str]]:
    """Every method's trainer, and for those that cannot be built or stepped (e.g. under
    ``--compile``) the error, which the report gives instead of a timing."""
    trainers, failed = [], {}
    x, y = make_batch(args.model, 2, setup, args.seed)
    for name in args.methods:
        try:
            trainer = Trainer(name, args.model, setup, args.seed)
            trainer.step(x, y)  # a first step on a tiny batch: compilation and lazy set-up happen here
        except Exception as err:  # reported, not hidden: the method is left out
            failed[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log.warning("%s left out: %s", name, failed[name])
            continue
        trainers.append(trainer)
    return trainers, failed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    setup_logging()  # stderr
    args = parse_args(argv)
    setup = Setup(device(args.device), args.amp, args.compile, args.channels_last)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if "natural" not in args.methods:
        log.warning("natural not in --methods: ratio_to_natural will be null")
    with kernel_path(args.kernels):
        trainers, failed = build_all(args, setup)
        x, y = make_batch(args.model, args.batch_size, setup, args.seed)
        ops = {t.name: t.count(x, y) for t in trainers}
        load_start = os.getloadavg()

        def partial(times: dict[str, list[float]]) -> None:
            if args.out is not None:
                report = make_report(args, setup, times, ops, failed, load_start, os.getloadavg(), partial=True)
                write_json(args.out, report)

        times = measure(trainers, x, y, args.warmup, args.repeats, on_round=partial)
    report = make_report(args, setup, times, ops, failed, load_start, os.getloadavg(), partial=False)
    if args.out is not None:
        write_json(args.out, report)
    print(json.dumps(report, indent=2))
    return report


def make_report(
    args: argparse.Namespace,
    setup: Setup,
    times: dict[str, list[float]],
    ops: dict[str, dict[str, int | None]],
    failed: dict[str, str],
    load_start: tuple[float, float, float],
    load_end: tuple[float, float, float],
    *,
    partial: bool,
) -> dict[str, Any]:
    """The JSON report of ``times``; ``partial`` while rounds are still to run."""
    net = NETWORKS[args.model]
    results = summarise(times)
    for name, counts in ops.items():
        results[name] |= counts
    return {
        "partial": partial,
        "config": {
            "torch": torch.__version__,
            "robustreg": robustreg.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            **setup.describe(),
            "kernels": args.kernels,
            "threads": torch.get_num_threads(),
            "model": f"{args.model} (train mode)",
            "input_shape": [args.batch_size, *net.shape],
            "data": net.data,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "seed": args.seed,
            "eps": net.eps,
            "alpha_pgd_trades_yopo": net.alpha,
            "optimizer": {"name": "SGD", "lr": 0.01, "momentum": 0.9},
            "step": "zero_grad + loss + backward + optimizer.step (under autocast with --amp)",
            "timer": "CUDA events" if setup.device.type == "cuda" else "time.perf_counter",
            "methods": args.methods,
            # 1/5/15-min system load before and after; well above `threads` means other processes competed.
            "cpu_count": os.cpu_count(),
            "loadavg_start": [round(v, 2) for v in load_start],
            "loadavg_end": [round(v, 2) for v in load_end],
        },
        "results": results,
        "failed": failed,
        "ratios": ratios(times),
    }


if __name__ == "__main__":
    main()
