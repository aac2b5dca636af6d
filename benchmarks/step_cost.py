"""Wall-clock cost of one training step per adversarial-training method, relative to natural training.

What is measured: the time of ONE optimisation step,

    optimizer.zero_grad(); loss = objective(x, y); loss.backward(); optimizer.step()

for natural training (plain cross-entropy), PGD-10 and PGD-40 (:class:`robustreg.PGDAT`), Fast-AT
(:class:`robustreg.FastAT`), Free-AT (:class:`robustreg.FreeAT`; one replay = one step), TRADES-10
(:class:`robustreg.TRADES`), YOPO-5-3 / YOPO-5-10 (:class:`robustreg.YOPO`, f0 = conv1 + ReLU) and
cross-entropy + VAT (:class:`robustreg.VAT`, finite-difference or exact-HVP power step) and
cross-entropy + TNAR (:class:`robustreg.TNAR` with a convolutional VAE chart; the exact normal
projection, or ``normal="penalty"``),
on :class:`robustreg.models.SmallCNN` with one MNIST-shaped batch of random
images in [0, 1] (``torch.rand(B, 1, 28, 28)``, labels in 0..9), on the CPU, with the MNIST settings
eps = 0.3 and alpha = 0.01 for PGD and TRADES (Fast-AT and Free-AT use their default step sizes,
1.25·eps and eps). The model is in train mode (SmallCNN's dropout is active) and the optimizer is SGD
(lr 0.01, momentum 0.9).

How: every method gets its own SmallCNN, built from the same seed so that all start from the same
weights, its own SGD optimizer and its loss object, each built once and reused for every step. All
methods are timed side by side in one process: after ``--warmup`` untimed rounds, each of the
``--repeats`` rounds times every method once (round-robin, with the starting method rotated each
round), so that drift in machine speed hits all methods alike. Each step is timed with
``time.perf_counter``; the report gives, per method, the median over the rounds, every timing, and
the ratio of the median to natural training's median. The system load average before and after is
recorded in ``config``: other processes competing for the cores inflate the timings (longest steps most).
``ratios`` gives the YOPO yardsticks: YOPO-5-10 / PGD-40, YOPO-5-3 / PGD-10 and YOPO-5-n / (5 × natural),
VAT's: a CE + VAT step / a supervised (natural) step, and TNAR's: a CE + TNAR step / a CE + VAT step.

Run from the repository root (after ``pip install -e .``; otherwise prefix ``PYTHONPATH=.``)::

    python benchmarks/step_cost.py
    python benchmarks/step_cost.py --repeats 11 --threads 1 --out step_cost.json
    python benchmarks/step_cost.py --methods natural,fast,free

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robustreg
from robustreg import cli
from robustreg.charts import VAE
from robustreg.models import SmallCNN

from reporting import progress_bar, setup_logging, write_json

log = logging.getLogger("step_cost")

EPS = 0.3  # MNIST ℓ∞ radius
ALPHA = 0.01  # MNIST PGD / TRADES step size
LR = 0.01
MOMENTUM = 0.9
SEED = 0

Objective = Callable[[Tensor, Tensor], Tensor]


def natural(model: nn.Module) -> Objective:
    """Plain cross-entropy on the clean batch."""
    return lambda x, y: F.cross_entropy(model(x), y)


def vat(model: nn.Module, method: str) -> Objective:
    """Cross-entropy plus VAT (ε = 2, ξ = 1e-6, one power step) on the same batch, the clean
    logits shared: a semi-supervised step where every image is also an unlabeled one."""
    reg = robustreg.VAT(model, eps=2.0, method=method)

    def objective(x: Tensor, y: Tensor) -> Tensor:
        logits = model(x)
        return F.cross_entropy(logits, y) + reg(x, logits=logits)

    return objective


class _WithoutLinearize:
    """A chart's encode and decode only: TNAR computes its Jacobian products with torch.func."""

    def __init__(self, chart: nn.Module) -> None:
        self.encode, self.decode = chart.encode, chart.decode


def tnar(model: nn.Module, func: bool = False, **options: Any) -> Objective:
    """Cross-entropy plus TNAR (ε_t = ε_n = 2, one power step, 4 CG iterations) on the same
    batch, the clean logits shared, with a convolutional VAE chart (latent 20, width 16: the
    chart of ``benchmarks/fashion_ssl.py``; its weights are random, which does not change the
    cost). ``func=True`` hides the chart's ``linearize``, so that the chart's products go
    through ``torch.func`` (the path of any user chart)."""
    chart = VAE((1, 28, 28), latent=20, width=16).eval().requires_grad_(False)
    used = _WithoutLinearize(chart) if func else chart
    reg = robustreg.TNAR(model, used, eps_tangent=2.0, eps_normal=2.0, tangent="manifold", **options)

    def objective(x: Tensor, y: Tensor) -> Tensor:
        logits = model(x)
        return F.cross_entropy(logits, y) + reg(x, logits=logits)

    return objective


