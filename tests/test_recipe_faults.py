"""The recipes under faults: kills at random moments, damaged or tampered checkpoints, planted
pickle payloads, changed options on --resume, NaN steps (``benchmarks/fault_injection.py`` and
the pieces of ``recipes/skeleton.py`` it relies on)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ._recipes import RECIPES, ROOT, interrupt, ok, rings_model, rows, run, same_weights

SCRIPT = ROOT / "benchmarks" / "fault_injection.py"
SMALL = ["--dataset", "two-rings", "--method", "amata-atta", "--epochs", "2", "--train-size", "128",
         "--batch-size", "32", "--checkpoint-every", "1", "--keep-checkpoints", "8", "--eval-size", "40",
         "--eval-pgd", "5", "--eval-every", "4"]  # fmt: skip


def logged(script: str, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run a recipe with plain logging (no rich console wrapping the lines); returns the process and
    its output with the whitespace normalised."""
    cmd = [sys.executable, str(RECIPES / script), "--no-progress", *args]
    env = {**os.environ, "TERM": "dumb"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    return proc, " ".join((proc.stdout + proc.stderr).split())


def fault_injection(tmp_path: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=3000, cwd=ROOT)  # fmt: skip
    ok(proc)
    return json.loads((tmp_path / "fault_injection.json").read_text())


def test_kills_payloads_and_nan_steps(tmp_path):
    res = fault_injection(tmp_path, "--kills", "3", "--seed", "1", "--repeats", "1")
    assert sum(t["killed"] for t in res["kills"]) == 3 and all(t["passed"] for t in res["kills"]), res["kills"]
    assert len(res["payloads"]) >= 15 and not any(t["executed"] for t in res["payloads"])
    assert [t["passed"] for t in res["nan"]] == [True, True], res["nan"]
    assert res["nan"][0]["nonfinite_steps"] == 1 and "non-finite steps in a row" in res["nan"][1]["error"]
    assert [t["passed"] for t in res["repeats"]] == [True]


@pytest.mark.slow
def test_twenty_kills_all_resume_exactly(tmp_path):
    res = fault_injection(tmp_path, "--kills", "20", "--parts", "kills")
    killed = [t for t in res["kills"] if t["killed"]]
    assert len(killed) == 20 and all(t["passed"] for t in killed), [t for t in res["kills"] if not t["passed"]]


def test_resume_skips_a_damaged_checkpoint_and_a_cut_metrics_line(tmp_path):
    ok(run("robust.py", *SMALL, "--out", str(tmp_path / "full")))
    interrupt(tmp_path / "full", tmp_path / "cut", at=6)
    cut = tmp_path / "cut"
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == [f"step_{i}" for i in range(1, 7)]
    rng = cut / "checkpoints" / "step_6" / "rng_0.safetensors"
    rng.write_bytes(rng.read_bytes()[:-7])  # a truncated RNG state: step_6 must not be used
    (cut / "checkpoints" / "step_5" / "manifest.json").unlink()  # step_5 never finished
    (cut / "checkpoints" / ".step_7.partial").mkdir()  # a write the kill interrupted
    text = (cut / "metrics.jsonl").read_text()
    (cut / "metrics.jsonl").write_text(text + '{"step": 9, "epoch": 2.2')  # cut mid-line by the kill
    proc, log = logged("robust.py", *SMALL, "--resume", "--out", str(cut))
    ok(proc)
    assert "skipping checkpoint" in log and "rng_0.safetensors has" in log and "no manifest.json" in log
    assert "resumed from" in log and "step_4" in log and "its last line is cut" in log
    assert rows(tmp_path / "full" / "metrics.jsonl") == rows(cut / "metrics.jsonl")
    same_weights(tmp_path / "full" / "model", cut / "model")
    assert not (cut / "checkpoints" / ".step_7.partial").exists()


def test_resume_refuses_changed_options_and_names_them(tmp_path):
    ok(run("robust.py", *SMALL, "--out", str(tmp_path)))
    run_json = (tmp_path / "run.json").read_text()
    proc, err = logged("robust.py", *SMALL, "--resume", "--lr", "0.5", "--seed", "3", "--out", str(tmp_path))
    assert proc.returncode != 0
    assert "--lr 0.003 -> 0.5" in err and "--seed 0 -> 3" in err and "--allow-changed-options" in err
    assert "Traceback" not in proc.stderr and (tmp_path / "run.json").read_text() == run_json  # nothing rewritten
    # options that do not change the run may differ; an explicit override lets the others through
    ok(run("robust.py", *SMALL, "--resume", "--keep-checkpoints", "1", "--eval-every", "2", "--out", str(tmp_path)))
    override = ("--resume", "--lr", "0.5", "--allow-changed-options")
    proc, log = logged("robust.py", *SMALL, *override, "--out", str(tmp_path))
    ok(proc)
    assert "--lr 0.003 -> 0.5" in log


def test_metrics_with_a_bad_line_before_the_last_are_refused(tmp_path, recipe_module):
    skeleton = recipe_module("skeleton")
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(SystemExit, match="line 2, is not a metrics row"):
        skeleton.read_metrics(path)
    path.write_text('{"step": 1}\n{"step": 2}\n{"step"')
    assert [r["step"] for r in skeleton.read_metrics(path)] == [1, 2]


def test_evaluate_killed_mid_run_leaves_a_valid_partial_report(tmp_path):
    model, out = rings_model(tmp_path / "model"), tmp_path / "ev.json"
    # pgd1 on the first batch takes milliseconds, pgd100000 long enough to be killed in it
    cmd = [sys.executable, str(RECIPES / "evaluate.py"), str(model), "--no-progress", "--autoattack", "none",
           "--pgd", "1", "100000", "--eval-size", "300", "--out", str(out)]  # fmt: skip
    with (tmp_path / "stderr").open("w") as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT, env={**os.environ, "TERM": "dumb"}
        )
        try:
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                if out.exists() and "running" in json.loads(out.read_text()):
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "evaluate.py ended before its first attack was done"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    report = json.loads(out.read_text())  # whole: every write is atomic
    assert (report["partial"], report["stage"], report["eps"]) == (True, "attacks", 0.25)
    assert "robust_acc" not in report and "n" not in report
    running = report["running"]
    assert (running["done"], running["total"], running["batch"], running["batches"]) == (1, 9, 1, 3)
    assert running["samples"] == 100 and running["finished"] == 0 and running["robust_acc"] is None
    per = running["per_attack"]
    assert per["pgd1"]["attacked"] == 100 and per["pgd1"]["acc"] == per["pgd1"]["correct"] / 100
    assert per["pgd100000"] == {"correct": 0, "attacked": 0, "acc": None} and per["cw"]["attacked"] == 0
    assert 0 <= per["pgd1"]["correct"] <= round(100 * running["clean_acc"])
    logged = (tmp_path / "stderr").read_text()
    assert f"evaluating {model}" in logged and "attacks 1/9: batch 1/3, pgd1: " in logged
