"""The demo (``python recipes/demo.py``), run as users run it, and the README's main job: its
recorded figures are the ones the docs quote, and a slow test reruns it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustreg.data import two_rings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def main(recipe_module):
    return recipe_module("demo").main


def test_default_demo_shows_natural_training_is_not_robust_and_every_method_is():
    out = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "demo.py"), "--json"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert set(res) == {"natural", "pgdat", "fast", "free", "trades"}
    assert all(r["clean"] > 0.95 for r in res.values())
    assert res["natural"]["robust"] < 0.5
    for method in ("pgdat", "fast", "free", "trades"):
        assert res[method]["robust"] > res["natural"]["robust"] + 0.3, (method, res[method])


def test_demo_table_output_and_bad_method(capsys, main):
    main(["--epochs", "1", "--methods", "natural,pgdat", "--n-train", "256", "--n-test", "128"])
    out = capsys.readouterr().out
    assert "PGD-20" in out and "gradient-masking checks" in out
    with pytest.raises(SystemExit):
        main(["--methods", "natural,yopo"])


def test_two_rings_shapes_and_radii():
    x, y = two_rings(500, nuisance=3, noise=0.0, generator=torch.Generator().manual_seed(0))
    assert x.shape == (500, 5) and set(y.tolist()) == {0, 1}
    r = x[:, :2].norm(dim=1)
    torch.testing.assert_close(r, torch.tensor([1.0, 2.0])[y])


def test_demo_pgdat_is_robust_on_another_seed_thanks_to_the_eps_warm_up(main):
    # at the full ε from the first step, PGD-AT on seed 1 collapsed to a constant classifier (50.5%)
    res = main(["--json", "--seed", "1", "--methods", "pgdat"])
    assert res["pgdat"]["clean"] > 0.95 and res["pgdat"]["robust"] > 0.8


MAIN_JOB = json.loads((ROOT / "benchmarks" / "results" / "main_job.json").read_text())


def test_the_readme_quotes_the_recorded_main_job():
    """The README and the recipes page quote the main job's figures from the run recorded in
    benchmarks/results/main_job.json, not from memory."""
    figures = [f"{100 * MAIN_JOB['accuracy'][m]:.1f}%".replace("100.0%", "100%") for m in ("supervised", "vat", "tnar")]
    wall = f"{MAIN_JOB['wall_s_total']:.0f} s"
    for doc in ("README.md", "docs/recipes.md"):
        text = " ".join((ROOT / doc).read_text().split())
        assert all(f in text for f in figures) and wall in text, (doc, figures, wall)
    assert MAIN_JOB["wall_s_total"] <= 60  # the first hour's figure: the main job within a minute


@pytest.mark.slow
def test_the_main_job_reproduces_its_recorded_accuracies(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "semisupervised.py"), "--no-progress", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    for method, recorded in MAIN_JOB["accuracy"].items():  # float sums may differ by CPU: 1 point of slack
        assert abs(res[method]["acc"] - recorded) <= 0.01, (method, res[method]["acc"], recorded)
