"""Recipes run as users run them (subprocesses), on synthetic data or tiny subsets, and the
torchvision loaders they use."""

import dataclasses
import json
import os
import shutil
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
        "--train-size", "64", "--eval-size", "32", "--batch-size", "32", "--eps-eval", "0.03",
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
    assert meta["metrics"]["method"] == "msa" and meta["config"]["dataset"] == "cifar10"
    assert meta["config"]["threat_model"] is None  # only PGD-10's model was trained against one
    assert load_model(tmp_path / "pgd10" / "model")[1]["config"]["threat_model"] == {"norm": "linf", "eps": 0.03}
    assert max(spectral_norm(m.weight) for m in msa.modules() if isinstance(m, CONSTRAINABLE)) <= 1 + 1e-5
    for method in ("vanilla", "pgd10"):
        assert load_model(tmp_path / method / "model")[1]["arch"] == "smallcnn"
        assert load_model(tmp_path / method / "model")[0].logit_scale == 1.0
    # MSA's network keeps the temperature it was trained with (--msa-logit-scale, 10)
    assert msa.logit_scale == 10.0 and meta["kwargs"]["logit_scale"] == 10.0


def test_msa_recipe_refuses_a_bad_logit_scale_before_training(tmp_path):
    for bad in ("0", "-1", "nan"):
        out = run("recipes/msa_stability.py", "--dataset", "mnist", "--synthetic", "--msa-logit-scale", bad,
                  "--out", str(tmp_path))  # fmt: skip
        assert out.returncode != 0 and "--msa-logit-scale" in out.stderr
    assert not (tmp_path / "vanilla").exists()


def test_msa_recipe_missing_data_says_which_files(tmp_path):
    out = run("recipes/msa_stability.py", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path))
    assert out.returncode != 0
    assert "MNIST/raw" in out.stderr and "--synthetic" in out.stderr


def test_msa_recipe_help_lists_every_option():
    out = run("recipes/msa_stability.py", "--help")
    assert out.returncode == 0
    options = ("--msa-beta", "--msa-alpha", "--radius", "--msa-logit-scale", "--eps-eval", "--data-dir", "--synthetic")
    for option in options:
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


@pytest.mark.parametrize("evaluate_at_stop", [True, False])
def test_end_step_logs_evaluates_and_checkpoints_only_when_due(tmp_path, recipe_module, evaluate_at_stop):
    skeleton = recipe_module("skeleton")
    cfg = skeleton.RunConfig(out=str(tmp_path), eval_every=4, checkpoint_every=6, keep_checkpoints=5,
                             progress=False, threads=1)  # fmt: skip
    run = skeleton.Run(cfg, "end_step")
    run.prepare(torch.nn.Linear(2, 2))  # a checkpoint holds it
    run.resume()
    asked: dict[str, list[int]] = {"metrics": [], "evaluate": []}

    def metrics(done):
        asked["metrics"].append(done)
        return {"lr": 0.5, "loss": torch.tensor(float(done))}  # a tensor (averaged) beside a float

    def evaluate(done):
        asked["evaluate"].append(done)
        return {"acc": done / 100}

    with run.progress(10, "t"):
        for step in range(run.start, 10):
            done = step + 1
            run.end_step(done, 10, done / 5, log_every=3, evaluate_at_stop=evaluate_at_stop,
                         metrics=lambda d=done: metrics(d), evaluate=lambda d=done: evaluate(d))  # fmt: skip
    evaluated = [4, 8, 10] if evaluate_at_stop else [4, 8]
    assert asked == {"metrics": [3, 6, 9, 10], "evaluate": evaluated}
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["epoch"], r["lr"], r["loss"]) for r in logged if r["kind"] == "train"]
    assert train == [(d, d / 5, 0.5, float(d)) for d in (3, 6, 9, 10)]
    assert [(r["step"], r["acc"]) for r in logged if r["kind"] == "eval"] == [(d, d / 100) for d in evaluated]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_10", "step_6"]


def test_attack_suite_is_autoattack_pgd_and_cw_with_steps_that_cross_the_ball(recipe_module):
    skeleton = recipe_module("skeleton")
    eps = 0.3
    suite = skeleton.attack_suite(eps, bounds=(0.0, 1.0), autoattack="apgd", pgd_steps=[10, 40], restarts=2, seed=3)
    assert list(suite) == ["autoattack-apgd", "pgd10", "pgd40", "cw"]
    assert suite["autoattack-apgd"].version == "apgd" and suite["autoattack-apgd"].eps == eps
    for k in (10, 40):
        pgd = suite[f"pgd{k}"]
        assert (pgd.steps, pgd.restarts, pgd.eps) == (k, 2, eps)
        assert pgd.steps * pgd.alpha >= 2.5 * eps - 1e-12  # the steps cross the ball (k·α ≥ 2ε)
    assert suite["pgd10"].alpha == eps / 4  # Madry's MNIST step, the larger one for k = 10
    assert suite["cw"].steps * suite["cw"].alpha >= 2 * eps
    without = skeleton.attack_suite(eps, bounds=None, autoattack=None, pgd_steps=[20])
    assert list(without) == ["pgd20", "cw"] and without["pgd20"].bounds is None