# name -> builder of the loss object for a given model, in report order.
BUILDERS: dict[str, Callable[[nn.Module], Objective]] = {
    "natural": natural,
    "pgd10": lambda m: robustreg.PGDAT(m, eps=EPS, alpha=ALPHA, steps=10),
    "pgd40": lambda m: robustreg.PGDAT(m, eps=EPS, alpha=ALPHA, steps=40),
    "fast": lambda m: robustreg.FastAT(m, eps=EPS),
    "free": lambda m: robustreg.FreeAT(m, eps=EPS),
    "trades10": lambda m: robustreg.TRADES(m, eps=EPS, alpha=ALPHA, steps=10),
    # YOPO with SmallCNN's conv1 + ReLU as f0, as the official MNIST code.
    "yopo5-3": lambda m: robustreg.YOPO(m, m=5, n=3, eps=EPS, alpha=ALPHA, first_layer=m.layer_one),
    "yopo5-10": lambda m: robustreg.YOPO(m, m=5, n=10, eps=EPS, alpha=ALPHA, first_layer=m.layer_one),
    "vat": lambda m: vat(m, "finite_difference"),
    "vat-hvp": lambda m: vat(m, "hvp"),
    "tnar": tnar,
    "tnar-func": lambda m: tnar(m, func=True),
    "tnar-penalty": lambda m: tnar(m, normal="penalty", zeta=0.1),
}
# The yardsticks, computed from the medians: (numerator, denominator, scale of denominator).
RATIOS = {
    "yopo5-10 / pgd40": ("yopo5-10", "pgd40", 1),
    "yopo5-3 / pgd10": ("yopo5-3", "pgd10", 1),
    "yopo5-3 / (5 x natural)": ("yopo5-3", "natural", 5),
    "yopo5-10 / (5 x natural)": ("yopo5-10", "natural", 5),
    "vat / natural": ("vat", "natural", 1),
    "vat-hvp / natural": ("vat-hvp", "natural", 1),
    "tnar / vat": ("tnar", "vat", 1),
    "tnar-func / vat": ("tnar-func", "vat", 1),
    "tnar-penalty / vat": ("tnar-penalty", "vat", 1),
}


@dataclass
class Trainer:
    """One method's model, optimizer and loss object, built once and stepped repeatedly."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    objective: Objective

    def step(self, x: Tensor, y: Tensor) -> float:
        """Run one training step on ``(x, y)``; return its wall-clock time in seconds."""
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.objective(x, y)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def build(name: str, seed: int) -> Trainer:
    """A fresh SmallCNN (same seed for every method, so all start equal) with SGD and ``name``'s loss."""
    torch.manual_seed(seed)
    model = SmallCNN().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    return Trainer(name, model, optimizer, BUILDERS[name](model))


def make_batch(batch_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """An MNIST-shaped batch: images uniform in [0, 1] and labels uniform in 0..9."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (batch_size,), generator=gen)
    return x, y


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
    unknown = sorted(set(names) - set(BUILDERS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown or empty methods {unknown}; choose from {', '.join(BUILDERS)}")
    return [n for n in BUILDERS if n in names]  # report order, duplicates dropped


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
    p.add_argument("--methods", type=parse_methods, default=list(BUILDERS), help=f"comma list of {','.join(BUILDERS)}")
    p.add_argument("--seed", type=int, default=SEED, help="seeds the models and the batch")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    setup_logging()  # stderr
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if "natural" not in args.methods:
        log.warning("natural not in --methods: ratio_to_natural will be null")
    trainers = [build(name, args.seed) for name in args.methods]
    x, y = make_batch(args.batch_size, args.seed)
    load_start = os.getloadavg()

    def partial(times: dict[str, list[float]]) -> None:
        if args.out is not None:
            write_json(args.out, make_report(args, times, load_start, os.getloadavg(), partial=True))

    times = measure(trainers, x, y, args.warmup, args.repeats, on_round=partial)
    report = make_report(args, times, load_start, os.getloadavg(), partial=False)
    if args.out is not None:
        write_json(args.out, report)
    print(json.dumps(report, indent=2))


def make_report(
    args: argparse.Namespace,
    times: dict[str, list[float]],
    load_start: tuple[float, float, float],
    load_end: tuple[float, float, float],
    *,
    partial: bool,
) -> dict[str, Any]:
    """The JSON report of ``times``; ``partial`` while rounds are still to run."""
    return {
        "partial": partial,
        "config": {
            "torch": torch.__version__,
            "robustreg": robustreg.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "model": "SmallCNN (train mode)",
            "input_shape": [args.batch_size, 1, 28, 28],
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "seed": args.seed,
            "eps": EPS,
            "alpha_pgd_trades": ALPHA,
            "optimizer": {"name": "SGD", "lr": LR, "momentum": MOMENTUM},
            "step": "zero_grad + loss + backward + optimizer.step",
            "timer": "time.perf_counter",
            "methods": args.methods,
            # 1/5/15-min system load before and after; well above `threads` means other processes competed.
            "cpu_count": os.cpu_count(),
            "loadavg_start": [round(v, 2) for v in load_start],
            "loadavg_end": [round(v, 2) for v in load_end],
        },
        "results": summarise(times),
        "ratios": ratios(times),
    }


if __name__ == "__main__":
    main()
