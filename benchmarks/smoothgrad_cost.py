"""SmoothGrad's cost: the time of :func:`robustreg.interpret.smooth_grad` on ``--images`` images with
``--samples`` noisy copies each (the paper's n = 100), against ``--samples`` × the time of one Grad
pass (:func:`robustreg.interpret.input_gradient`) over the same images, on SmallCNN with
MNIST-shaped inputs (the cost does not depend on the weights).

How: each of ``--repeats`` rounds times one SmoothGrad run and ``--grad-passes`` Grad passes, in
an order alternated every round, so that drift in machine speed hits both alike; the report gives
the medians, every timing, the ratio SmoothGrad / (n × Grad) (above 1: the noisy copies cost more
than n plain passes; below: batching the copies pays) and the load average before and after
(measure on a quiet machine). SmoothGrad sends ``--batch-size`` rows per pass; Grad sends the
images in chunks of the same size.

    python benchmarks/smoothgrad_cost.py --out benchmarks/results/smoothgrad_cost.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from robustreg import cli, interpret
from robustreg.models import SmallCNN

from reporting import loadavg, progress_bar, write_json


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument("--images", type=int, default=1000, help="images per run")
    p.add_argument("--samples", type=int, default=100, help="SmoothGrad's noisy copies n")
    p.add_argument("--batch-size", type=int, default=1000, help="rows per forward/backward pass")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds")
    p.add_argument("--grad-passes", type=int, default=5, help="Grad passes per round (their median is used)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seeds the model, the images and the noise")
    p.add_argument("--out", type=Path, default=None, help="the JSON report (also written after every round)")
    args = p.parse_args(argv)
    if min(args.images, args.samples, args.batch_size, args.repeats, args.grad_passes, args.threads) < 1:
        p.error("--images, --samples, --batch-size, --repeats, --grad-passes and --threads must be >= 1")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = SmallCNN()
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.images, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (args.images,), generator=gen)

    def grad_pass() -> None:
        for i in range(0, args.images, args.batch_size):
            interpret.input_gradient(model, x[i : i + args.batch_size], y[i : i + args.batch_size])

    def smooth() -> None:
        noise = torch.Generator().manual_seed(args.seed)
        per = max(1, args.batch_size // args.samples)  # images per call: each call sends samples × per rows
        for i in range(0, args.images, per):
            interpret.smooth_grad(
                model, x[i : i + per], y[i : i + per], samples=args.samples, batch_size=args.batch_size,
                generator=noise,
            )  # fmt: skip

    times: dict[str, list[float]] = {"smoothgrad_s": [], "grad_pass_s": []}
    report: dict[str, Any] = {
        "config": {**vars(args), "out": str(args.out), "torch": torch.__version__, "cpus": os.cpu_count(),
                   "machine": platform.machine(), "loadavg_start": loadavg()},
    }  # fmt: skip
    try:
        grad_pass()  # warm-up
        with progress_bar(timed=True) as bar:
            task = bar.add_task("rounds", total=args.repeats)
            for r in range(args.repeats):
                order = ["smoothgrad", "grad"] if r % 2 == 0 else ["grad", "smoothgrad"]
                for what in order:
                    if what == "smoothgrad":
                        start = time.perf_counter()
                        smooth()
                        times["smoothgrad_s"].append(time.perf_counter() - start)
                    else:
                        passes = []
                        for _ in range(args.grad_passes):
                            start = time.perf_counter()
                            grad_pass()
                            passes.append(time.perf_counter() - start)
                        times["grad_pass_s"].append(statistics.median(passes))
                bar.update(task, advance=1, refresh=True)
                sg, gp = statistics.median(times["smoothgrad_s"]), statistics.median(times["grad_pass_s"])
                report |= {
                    "smoothgrad_median_s": sg,
                    "grad_pass_median_s": gp,
                    "ratio_smoothgrad_to_n_grad": sg / (args.samples * gp),
                    "times": times,
                    "partial": r < args.repeats - 1,
                }
                report["config"]["loadavg_end"] = loadavg()
                if args.out:
                    write_json(args.out, report)
    finally:
        torch.set_num_threads(threads_before)
    keys = ("smoothgrad_median_s", "grad_pass_median_s", "ratio_smoothgrad_to_n_grad")
    print({k: round(report[k], 4) for k in keys})
    return report


if __name__ == "__main__":
    main()
