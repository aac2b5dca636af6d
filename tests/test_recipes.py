"""Recipes run as users run them (subprocesses), on synthetic data or tiny subsets, and the
torchvision loaders they use."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustreg.checkpoint import load_model
from robustreg.control import CONSTRAINABLE, spectral_norm
from robustreg.data import load_vision, synthetic_vision

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROBUSTREG_DATA", ROOT.parent / "shared" / "data"))


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_msa_recipe_smoke_on_synthetic_cifar_shapes(tmp_path):
    out = run(
        "recipes/msa_stability.py", "--dataset", "cifar10", "--synthetic", "--epochs", "1",
        "--train-size", "64", "--test-size", "32", "--batch-size", "32", "--eps-eval", "0.03",
        "--eps-train", "0.03", "--out", str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["methods"]) == {"vanilla", "msa", "pgd10"}
    for r in res["methods"].values():
        at = r["eps=0.03"]
        assert 0 <= r["clean"] <= 1 and at["all"] <= min(r["clean"], at["autoattack-apgd"], at["pgd10"], at["cw"])
    # every layer of the MSA model is in the spectral-norm ball after training
    assert max(res["methods"]["msa"]["spectral_norms"].values()) <= 1 + 1e-5
    assert res["time_ratios"]["msa / pgd10"] > 0  # reported; timing is measured by the recipe itself, not here
    assert (tmp_path / "eigenvalues.png").stat().st_size > 1000
    # every model is saved (safetensors + JSON) for recipes/evaluate.py; the MSA one is still in the ball
    msa, meta = load_model(tmp_path / "msa" / "model")
    assert meta["config"]["method"] == "msa" and meta["config"]["dataset"] == "cifar10"
    assert max(spectral_norm(m.weight) for m in msa.modules() if isinstance(m, CONSTRAINABLE)) <= 1 + 1e-5
    for method in ("vanilla", "pgd10"):
        assert load_model(tmp_path / method / "model")[1]["arch"] == "smallcnn"


def test_msa_recipe_missing_data_says_which_files(tmp_path):
    out = run("recipes/msa_stability.py", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path))
    assert out.returncode != 0
    assert "MNIST/raw" in out.stderr and "--synthetic" in out.stderr


def test_msa_recipe_help_lists_every_option():
    out = run("recipes/msa_stability.py", "--help")
    assert out.returncode == 0
    for option in ("--beta", "--radius", "--msa-logit-scale", "--eps-eval", "--data-dir", "--synthetic"):
        assert option in out.stdout


@pytest.mark.skipif(not (SHARED / "FashionMNIST" / "raw").is_dir(), reason="FashionMNIST files not on this machine")
def test_load_vision_reads_fashion_mnist_from_a_read_only_dir():
    x, y = load_vision("fashionmnist", SHARED, train=False)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) == 1.0
    assert y.dtype == torch.int64 and set(y.unique().tolist()) == set(range(10))


def test_load_vision_errors_and_synthetic_shapes(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-python"):
        load_vision("cifar10", tmp_path, train=True)
    with pytest.raises(ValueError, match="name must be one of"):
        load_vision("imagenet", tmp_path, train=True)
    x, y = synthetic_vision("svhn", 5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 3, 32, 32) and y.shape == (5,)
    assert spectral_norm(torch.eye(3)) == pytest.approx(1.0)


def _skeleton(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import skeleton

    return skeleton


def test_auto_threads_one_for_small_models_else_the_cores_per_process(monkeypatch):
    skeleton = _skeleton(monkeypatch)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert skeleton.auto_threads(small_model=True) == 1
    assert skeleton.auto_threads(small_model=False) == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert skeleton.auto_threads(small_model=False) == max(1, cores // 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's (or torchrun's) setting wins
    assert skeleton.auto_threads(small_model=False) == torch.get_num_threads()


def test_requested_processes_only_under_a_simple_launch_of_several(monkeypatch):
    skeleton = _skeleton(monkeypatch)
    for key in ("ACCELERATE_USE_CPU", "MASTER_ADDR", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert skeleton.requested_processes() is None  # a plain python run
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    assert skeleton.requested_processes() is None  # accelerate launch of one process: no MASTER_ADDR
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert skeleton.requested_processes() == 0  # several asked; pytest's parent does not name a count
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert skeleton.requested_processes() is None  # torchrun started the group


def test_curves_plot_the_training_loss_even_without_evaluations(tmp_path, monkeypatch):
    skeleton = _skeleton(monkeypatch)
    metrics = tmp_path / "metrics.jsonl"
    train = [{"step": s, "epoch": s / 10, "wall": s / 5, "kind": "train", "lr": 0.1, "loss": 1 / s, "ce": 0.5 / s}
             for s in (10, 20, 30)]  # fmt: skip
    metrics.write_text("".join(json.dumps(r) + "\n" for r in train))
    assert skeleton.plot_curves(metrics, tmp_path / "a.png", "t") == tmp_path / "a.png"
    assert (tmp_path / "a.png").stat().st_size > 10_000
    final = {"step": 30, "epoch": 3.0, "wall": 6.0, "kind": "eval", "acc": 0.9}
    metrics.write_text(metrics.read_text() + json.dumps(final) + "\n")
    assert skeleton.plot_curves(metrics, tmp_path / "b.png", "t") == tmp_path / "b.png"
    metrics.write_text("")
    assert skeleton.plot_curves(metrics, tmp_path / "c.png", "t") is None and not (tmp_path / "c.png").exists()
