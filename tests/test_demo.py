"""The README's main job, run as the README runs it (a subprocess), on the default settings."""

import json
import subprocess
import sys

import pytest
import torch

from robustreg.data import two_rings
from robustreg.demo import main


def test_default_demo_shows_natural_training_is_not_robust_and_every_method_is():
    out = subprocess.run(
        [sys.executable, "-m", "robustreg.demo", "--json"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert set(res) == {"natural", "pgdat", "fast", "free", "trades"}
    assert all(r["clean"] > 0.95 for r in res.values())
    assert res["natural"]["robust"] < 0.5
    for method in ("pgdat", "fast", "free", "trades"):
        assert res[method]["robust"] > res["natural"]["robust"] + 0.3, (method, res[method])


def test_demo_table_output_and_bad_method(capsys):
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


def test_demo_pgdat_is_robust_on_another_seed_thanks_to_the_eps_warm_up():
    # at the full ε from the first step, PGD-AT on seed 1 collapsed to a constant classifier (50.5%)
    res = main(["--json", "--seed", "1", "--methods", "pgdat"])
    assert res["pgdat"]["clean"] > 0.95 and res["pgdat"]["robust"] > 0.8
