"""Where we stand on a device, in one short command: step times, ratios, peak memory and operation
counts of the methods on our users' networks, within a time budget.

    python benchmarks/device_check.py --device cuda --out device_check.json     # one GPU, < 6 min
    python benchmarks/device_check.py --device cuda --compile --out device_check_compiled.json
    python benchmarks/device_check.py --smoke                                   # CPU, tiny, seconds

Three sections, each timed side by side in one process (``--warmup`` untimed rounds, then
``--repeats`` rounds that time every method once, round-robin; the median is reported):

- PreAct-ResNet-18, CIFAR-shaped batch of 128, ``--amp`` (bf16) autocast: natural, PGD-10,
  YOPO-5-3, YOPO-3-5, Fast-AT, Free-AT (one replay), TRADES-10, and YOPO-5-3 once more with the
  hand-written first-layer kernels forced on and once forced off (the device seam,
  :mod:`robustreg.devices`: which path wins on this device);
- WideResNet-34-10, batch 128: natural, PGD-10, YOPO-5-3;
- Conv-Large, 32 labeled + 128 unlabeled images a step: CE, CE + VAT, CE + TNAR (VAE chart).

Per method: the median step time, its ratio to the section's first method (natural or CE), the
ATen operations one step dispatches and, on CUDA, the kernels it launches and its peak allocated
memory; the yardsticks YOPO-5-3 / PGD-10 (goal ≤ 0.5), YOPO-3-5 / PGD-10 and CE+TNAR / CE+VAT
(goal ≤ 2.0). With ``--compile`` every network is ``torch.compile``d; a method that cannot be built
or stepped so is listed under ``failed`` with its error. When ``--budget-s`` runs out, the sections
not begun are listed as ``skipped`` (the first always runs; the report is written after every
section, ``"partial": true`` until the end). ``--smoke`` is the same on the CPU with batches of 5,
one round and the small members of the ResNet families (PreAct-ResNet with one block per stage,
WideResNet-10-1), for the test suite: it checks that the command works, not the numbers.

The report (JSON) goes to stdout and ``--out``; a short table to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import robustreg
from robustreg import cli

from reporting import progress_bar, setup_logging, write_json
from workloads import NETWORKS, Setup, Trainer, device, make_batch

log = logging.getLogger("device_check")


@dataclass(frozen=True)
class Section:
    network: str
    batch_size: int
    methods: tuple[str, ...]
    #: (numerator, denominator) yardsticks of this section
    ratios: tuple[tuple[str, str], ...] = ()
    #: methods timed twice more, with the hand-written kernels forced on and off
    paths: tuple[str, ...] = ()


SECTIONS = (
    Section(
        "preact-resnet18", 128, ("natural", "pgd10", "yopo5-3", "yopo3-5", "fast", "free", "trades10"),
        ratios=(("yopo5-3", "pgd10"), ("yopo3-5", "pgd10"), ("yopo5-3[kernels on]", "yopo5-3[kernels off]")),
        paths=("yopo5-3",),
    ),
    Section("wrn-34-10", 128, ("natural", "pgd10", "yopo5-3"), ratios=(("yopo5-3", "pgd10"),)),
    Section("conv-large", 160, ("ssl-ce", "ssl-vat", "ssl-tnar"), ratios=(("ssl-tnar", "ssl-vat"),)),
)  # fmt: skip
SMOKE_BATCH = 5  # conv-large: 1 labeled + 4 unlabeled


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu")
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default="bf16", help="autocast dtype of every step")
    p.add_argument("--compile", action="store_true", help="torch.compile every network")
    p.add_argument("--channels-last", action="store_true", help="channels-last networks and batches")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per section")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds per section")
    p.add_argument("--budget-s", type=float, default=330.0, help="sections not begun by then are skipped")
    p.add_argument("--seed", type=int, default=0, help="seeds the networks and the batches")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here (after every section)")
    p.add_argument("--smoke", action="store_true", help="CPU, batches of 5, one round, no autocast: for the tests")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.budget_s <= 0:
        p.error("--repeats must be >= 1, --warmup >= 0, --budget-s > 0")
    if args.smoke:
        args.device, args.amp, args.repeats, args.warmup = "cpu", "none", 1, 0
    return args


def run_section(section: Section, setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    """Build, count and time one section's methods; its part of the report."""
    batch = SMOKE_BATCH if args.smoke else section.batch_size
    x, y = make_batch(section.network, batch, setup, args.seed)
    tiny = make_batch(section.network, 2, setup, args.seed)
    variants = [(m, m, "auto") for m in section.methods]
    variants += [(f"{m}[kernels {k}]", m, k) for m in section.paths for k in ("on", "off")]
    trainers: dict[str, Trainer] = {}
    failed: dict[str, str] = {}
    for name, method, kernels in variants:
        try:
            trainer = Trainer(method, section.network, setup, args.seed, kernels=kernels, small=args.smoke)
            trainer.step(*tiny)  # compilation and lazy set-up happen here, untimed
        except Exception as err:  # reported, not hidden: the method is left out of the timings
            failed[name] = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
            log.warning("%s / %s left out: %s", section.network, name, failed[name])
            continue
        trainers[name] = trainer
    results: dict[str, dict[str, Any]] = {}
    for name, trainer in trainers.items():
        results[name] = {**trainer.count(x, y), "peak_mib": trainer.peak_memory(x, y)}
    times: dict[str, list[float]] = {name: [] for name in trainers}
    names = list(trainers)
    with progress_bar(timed=True) as bar:
        task = bar.add_task(f"{section.network}", total=(args.warmup + args.repeats) * len(names))
        for r in range(args.warmup + args.repeats):
            k = r % max(1, len(names))
            for name in names[k:] + names[:k]:  # the starting method rotates: drift hits all alike
                seconds = trainers[name].step(x, y)
                if r >= args.warmup:
                    times[name].append(seconds)
                bar.update(task, advance=1, refresh=True)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base = medians.get(section.methods[0])
    for name, median in medians.items():
        results[name] |= {"median_s": median, "ratio_to_" + section.methods[0]: median / base if base else None}
        results[name]["all_s"] = times[name]
    ratios = {f"{a} / {b}": medians[a] / medians[b] for a, b in section.ratios if a in medians and b in medians}
    return {"input_shape": [batch, *NETWORKS[section.network].shape], "results": results, "ratios": ratios,
            "failed": failed}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    setup_logging()
    args = parse_args(argv)
    setup = Setup(device(args.device), None if args.amp == "none" else args.amp, args.compile, args.channels_last)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "partial": True,
        "config": {
            "torch": torch.__version__, "robustreg": robustreg.__version__, "python": platform.python_version(),
            **setup.describe(), "kernel_devices": sorted(robustreg.devices.KERNEL_DEVICES),
            "threads": torch.get_num_threads(), "repeats": args.repeats, "warmup": args.warmup,
            "budget_s": args.budget_s, "smoke": args.smoke, "seed": args.seed,
            "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        },
        "sections": {},
        "skipped": [],
    }  # fmt: skip
    for section in SECTIONS:
        if report["sections"] and time.perf_counter() - start > args.budget_s:  # the first always runs
            report["skipped"].append(section.network)
            log.warning("%s skipped: the %.0f s budget is spent", section.network, args.budget_s)
            continue
        report["sections"][section.network] = run_section(section, setup, args)
        report["elapsed_s"] = time.perf_counter() - start
        if args.out is not None:
            write_json(args.out, report)
    report["partial"] = False
    report["config"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.out is not None:
        write_json(args.out, report)
    print_table(report)
    print(json.dumps(report, indent=2))
    return report


def print_table(report: dict[str, Any]) -> None:
    """The short table, on stderr: per section and method, the median step, its ratio, the
    operations (and kernels) per step and the peak memory."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    cfg = report["config"]
    table = Table(
        title=f"device check: {cfg.get('device_name', cfg['device'])}, amp {cfg['amp']}, compile {cfg['compile']}"
    )
    for col in ("network", "method", "step (ms)", "ratio", "aten ops", "kernels", "peak MiB"):
        table.add_column(col, no_wrap=col in ("network", "method"))
    for network, sec in report["sections"].items():
        for name, r in sec["results"].items():
            ratio = next((v for k, v in r.items() if k.startswith("ratio_to_")), None)
            ops = "–" if r["aten_ops"] is None else str(r["aten_ops"])
            cells = [f"{1000 * r['median_s']:.1f}", "" if ratio is None else f"{ratio:.2f}", ops]
            cells += [str(r["cuda_kernels"] or "–"), "–" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"]
            table.add_row(network, escape(name), *cells)
        for name, error in sec["failed"].items():
            table.add_row(network, escape(name), "failed", escape(error[:60]), "", "", "")
    console = Console(stderr=True)
    console.print(table)
    for network, sec in report["sections"].items():
        for k, v in sec["ratios"].items():
            console.print(escape(f"{network}: {k} = {v:.3f}"))
    if report["skipped"]:
        console.print(f"skipped (budget): {', '.join(report['skipped'])}")


if __name__ == "__main__":
    main()
