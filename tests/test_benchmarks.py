"""The benchmark scripts run and report every method (a smoke run; no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_step_cost_reports_each_method_and_its_ratio():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "step_cost.py"), "--repeats", "1", "--warmup", "0",
           "--batch-size", "4"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert list(report["results"]) == ["natural", "pgd10", "pgd40", "fast", "free", "trades10", "yopo5-3", "yopo5-10"]
    assert set(report["ratios"]) == {
        "yopo5-10 / pgd40", "yopo5-3 / pgd10", "yopo5-3 / (5 x natural)", "yopo5-10 / (5 x natural)"
    }  # fmt: skip
    assert report["results"]["natural"]["ratio_to_natural"] == 1.0
    assert all(r["median_s"] > 0 for r in report["results"].values())


def test_time_to_robust_summary():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from time_to_robust import summarize
    finally:
        sys.path.pop(0)
    curves = {
        "pgd40": [{"train_s": 0, "robust": 0.1}, {"train_s": 100, "robust": 0.5}, {"train_s": 200, "robust": 0.8}],
        "yopo5-10": [{"train_s": 0, "robust": 0.1}, {"train_s": 50, "robust": 0.6}, {"train_s": 100, "robust": 0.9}],
    }
    report = summarize({"curves": curves})
    assert report["target_robust"] == 0.8
    assert report["time_to_target_s"] == {"pgd40": 200, "yopo5-10": 100}
    assert report["yopo_over_pgd40"] == 0.5
    # YOPO crosses 0.8 two thirds of the way from 0.6 (t = 50) to 0.9 (t = 100).
    assert abs(report["time_to_target_interpolated_s"]["yopo5-10"] - 250 / 3) < 1e-9
    assert abs(report["yopo_over_pgd40_interpolated"] - 250 / 600) < 1e-9