def test_renamed_options_keep_their_old_spelling_and_resume_old_checkpoints(tmp_path, recipe_module, capsys):
    skeleton, robust = recipe_module("skeleton"), recipe_module("robust")
    assert skeleton.renamed_options(robust.RobustConfig) == {
        "alpha": "attack_alpha", "steps": "attack_steps", "beta": "trades_beta",
    }  # fmt: skip
    argv = ["--steps", "3", "--beta", "2", "--out", str(tmp_path), "--threads", "1"]
    cfg = skeleton.parse(robust.RobustConfig, argv, None)
    assert (cfg.attack_steps, cfg.trades_beta, cfg.attack_alpha) == (3, 2.0, None)
    err = capsys.readouterr().err
    assert "--steps is now --attack-steps" in err and "--beta is now --trades-beta" in err
    new = skeleton.parse(robust.RobustConfig, ["--attack-steps", "3", "--trades-beta", "2", *argv[4:]], None)
    assert new == cfg and capsys.readouterr().err == ""
    # options recorded before the rename are read under the new names
    run = skeleton.Run(cfg, "renamed")
    saved = skeleton.jsonable(dataclasses.asdict(cfg))
    saved = {k: v for k, v in saved.items() if k not in ("attack_steps", "trades_beta")} | {"steps": 3, "beta": 2.0}
    run.check_options(saved, tmp_path)
    with pytest.raises(SystemExit, match="--attack-steps 4 -> 3"):
        run.check_options({**saved, "steps": 4}, tmp_path)


def test_step_guard_puts_back_weights_an_optimiser_wrote_itself(tmp_path, recipe_module):
    skeleton = recipe_module("skeleton")
    run = skeleton.Run(skeleton.RunConfig(out=str(tmp_path), progress=False, threads=1), "guard")
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with run.step_guard(0, model, parameters=True) as guard:
        model(torch.randn(5, 3))  # running statistics move
        with torch.no_grad():
            model[0].weight[0, 0] = float("nan")  # an MSA-like update gone wrong
        assert not guard.ok(torch.tensor(1.0), [], values=list(model.parameters()))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
    assert run.nonfinite_total == 1
    with run.step_guard(1, model, parameters=True) as guard:
        with torch.no_grad():
            model[0].weight.add_(1.0)
        assert guard.ok(torch.tensor(1.0), [], values=list(model.parameters()))
    torch.testing.assert_close(model[0].weight, before["0.weight"] + 1.0)  # a finite update stays
    assert run.nonfinite_in_row == 0


def test_msa_recipe_resumes_each_method_exactly(tmp_path):
    args = ["recipes/msa_stability.py", "--dataset", "mnist", "--synthetic", "--train-size", "128", "--eval-size", "32",
            "--epochs", "2", "--batch-size", "32", "--eps-eval", "0.1", "--checkpoint-every", "4", "--threads", "1",
            "--no-progress"]  # fmt: skip
    full = tmp_path / "full"
    assert run(*args, "--out", str(full)).returncode == 0
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for method in ("vanilla", "msa", "pgd10"):  # each stopped after step 4 of 8
        shutil.rmtree(cut / method / "checkpoints" / "step_8")
        shutil.rmtree(cut / method / "model")
    proc = run(*args, "--out", str(cut), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for method in ("vanilla", "msa", "pgd10"):
        a, b = load_model(full / method / "model")[0], load_model(cut / method / "model")[0]
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    res_full, res_cut = (json.loads((d / "results.json").read_text())["methods"] for d in (full, cut))
    for method, r in res_full.items():
        assert r["eps=0.1"] == res_cut[method]["eps=0.1"] and r["clean"] == res_cut[method]["clean"]


def test_msa_recipe_resumed_after_its_end_reuses_the_evaluation_unless_its_options_changed(tmp_path):
    args = ["recipes/msa_stability.py", "--dataset", "mnist", "--synthetic", "--train-size", "64", "--eval-size", "16",
            "--epochs", "1", "--batch-size", "32", "--eps-eval", "0.1", "--methods", "vanilla,msa", "--threads", "1",
            "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    assert run(*args).returncode == 0
    first = json.loads((tmp_path / "results.json").read_text())["methods"]
    again = run(*args, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    said = " ".join((again.stdout + again.stderr).split())  # the log may wrap its lines
    assert said.count("reusing it") == 2  # both finished methods: nothing trained, nothing evaluated
    second = json.loads((tmp_path / "results.json").read_text())["methods"]
    for method in ("vanilla", "msa"):
        assert second[method]["eps=0.1"] == first[method]["eps=0.1"]
        assert second[method]["clean"] == first[method]["clean"]
    other = run(*[a if a != "0.1" else "0.2" for a in args], "--resume", "--allow-changed-options")
    assert other.returncode == 0 and "reusing it" not in " ".join((other.stdout + other.stderr).split())
    third = json.loads((tmp_path / "results.json").read_text())["methods"]
    assert all("eps=0.2" in third[m] and "eps=0.1" not in third[m] for m in ("vanilla", "msa"))
