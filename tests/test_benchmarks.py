"""The benchmark scripts run and report every method (a smoke run; no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_step_cost_reports_each_method_and_its_ratio():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "step_cost.py"), "--repeats", "1", "--warmup", "0",
           "--batch-size", "4"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    report = json.loads(out.stdout)
    assert list(report["results"]) == ["natural", "pgd10", "pgd40", "fast", "free", "trades10", "yopo5-3", "yopo5-10"]
    assert set(report["ratios"]) == {
        "yopo5-10 / pgd40", "yopo5-3 / pgd10", "yopo5-3 / (5 x natural)", "yopo5-10 / (5 x natural)"
    }  # fmt: skip
    assert report["results"]["natural"]["ratio_to_natural"] == 1.0
    assert all(r["median_s"] > 0 for r in report["results"].values())
