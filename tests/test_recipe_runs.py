"""The Accelerate recipes, run as users run them (subprocesses, one of them under ``accelerate
launch`` with two processes), on generated or synthetic data: smoke runs of every recipe and
method, exact resume, one vs two processes, the saved model, and the errors for missing data."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from robustreg.checkpoint import load_model

from ._recipes import RECIPES, ROOT, interrupt, ok, rings_model, rows, run, same_weights
from .conftest import free_port

# -- semi-supervised --------------------------------------------------------------------------


def test_semisupervised_two_rings_every_method(tmp_path):
    methods = "supervised,vat,vat-entmin,tar,nar,tnar"
    ok(run("semisupervised.py", "--methods", methods, "--steps", "40", "--eval-every", "20",
           "--n-unlabeled", "300", "--out", str(tmp_path)))  # fmt: skip
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "decision_regions.png").stat().st_size > 5000
    for method in methods.split(","):
        summary = res[method]
        assert 0 <= summary["acc"] <= 1 and summary["steps"] == 40 and summary["processes"] == 1
        evals = rows(tmp_path / method / "metrics.jsonl", "eval")
        assert [r["step"] for r in evals] == [20, 40] and evals[-1]["acc"] == summary["acc"]
        train_rows = rows(tmp_path / method / "metrics.jsonl", "train")
        assert {"loss", "ce", "lr"} <= set(train_rows[-1])
        assert (tmp_path / method / "curves.png").is_file()
        # the saved model is the trained one: its accuracy on the evaluation points is the summary's
        model, meta = load_model(tmp_path / method / "model")
        from robustreg.data import rings_ssl

        rings = rings_ssl(300, labeled_per_class=3, seed=0)
        with torch.no_grad():
            acc = (model(rings.x_unlabeled).argmax(1) == rings.y_unlabeled).float().mean()
        assert float(acc) == pytest.approx(summary["acc"])
        assert meta["config"]["methods"] == methods and meta["arch"] == "mlp"
    # evaluate.py on a semi-supervised model: ℓ∞ ε = 0.25 for the rings, not VAT's ℓ2 radius 0.3
    proc = run("evaluate.py", str(tmp_path / "tnar" / "model"), "--pgd", "3", "--cw-steps", "3", "--no-masking")
    ok(proc)
    report = json.loads((tmp_path / "tnar" / "evaluation.json").read_text())
    assert report["eps"] == 0.25 and report["n"] == 300 and report["clean_acc"] == pytest.approx(res["tnar"]["acc"])
    assert {"tar", "nar"} <= set(rows(tmp_path / "tnar" / "metrics.jsonl", "train")[-1])
    assert "entropy" in rows(tmp_path / "vat-entmin" / "metrics.jsonl", "train")[-1]


def test_cifar_tnar_on_synthetic_cifar_trains_its_chart_first(tmp_path):
    ok(run("cifar_tnar.py", "--synthetic", "--steps", "2", "--labels", "100", "--batch-labeled", "10",
           "--batch-unlabeled", "10", "--chart-epochs", "1", "--eval-size", "20", "--out", str(tmp_path)))  # fmt: skip
    summary = json.loads((tmp_path / "tnar" / "summary.json").read_text())
    assert summary["dataset"] == "cifar10" and summary["labels"] == 100 and summary["method"] == "tnar"
    chart, meta = load_model(tmp_path / "chart")
    assert meta["arch"] == "vae" and chart.image_shape == (3, 32, 32)
    assert load_model(tmp_path / "tnar" / "model")[1]["arch"] == "conv_large"
    assert (tmp_path / "tnar" / "perturbations.png").stat().st_size > 5000


def test_chart_recipe_then_tnar_with_that_lgan_chart(tmp_path):
    chart_out = tmp_path / "chart"
    ok(run("chart.py", "--dataset", "fashionmnist", "--kind", "lgan", "--synthetic", "--train-size", "64",
           "--epochs", "1", "--batch-size", "32", "--width", "8", "--latent", "3",
           "--out", str(chart_out)))  # fmt: skip
    summary = json.loads((chart_out / "summary.json").read_text())
    assert summary["kind"] == "lgan" and summary["steps"] == 2 and summary["recon_error"] > 0
    assert {"d", "gan", "locality", "orthonormality"} <= set(rows(chart_out / "metrics.jsonl", "train")[-1])
    assert (chart_out / "reconstructions.png").is_file()
    proc = run("evaluate.py", str(chart_out / "model"))
    assert proc.returncode != 0 and "chart, not a classifier" in proc.stderr
    ok(run("semisupervised.py", "--dataset", "fashionmnist", "--synthetic", "--methods", "tnar", "--chart", "lgan",
           "--chart-path", str(chart_out / "model"), "--steps", "2", "--labels", "20", "--batch-labeled", "10",
           "--batch-unlabeled", "10", "--eval-size", "20", "--out", str(tmp_path / "ssl")))  # fmt: skip
    assert (tmp_path / "ssl" / "tnar" / "perturbations.png").is_file()
    assert not (tmp_path / "ssl" / "chart").exists()  # the given chart was used, none trained


def test_semisupervised_images_carry_the_entropy_term_and_choose_on_a_validation_split(tmp_path):
    args = ["--dataset", "fashionmnist", "--synthetic", "--methods", "vat,tnar", "--chart", "ae", "--chart-epochs",
            "1", "--steps", "4", "--labels", "20", "--batch-labeled", "10", "--batch-unlabeled", "10",
            "--eval-size", "20", "--val-size", "30", "--eval-every", "2", "--normal", "official",
            "--out", str(tmp_path)]  # fmt: skip
    ok(run("semisupervised.py", *args))
    for method in ("vat", "tnar"):
        evals = rows(tmp_path / method / "metrics.jsonl", "eval")
        assert [r["step"] for r in evals] == [2, 4] and all("val_acc" in r and "acc" not in r for r in evals)
        assert all("entropy" in r for r in rows(tmp_path / method / "metrics.jsonl", "train")), method
        summary = json.loads((tmp_path / method / "summary.json").read_text())
        assert 0 <= summary["val_acc"] <= 1 and 0 <= summary["acc"] <= 1
    config = json.loads((tmp_path / "tnar" / "run.json").read_text())["config"]
    assert (config["entropy"], config["normal"], config["tnar_normalize"]) == (1.0, "official", "official")
    assert (config["eps_tangent"], config["eps_normal"]) == (0.25, 1.0)  # the preset: benchmarks/fashion_ssl.py's
    proc = run("semisupervised.py", "--val-size", "10", "--out", str(tmp_path / "rings"))
    assert proc.returncode != 0 and "transductive" in proc.stderr


@pytest.mark.parametrize(
    ("dataset", "kind", "batch"), [("svhn", "vae", "8"), ("mnist", "ae", "8"), ("two-rings", "mlp-ae", "256")]
)
def test_chart_recipe_other_kinds(tmp_path, recipe_module, dataset, kind, batch):
    chart = recipe_module("chart")
    summary = chart.main(["--dataset", dataset, "--kind", kind, "--synthetic", "--train-size", "64", "--epochs",
                          "5" if batch == "8" else "2", "--batch-size", batch, "--out", str(tmp_path),
                          "--no-progress"])  # fmt: skip
    assert load_model(tmp_path / "model")[1]["arch"] == kind and summary["recon_error"] >= 0
    losses = [r["loss"] for r in rows(tmp_path / "metrics.jsonl", "train")]
    assert len(losses) == 2  # logged at steps 20 and 40 (22 for the rings)
    if dataset != "two-rings":  # the rings' 22 steps of 256 points are too few to rank two noisy losses
        assert losses[1] < losses[0]


# -- robust training ----------------------------------------------------------------------------


def test_robust_every_method_on_two_rings(tmp_path, recipe_module):
    robust = recipe_module("robust")
    for method in robust.METHODS:
        out = tmp_path / method
        summary = robust.main(["--dataset", "two-rings", "--method", method, "--epochs", "2", "--train-size", "128",
                               "--batch-size", "32", "--eval-size", "40", "--eval-pgd", "5", "--eval-every", "4",
                               "--out", str(out), "--no-progress"])  # fmt: skip
        finals = ("clean_acc", "autoattack-apgd_acc", "pgd5_acc", "cw_acc")
        assert summary["robust_acc"] <= min(summary[k] for k in finals), method
        evals = rows(out / "metrics.jsonl", "eval")
        assert [r["step"] for r in evals] == [4, 8] and all("pgd40_acc" in r for r in evals), method
        train = rows(out / "metrics.jsonl", "train")[-1]
        if method != "natural":
            assert "adv_acc" in train, method
        if method.startswith("amata-") and method != "amata-fast":
            assert train["K"] >= 2, method
        assert load_model(out / "model")[1]["config"]["method"] == method


def test_tensorboard_tracker_gets_the_train_and_eval_metrics(tmp_path, recipe_module):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    robust = recipe_module("robust")
    robust.main(["--dataset", "two-rings", "--method", "natural", "--epochs", "1", "--train-size", "256",
                 "--batch-size", "32", "--eval-every", "4", "--eval-pgd", "3", "--tensorboard", "--out", str(tmp_path),
                 "--no-progress"])  # fmt: skip
    (events,) = (tmp_path / "robust_two-rings_natural").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert {"train/loss", "train/lr", "eval/clean_acc", "eval/robust_acc"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("eval/clean_acc")] == [4, 8]


def test_robust_on_synthetic_mnist_with_yopo_and_evaluate_recipe(tmp_path):
    ok(run("robust.py", "--dataset", "mnist", "--synthetic", "--method", "yopo", "--epochs", "1", "--train-size",
           "64", "--batch-size", "32", "--eval-size", "32", "--eval-pgd", "3", "--checkpoint-every", "1",
           "--out", str(tmp_path)))  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    meta = load_model(tmp_path / "model")[1]
    assert summary["eps"] == 0.3 and meta["arch"] == "smallcnn"
    assert meta["config"]["threat_model"] == {"norm": "linf", "eps": 0.3}  # evaluate.py's default radius
    proc = run("evaluate.py", str(tmp_path / "model"), "--pgd", "3", "5", "--cw-steps", "3", "--eval-size", "32")
    ok(proc)
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["dataset"] == "mnist" and report["n"] == 32 and report["eps"] == 0.3 and not report["partial"]
    per_attack = ("autoattack-standard_acc", "pgd3_acc", "pgd5_acc", "cw_acc", "clean_acc")
    assert report["robust_acc"] <= min(report[k] for k in per_attack)  # AutoAttack standard, the default
    names = {c["name"] for c in report["masking"]["checks"]}
    assert names == {"more steps", "restarts", "fgsm vs pgd", "unbounded", "converged", "apgd gap"}
    assert "masking checks" in proc.stdout
    # a checkpoint evaluates too (architecture from run.json): the last one holds the final weights
    step_2 = tmp_path / "checkpoints" / "step_2"
    args = ("--pgd", "3", "--cw-steps", "3", "--eval-size", "32", "--no-masking", "--autoattack", "apgd")
    ok(run("evaluate.py", str(step_2), *args))
    at_step_2 = json.loads((step_2 / "evaluation.json").read_text())
    assert at_step_2["clean_acc"] == report["clean_acc"] and "masking" not in at_step_2
    assert "autoattack-apgd_acc" in at_step_2


def test_evaluate_recipe_without_pyautoattack_says_how_to_install(tmp_path, recipe_module, monkeypatch, capsys):
    evaluate = recipe_module("evaluate")
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path / "model")])
    err = capsys.readouterr().err
    assert 'pip install "robustreg[eval]"' in err and "--autoattack none" in err


def test_evaluate_recipe_on_a_two_rings_model_passes_the_masking_checks(tmp_path):
    ok(run("robust.py", "--dataset", "two-rings", "--method", "pgd", "--out", str(tmp_path)))  # the defaults
    ok(run("evaluate.py", str(tmp_path / "model"), "--eval-size", "300", "--out", str(tmp_path / "ev.json")))
    report = json.loads((tmp_path / "ev.json").read_text())
    assert report["eps"] == 0.25 and report["clean_acc"] > 0.9 and report["robust_acc"] > 0.5
    assert report["masking"]["passed"], report["masking"]


@pytest.mark.parametrize(
    ("config", "eps", "norm"),
    [
        ({"threat_model": {"norm": "linf", "eps": 0.123}}, 0.123, "linf"),  # what a robust run records
        ({"threat_model": {"norm": "l2", "eps": 0.7}}, 0.7, "l2"),  # interpret.py's PGD-ℓ2 models
        ({"threat_model": None, "methods": "vat", "eps": 0.9}, None, "linf"),  # trained against none: the preset
        ({"eps": 0.2}, 0.2, "linf"),  # saved before runs recorded a threat model: a robust run's eps
        ({"methods": "vat", "eps": 0.9}, None, "linf"),  # ... and a semi-supervised one's (VAT's radius) is not one
    ],
)  # fmt: skip
def test_evaluate_recipe_attacks_in_the_ball_the_model_was_trained_against(tmp_path, recipe_module, config, eps, norm):
    model = rings_model(tmp_path / "model", **config)
    ok(run("evaluate.py", str(model), "--autoattack", "none", "--pgd", "2", "--cw-steps", "2", "--eval-size", "40",
           "--no-masking"))  # fmt: skip
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["eps"] == pytest.approx(
        eps if eps is not None else recipe_module("skeleton").PRESETS["two-rings"].eps
    )
    assert report["norm"] == norm and f"norm='{norm}'" in report["attacks"]["pgd2"]
    if norm == "linf":  # an ℓ2 evaluation of a model trained in another ball needs its radius
        proc = run("evaluate.py", str(model), "--autoattack", "none", "--norm", "l2", "--no-masking")
        assert proc.returncode != 0 and "--eps" in proc.stderr


def test_evaluate_recipe_shows_a_bar_and_logs_every_attack_on_every_batch(tmp_path):
    model = rings_model(tmp_path / "model")
    cmd = [sys.executable, str(RECIPES / "evaluate.py"), str(model), "--autoattack", "none", "--pgd", "2",
           "--cw-steps", "2", "--eval-size", "250", "--no-masking"]  # fmt: skip
    env = {**os.environ, "TERM": "dumb", "TTY_COMPATIBLE": "1", "COLUMNS": "160"}  # a bar as on a terminal
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    ok(proc)
    assert proc.stderr.splitlines()[0] == f"evaluating {model}: loading the model and the test data"
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("attacks ")]
    heads = [ln.split(" correct")[0].rsplit(" ", 1)[0] for ln in lines]  # "attacks 1/6: batch 1/3, pgd2:"
    assert heads == [f"attacks {i + 1}/6: batch {i // 2 + 1}/3, {('pgd2', 'cw')[i % 2]}:" for i in range(6)]
    assert "attacks: 3 batches × 2 attacks" in proc.stdout and "6/6" in proc.stdout and "eta" in proc.stdout
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert (report["partial"], report["stage"], report["n"]) == (False, "done", 250) and "running" not in report
    assert f"{round(report['cw_acc'] * 250)}/250 correct so far" in lines[-1]


# -- resume, processes, errors ---------------------------------------------------------------------


def test_resume_continues_exactly_semisupervised_vat(tmp_path):
    args = ["--methods", "vat", "--steps", "100", "--checkpoint-every", "40", "--keep-checkpoints", "3",
            "--eval-every", "50", "--n-unlabeled", "300"]  # fmt: skip
    ok(run("semisupervised.py", *args, "--out", str(tmp_path / "full")))
    interrupt(tmp_path / "full" / "vat", tmp_path / "cut" / "vat", at=40)
    assert sorted(p.name for p in (tmp_path / "cut" / "vat" / "checkpoints").iterdir()) == ["step_40"]
    ok(run("semisupervised.py", *args, "--resume", "--out", str(tmp_path / "cut")))
    full, cut = tmp_path / "full" / "vat", tmp_path / "cut" / "vat"
    assert rows(full / "metrics.jsonl") == rows(cut / "metrics.jsonl")  # VAT's random draws included
    same_weights(full / "model", cut / "model")


def test_resume_continues_exactly_amata_atta(tmp_path):
    # Amata's clock and ATTA's per-sample perturbations live in the checkpoint
    args = ["--dataset", "two-rings", "--method", "amata-atta", "--epochs", "4", "--train-size", "128",
            "--batch-size", "32", "--checkpoint-every", "6", "--keep-checkpoints", "3", "--eval-size", "40",
            "--eval-pgd", "5"]  # fmt: skip
    ok(run("robust.py", *args, "--out", str(tmp_path / "full")))
    interrupt(tmp_path / "full", tmp_path / "cut", at=6)
    ok(run("robust.py", *args, "--resume", "--out", str(tmp_path / "cut")))
    assert rows(tmp_path / "full" / "metrics.jsonl") == rows(tmp_path / "cut" / "metrics.jsonl")
    same_weights(tmp_path / "full" / "model", tmp_path / "cut" / "model")
    full, cut = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("full", "cut"))
    assert {k: v for k, v in full.items() if k not in ("wall_seconds", "out", "model", "metrics", "curves_plot")} == {
        k: v for k, v in cut.items() if k not in ("wall_seconds", "out", "model", "metrics", "curves_plot")
    }


def test_max_steps_stops_early_and_resume_without_it_continues_the_same_run(tmp_path):
    args = ["--methods", "vat", "--steps", "100", "--checkpoint-every", "40", "--n-unlabeled", "300"]
    ok(run("semisupervised.py", *args, "--out", str(tmp_path / "full")))
    ok(run("semisupervised.py", *args, "--max-steps", "40", "--out", str(tmp_path / "cut")))
    cut = tmp_path / "cut" / "vat"
    summary = json.loads((cut / "summary.json").read_text())
    assert (summary["steps"], summary["planned_steps"]) == (40, 100)
    assert max(r["step"] for r in rows(cut / "metrics.jsonl")) == 40
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step_40"]
    ok(run("semisupervised.py", *args, "--resume", "--out", str(tmp_path / "cut")))  # the cap lifted
    full = tmp_path / "full" / "vat"
    cut_rows = rows(cut / "metrics.jsonl", "train")
    assert [r for r in cut_rows if r["step"] != 40] == rows(full / "metrics.jsonl", "train")  # one run, not two
    assert [r["step"] for r in cut_rows if r not in rows(full / "metrics.jsonl", "train")] == [40]  # logged at the cap
    same_weights(full / "model", cut / "model")


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not on PATH")
def test_a_launch_that_starts_one_process_of_two_says_so(tmp_path):
    launch = ["accelerate", "launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(free_port())]  # fmt: skip
    args = ["--dataset", "two-rings", "--method", "natural", "--epochs", "1", "--train-size", "64",
            "--eval-size", "20", "--eval-pgd", "2", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run([*launch, str(RECIPES / "robust.py"), "--no-progress", *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env={**os.environ, "TERM": "dumb"})  # fmt: skip
    ok(proc)
    assert "asked for 2 processes but started 1" in proc.stderr and "--multi_gpu" in proc.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["processes"] == 1
    quiet = run("robust.py", *args[:-1], str(tmp_path / "plain"))  # a plain run: no such warning
    ok(quiet)
    assert "asked for" not in quiet.stderr + quiet.stdout


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not on PATH")
def test_two_processes_under_accelerate_launch_match_one(tmp_path):
    args = ["--dataset", "two-rings", "--method", "pgd", "--no-random-start", "--epochs", "3", "--train-size", "320",
            "--batch-size", "64", "--eval-every", "5", "--eval-size", "100", "--eval-pgd", "5"]  # fmt: skip
    launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    two = subprocess.run([*launch, str(RECIPES / "robust.py"), "--no-progress", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)  # fmt: skip
    ok(two)
    ok(run("robust.py", *args, "--out", str(tmp_path / "one")))
    one_s, two_s = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert (one_s["processes"], two_s["processes"]) == (1, 2)
    one_r, two_r = rows(tmp_path / "one" / "metrics.jsonl"), rows(tmp_path / "two" / "metrics.jsonl")
    assert [(r["step"], r["kind"]) for r in one_r] == [(r["step"], r["kind"]) for r in two_r]
    for a, b in zip(one_r, two_r, strict=True):  # same batches, same steps: equal up to summation order
        for key in a:
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    for x, y in zip(load_model(tmp_path / "one" / "model")[0].state_dict().values(),
                    load_model(tmp_path / "two" / "model")[0].state_dict().values(), strict=True):  # fmt: skip
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("script", ["semisupervised.py", "robust.py", "chart.py"])
def test_missing_data_says_which_files_to_place_where(tmp_path, script):
    proc = run(script, "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert "MNIST/raw" in proc.stderr and "--synthetic" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_options_are_rejected_before_anything_runs(tmp_path):
    proc = run("semisupervised.py", "--methods", "vat,mixmatch", "--out", str(tmp_path))
    assert proc.returncode != 0 and "mixmatch" in proc.stderr and not (tmp_path / "vat").exists()
    proc = run("robust.py", "--method", "pgd", "--epochs", "-1", "--out", str(tmp_path))
    assert proc.returncode != 0 and "--epochs must be >= 0" in proc.stderr
    proc = run("evaluate.py", str(tmp_path / "nothing"))
    assert proc.returncode != 0 and "model.json" in proc.stderr


@pytest.mark.parametrize(
    ("script", "config"),
    [("semisupervised.py", "SSLConfig"), ("robust.py", "RobustConfig"), ("chart.py", "ChartConfig")],
)
def test_help_lists_every_option_with_its_default(recipe_module, script, config):
    proc = run(script, "--help")
    ok(proc)
    text = " ".join(proc.stdout.split())
    cls = getattr(recipe_module(script.removesuffix(".py")), config)
    for field in dataclasses.fields(cls):
        assert "--" + field.name.replace("_", "-") in text, field.name
    assert "(default:" in text


def test_step_batches_depend_on_the_step_only(recipe_module):
    skeleton = recipe_module("skeleton")
    whole = list(skeleton.StepBatches(10, 3, seed=4, start=0, stop=12))
    tail = list(skeleton.StepBatches(10, 3, seed=4, start=7, stop=12))
    assert whole[7:] == tail and all(len(b) == 3 for b in whole)
    epochs = [sorted(j for b in whole[i : i + 3] for j in b) for i in (0, 3, 6)]  # 3 batches an epoch, 1 dropped
    assert all(len(set(e)) == 9 for e in epochs) and whole[0:3] != whole[3:6]
    small = list(skeleton.StepBatches(2, 5, seed=0, start=0, stop=3))  # a set smaller than the batch: one batch
    assert all(sorted(b) == [0, 1] for b in small)


def test_hold_out_keeps_validation_images_out_of_training(recipe_module):
    skeleton = recipe_module("skeleton")
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    (xt, yt), (xv, yv) = skeleton.hold_out((x, y), 3)
    assert yt.tolist() == list(range(7)) and yv.tolist() == [7, 8, 9]
    assert torch.equal(xt.flatten(), yt.float()) and torch.equal(xv.flatten(), yv.float())
    (_, yt), (_, yv) = skeleton.hold_out((x, y), 2, n_train=5)  # the first 5 train, the next 2 validate
    assert yt.tolist() == [0, 1, 2, 3, 4] and yv.tolist() == [5, 6]
    with pytest.raises(SystemExit, match="--val-size 8 leaves 2 of 10 training images"):
        skeleton.hold_out((x, y), 8, minimum=3)
