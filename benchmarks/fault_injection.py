"""Fault injection for the recipes' checkpoints and their non-finite policy: SIGKILLs at random
moments, planted pickle payloads, NaN steps. Prints the figures of issue 16 and exits non-zero
if any trial fails.

    python benchmarks/fault_injection.py --kills 20 --out runs/faults

The run under test is ``recipes/robust.py`` on two rings (generated: no files), method
``amata-atta`` (Amata's clock and ATTA's per-sample perturbations are part of the checkpoint),
a checkpoint after every step and an evaluation every 8 steps. Five parts:

``reference``
    The run, uninterrupted.
``kills``
    ``--kills`` trials. Each starts the run, waits until it has written its first checkpoint, then
    SIGKILLs it after a uniform random delay over the span the reference took from that point
    to its end (training, checkpoint writes, the final evaluation and save), and resumes it with
    ``--resume`` until it finishes. A trial passes when the final weights are bit-identical to
    the reference's and ``metrics.jsonl`` and ``summary.json`` are equal in every field but the
    wall times.
``payloads``
    In a finished run, every file ``--resume`` reads (each file of the newest checkpoint,
    ``metrics.jsonl``, ``run.json``) is replaced in turn by a pickle whose unpickling creates a
    marker file, with the manifest rewritten to match (an attacker who edits it too), and the
    file names of Accelerate's pickled state (``custom_checkpoint_0.pkl``, ``random_states_0.pkl``,
    ``optimizer.bin``, ``scheduler.bin``, ``pytorch_model.bin``) are planted beside them. Then
    ``--resume``. A payload counts as executed when its marker exists.
``nan``
    The model's forward returns NaN at chosen training steps (patched in the child process, as
    a diverging model would): one such step must be skipped (``nonfinite_steps`` = 1) with the
    run finishing; ``--max-nonfinite`` of them in a row must stop the run with a clear error.
    In both, no saved ``.safetensors`` may hold a non-finite value.
``repeats``
    The run again with the same seed, ``--repeats`` times: bit-identical weights, equal metrics.

Results go to ``<out>/fault_injection.json``, rewritten (atomically) after every trial with
``"partial": true`` until the last part has ended. A progress bar per part (with an ETA) shows how
far the run is.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: called after every trial of a part with the trials so far and the part's number of trials
Report = Callable[[list[dict[str, Any]], int], None]
RECIPE = ROOT / "recipes" / "robust.py"
RUN_ARGS = [
    "--dataset", "two-rings", "--method", "amata-atta", "--epochs", "2", "--train-size", "512", "--batch-size", "32",
    "--checkpoint-every", "1", "--keep-checkpoints", "2", "--eval-every", "8", "--eval-size", "64", "--eval-pgd", "5",
    "--no-progress", "--threads", "1",
]  # fmt: skip
IGNORED = {"wall", "wall_seconds", "out", "model", "metrics", "curves_plot"}


def command(out: Path, *extra: str, nan_steps: str = "") -> list[str]:
    if nan_steps:
        return [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child-nan",
            nan_steps,
            *RUN_ARGS,
            *extra,
            "--out",
            str(out),
        ]
    return [sys.executable, str(RECIPE), *RUN_ARGS, *extra, "--out", str(out)]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TERM": "dumb"}  # logs to stderr


def finish(out: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command(out, *extra), capture_output=True, text=True, timeout=timeout, env=env(), cwd=ROOT)


# -- comparisons ----------------------------------------------------------------------------------


def metrics(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in IGNORED} for r in rows]


def summary(out: Path) -> dict[str, Any]:
    return {k: v for k, v in json.loads((out / "summary.json").read_text()).items() if k not in IGNORED}


def same_run(a: Path, b: Path) -> str:
    """ "" when run ``b`` equals run ``a`` (weights bit for bit; metrics and summary but the wall
    times); otherwise what differs."""
    if not (b / "model" / "model.safetensors").is_file():
        return "no final model"
    if (a / "model" / "model.safetensors").read_bytes() != (b / "model" / "model.safetensors").read_bytes():
        return "final weights differ"
    if metrics(a) != metrics(b):
        return "metrics.jsonl differs"
    if summary(a) != summary(b):
        return "summary.json differs"
    return ""


def nonfinite_files(out: Path) -> list[str]:
    """Every ``.safetensors`` under ``out`` holding a NaN or inf."""
    from safetensors.torch import load_file

    bad = []
    for path in sorted(out.rglob("*.safetensors")):
        if any(t.is_floating_point() and not bool(t.isfinite().all()) for t in load_file(str(path)).values()):
            bad.append(str(path.relative_to(out)))
    return bad


# -- the parts ------------------------------------------------------------------------------------


def reference(out: Path) -> tuple[Path, float]:
    """The uninterrupted run, and the seconds it took from its first checkpoint to its end."""
    ref = out / "reference"
    shutil.rmtree(ref, ignore_errors=True)
    proc = subprocess.Popen(command(ref), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), cwd=ROOT)
    first = wait_for_checkpoint(ref, proc)
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"the reference run failed:\n{err.decode()[-3000:]}")
    return ref, time.perf_counter() - first


def wait_for_checkpoint(out: Path, proc: subprocess.Popen) -> float:
    """Poll until ``out`` holds a finished checkpoint (or the process ends); returns the time."""
    while proc.poll() is None and not any((out / "checkpoints").glob("step_*")):
        time.sleep(0.01)
    return time.perf_counter()


def kill_trial(ref: Path, out: Path, span: float, rng: random.Random) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(), cwd=ROOT)
    wait_for_checkpoint(out, proc)
    delay = rng.uniform(0, span)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))
    resumed = finish(out, "--resume")
    result = {"delay_s": round(delay, 3), "killed": killed, "checkpoints_at_kill": steps}
    if resumed.returncode != 0:
        return {**result, "passed": False, "why": "resume failed: " + resumed.stderr[-500:]}
    why = same_run(ref, out)
    return {**result, "passed": not why, "why": why}


class Payload:
    """A pickle that creates ``marker`` when it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def payload_trials(ref: Path, out: Path, *, report: Report | None = None) -> list[dict[str, Any]]:
    from robustreg.checkpoint import MANIFEST, write_manifest

    planted_names = ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin",
                     "pytorch_model.bin"]  # fmt: skip
    newest = max((ref / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    targets = [p.relative_to(ref) for p in sorted(newest.iterdir()) if p.name != MANIFEST]
    targets += [Path("metrics.jsonl"), Path("run.json")]
    targets += [newest.relative_to(ref) / name for name in planted_names]
    trials = []
    for i, rel in enumerate(targets):
        run = out / f"payload_{i}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(ref, run)
        shutil.rmtree(run / "model")
        marker = out / f"payload_{i}.executed"
        marker.unlink(missing_ok=True)
        (run / rel).write_bytes(pickle.dumps(Payload(marker)))
        ckpt = run / newest.relative_to(ref)
        info = json.loads((ckpt / MANIFEST).read_text())
        write_manifest(ckpt, step=info["step"], processes=info["processes"])  # the attacker edits it too
        proc = finish(run, "--resume")
        trials.append({
            "file": str(rel), "executed": marker.exists(), "exit": proc.returncode,
            "said": next((ln for ln in proc.stderr.splitlines() if "skipping" in ln or "error" in ln), "")[:200],
        })  # fmt: skip
        if report is not None:
            report(trials, len(targets))
    return trials


def repeat_trials(ref: Path, out: Path, repeats: int, *, report: Report | None = None) -> list[dict[str, Any]]:
    """The run again with the same seed, ``repeats`` times: each must equal the reference."""
    trials = []
    for i in range(repeats):
        run = out / f"repeat_{i}"
        shutil.rmtree(run, ignore_errors=True)
        proc = finish(run)
        why = same_run(ref, run) if proc.returncode == 0 else "failed: " + proc.stderr[-300:]
        trials.append({"passed": not why, "why": why})
        shutil.rmtree(run, ignore_errors=True)
        if report is not None:
            report(trials, repeats)
    return trials


def nan_trials(out: Path, max_nonfinite: int, *, report: Report | None = None) -> list[dict[str, Any]]:
    trials = []
    cases = (
        ("one NaN step", "5", True),
        (f"{max_nonfinite} NaN steps in a row", ",".join(str(9 + i) for i in range(max_nonfinite)), False),
    )
    for name, steps, should_finish in cases:
        run = out / f"nan_{steps.count(',') + 1}"
        shutil.rmtree(run, ignore_errors=True)
        proc = subprocess.run(command(run, "--max-nonfinite", str(max_nonfinite), nan_steps=steps),
                              capture_output=True, text=True, timeout=600, env=env(), cwd=ROOT)  # fmt: skip
        finished = proc.returncode == 0
        skipped = json.loads((run / "summary.json").read_text())["nonfinite_steps"] if finished else None
        error = next((ln for ln in proc.stderr.splitlines() if "non-finite steps in a row" in ln), "")
        bad = nonfinite_files(run)
        passed = not bad and (
            (finished and skipped == steps.count(",") + 1) if should_finish else (not finished and bool(error))
        )
        trials.append({"case": name, "steps": steps, "finished": finished, "nonfinite_steps": skipped,
                       "error": error.strip()[:200], "nonfinite_files": bad, "passed": passed})  # fmt: skip
        if report is not None:
            report(trials, len(cases))
    return trials


# -- the child of the NaN part ------------------------------------------------------------------------


def child_nan(steps: set[int], argv: list[str]) -> None:
    """Run ``recipes/robust.py`` with the model's forward returning NaN during the training steps
    ``steps`` (0-based), as a diverging model would."""
    from contextlib import contextmanager

    import torch

    sys.path.insert(0, str(ROOT / "recipes"))
    import robust
    import skeleton

    from robustreg.models import MLP

    current: dict[str, int | None] = {"step": None}
    guard, forward = skeleton.Run.step_guard, MLP.forward

    @contextmanager
    def step_guard(self, step, *modules):
        current["step"] = step
        try:
            with guard(self, step, *modules) as g:
                yield g
        finally:
            current["step"] = None

    def nan_forward(self, x):
        out = forward(self, x)
        return out * torch.nan if current["step"] in steps else out

    skeleton.Run.step_guard = step_guard
    MLP.forward = nan_forward
    robust.main(argv)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child-nan":
        child_nan({int(s) for s in sys.argv[2].split(",")}, sys.argv[3:])
        return 0
    from robustreg import cli  # here, not at the top: the children import only what they measure

    parser = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="runs killed (trials whose run ended first are extra)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--max-nonfinite", type=int, default=3, help="the NaN part's --max-nonfinite")
    parser.add_argument("--repeats", type=int, default=5, help="same-seed reruns compared with the reference")
    parser.add_argument("--parts", default="kills,payloads,nan,repeats", help="comma list of the parts to run")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/fault_injection"), help="work directory of the runs and the JSON report"
    )
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from reporting import progress_bar, write_json

    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    results: dict[str, Any] = {"partial": True, "run": RUN_ARGS}
    path = args.out / "fault_injection.json"
    with progress_bar() as bar:

        def part(name: str, description: str) -> Report:
            """The report hook of part ``name``: its bar, and the results rewritten after each trial."""
            task = bar.add_task(description, total=None)
            results[name] = []

            def report(trials: list[dict[str, Any]], total: int) -> None:
                results[name] = trials
                bar.update(task, completed=len(trials), total=total)
                write_json(path, results)

            return report

        task = bar.add_task("reference run", total=1)
        ref, span = reference(args.out)
        bar.advance(task)
        results["span_s"] = round(span, 2)
        write_json(path, results)
        if "kills" in parts:
            rng = random.Random(args.seed)
            results["kills"] = []
            task = bar.add_task("SIGKILL trials", total=args.kills)
            for i in range(3 * args.kills):  # a trial whose run ended before its kill moment does not count
                trial = kill_trial(ref, args.out / f"kill_{i}", span, rng)
                results["kills"].append(trial)
                write_json(path, results)
                shutil.rmtree(args.out / f"kill_{i}", ignore_errors=True)
                bar.update(task, completed=sum(t["killed"] for t in results["kills"]))
                if sum(t["killed"] for t in results["kills"]) == args.kills:
                    break
        if "payloads" in parts:
            payload_trials(ref, args.out, report=part("payloads", "planted pickle payloads"))
        if "nan" in parts:
            nan_trials(args.out, args.max_nonfinite, report=part("nan", "NaN steps"))
        if "repeats" in parts:
            repeat_trials(ref, args.out, args.repeats, report=part("repeats", "same seed again"))
    results["partial"] = False
    write_json(path, results)

    table = Table(title="fault injection (recipes/robust.py, two rings, amata-atta, a checkpoint every step)")
    for col in ("part", "trials", "passed", "detail"):
        table.add_column(col)
    failed = 0
    if "kills" in results:
        k = [t for t in results["kills"] if t["killed"]]
        n_ok = sum(t["passed"] for t in k)
        failed += len(k) - n_ok + (len(k) < args.kills) + sum(not t["passed"] for t in results["kills"])
        table.add_row("SIGKILL, then --resume", str(len(k)), str(n_ok),
                      "passed: weights bit-identical, metrics and summary equal but wall times")  # fmt: skip
    if "payloads" in results:
        p = results["payloads"]
        executed = sum(t["executed"] for t in p)
        failed += executed
        table.add_row("planted pickle payloads", str(len(p)), str(len(p) - executed), f"{executed} executed")
    if "nan" in results:
        for t in results["nan"]:
            failed += not t["passed"]
            detail = f"skipped {t['nonfinite_steps']}" if t["finished"] else t["error"][:70]
            table.add_row(
                t["case"], "1", str(int(t["passed"])), detail + f"; non-finite files: {len(t['nonfinite_files'])}"
            )
    if "repeats" in results:
        r = results["repeats"]
        n_ok = sum(t["passed"] for t in r)
        failed += len(r) - n_ok
        table.add_row("same seed again", str(len(r)), str(n_ok), "bit-identical weights, equal metrics and summary")
    console.print(table)
    console.print(f"results: {args.out / 'fault_injection.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
