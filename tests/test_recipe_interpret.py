"""recipes/interpret.py run as users run it (a subprocess) on synthetic images: the family it
trains, what it measures on each model, underfit's stopping rule across a resume, its errors."""

import json
import shutil

import torch

from robustreg.checkpoint import load_model

from ._recipes import ok, run, same_weights

TINY = ["--dataset", "mnist", "--synthetic", "--epochs", "1", "--train-size", "96", "--val-size", "32",
        "--batch-size", "32", "--eval-size", "40", "--robust-size", "16", "--saliency-size", "6",
        "--saliency-samples", "2", "--show", "2", "--attack-steps", "2", "--threads", "1"]  # fmt: skip


def test_interpret_recipe_trains_the_family_and_measures_each_model(tmp_path):
    args = ["--models", "normal,pgd-linf,pgd-l2,fgsm,underfit", "--eps-linf", "0.1", "--eps-l2", "1", "2",
            "--eps-fgsm", "0.2", "--eval-linf", "0.1", "--eval-l2", "1", "--saturation", "0.5", "2", "1024",
            "--shuffle", "1", "4", "--style-transform", "torch:neg"]  # fmt: skip
    ok(run("interpret.py", *TINY, *args, "--out", str(tmp_path)))
    res = json.loads((tmp_path / "results.json").read_text())
    names = ["normal", "pgd-linf-0.1", "pgd-l2-1", "pgd-l2-2", "fgsm-0.2", "underfit"]
    assert list(res["models"]) == names and res["complete"]
    for name, r in res["models"].items():
        assert 0 <= r["linf=0.1"] <= 1 and 0 <= r["l2=1"] <= 1 and r["robust_n"] == 16 and r["eval_n"] == 40
        on = r["on_correct"]
        assert set(on) == {"saturate-0.5", "saturate-2", "saturate-1024", "shuffle-1", "shuffle-4", "style"}
        if r["on_correct_n"]:  # the identities keep every correct image
            assert on["saturate-2"] == 1.0 and on["shuffle-1"] == 1.0
            assert all(0 <= v <= 1 for v in on.values())
        for inputs in ("clean", "saturated"):
            s = r["saliency"][inputs]
            assert 0 <= s["gini"] < 1 and 0 <= s["edge_mass"] <= 1, (name, s)
        meta = load_model(tmp_path / name / "model")[1]
        assert meta["arch"] == "smallcnn" and meta["metrics"]["model"] == name
    threats = {n: load_model(tmp_path / n / "model")[1]["config"]["threat_model"] for n in names}
    assert threats["pgd-l2-2"] == {"norm": "l2", "eps": 2.0} and threats["fgsm-0.2"] == {"norm": "linf", "eps": 0.2}
    assert threats["normal"] is None and threats["underfit"] is None
    # underfit's target: the lowest validation accuracy of the adversarially trained models
    at = [res["models"][n]["val_acc"] for n in names if n.startswith(("pgd", "fgsm"))]
    assert res["models"]["underfit"]["underfit_target"] == min(at)
    for plot in ("saliency_clean", "saliency_saturated", "saturation", "shuffle", "transforms"):
        assert (tmp_path / f"{plot}.png").stat().st_size > 5000, plot
    tables = (tmp_path / "results.md").read_text()
    assert all(f"| {name} |" in tables for name in names) and "| saturate-1024 | shuffle-4 |" in tables.splitlines()[0]
    assert "Robust accuracy: AutoAttack apgd (apgd-ce, apgd-t) on the first 16 test images." in tables
    # recipes/evaluate.py attacks an ℓ2 model in its own ball by default
    quick = ["--autoattack", "none", "--pgd", "2", "--cw-steps", "2", "--eval-size", "16", "--no-masking"]
    ok(run("evaluate.py", str(tmp_path / "pgd-l2-2" / "model"), *quick, "--out", str(tmp_path / "ev.json")))
    report = json.loads((tmp_path / "ev.json").read_text())
    assert (report["norm"], report["eps"], report["partial"]) == ("l2", 2.0, False)
    assert "norm='l2'" in report["attacks"]["pgd2"] and "norm='l2'" in report["attacks"]["cw"]
    proc = run("evaluate.py", str(tmp_path / "normal" / "model"), *quick, "--norm", "l2")
    assert proc.returncode != 0 and "--eps" in proc.stderr


def test_underfit_stops_at_its_target_and_a_resumed_run_stops_there_again(tmp_path):
    args = [*TINY, "--models", "underfit", "--underfit-target", "0.01", "--underfit-every", "2",
            "--robust-size", "0", "--checkpoint-every", "1", "--epochs", "2"]  # fmt: skip
    full = tmp_path / "full"
    ok(run("interpret.py", *args, "--out", str(full)))
    summary = json.loads((full / "underfit" / "summary.json").read_text())
    # any network is ≥ 1% accurate: it stops at the first check, before step 2 (of 6)
    assert summary["stopped_early"] and summary["steps"] == 2 and summary["planned_steps"] == 6
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "underfit" / "model")
    proc = run("interpret.py", *args, "--out", str(cut), "--resume")
    ok(proc)
    same_weights(full / "underfit" / "model", cut / "underfit" / "model")
    assert json.loads((cut / "underfit" / "summary.json").read_text())["steps"] == 2


def test_interpret_recipe_refuses_bad_options_before_training(tmp_path):
    cases = {
        ("--models", "normal,resnet"): "unknown ['resnet']",
        ("--models", "underfit", "--out", str(tmp_path / "u")): "underfit matches",
        ("--eps-linf", "0"): "radius",
        ("--eps-linf", "0.1", "0.10001"): "name a model twice",
        ("--style-transform", "no_such_module_xyz:f"): "--style-transform",
        ("--saturation", "0"): "--saturation",
        ("--arch", "mlp"): "--arch",
    }
    for extra, message in cases.items():
        proc = run("interpret.py", *TINY, "--robust-size", "0", "--out", str(tmp_path / "x"), *extra)
        assert proc.returncode != 0 and message in proc.stderr, (extra, proc.stderr[-2000:])
    assert not (tmp_path / "x" / "normal" / "model").exists()


def test_interpret_recipe_help_states_the_defaults():
    proc = run("interpret.py", "--help")
    ok(proc)
    text = " ".join(proc.stdout.split())
    for option in ("--eps-linf", "--eps-l2", "--eps-fgsm", "--underfit-target", "--saturation", "--shuffle"):
        assert option in text
    assert "0.1 0.2 0.3 mnist" in text and "default: fashionmnist" in text
    assert torch.__version__  # the recipe imports torch like every recipe


def test_interpret_recipe_runs_the_cifar10_path_on_generated_images(tmp_path):
    args = ["--dataset", "cifar10", "--synthetic", "--models", "normal,fgsm", "--eps-fgsm", "0.03", "--epochs", "1",
            "--train-size", "64", "--val-size", "16", "--batch-size", "32", "--eval-size", "24", "--robust-size", "8",
            "--eval-l2", "0.5", "--eval-linf", "0.03", "--saliency-size", "4", "--saliency-samples", "2", "--show", "2",
            "--shuffle", "1", "8", "--threads", "1"]  # fmt: skip
    ok(run("interpret.py", *args, "--out", str(tmp_path)))
    res = json.loads((tmp_path / "results.json").read_text())
    assert list(res["models"]) == ["normal", "fgsm-0.03"]
    for r in res["models"].values():
        assert set(r["on_correct"]) >= {"shuffle-8", "saturate-1024"} and "l2=0.5" in r and "linf=0.03" in r
    assert load_model(tmp_path / "normal" / "model")[1]["kwargs"]["in_channels"] == 3


def test_a_finished_run_resumed_reuses_each_models_evaluation_unless_its_options_changed(tmp_path):
    args = [*TINY, "--models", "normal,fgsm", "--eps-fgsm", "0.1", "--eval-linf", "0.1", "--eval-l2", "1",
            "--saturation", "2", "1024", "--shuffle", "1", "2", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    ok(run("interpret.py", *args))
    # mark the stored evaluation: a resumed run that evaluates again cannot reproduce the mark
    for name in ("normal", "fgsm-0.1"):
        path = tmp_path / name / "summary.json"
        summary = json.loads(path.read_text())
        path.write_text(json.dumps(summary | {"clean": 0.123, "linf=0.1": 0.0456}))
    again = run("interpret.py", *args, "--resume")
    ok(again)
    said = " ".join((again.stdout + again.stderr).split())
    assert said.count("reusing it") == 2
    res = json.loads((tmp_path / "results.json").read_text())["models"]
    for name in ("normal", "fgsm-0.1"):
        assert (res[name]["clean"], res[name]["linf=0.1"]) == (0.123, 0.0456)
        assert set(res[name]["on_correct"]) == {"saturate-2", "saturate-1024", "shuffle-1", "shuffle-2"}
    changed = [a if a != "1024" else "64" for a in args]  # another saturation level: evaluated again
    other = run("interpret.py", *changed, "--resume", "--allow-changed-options")
    ok(other)
    assert "reusing it" not in " ".join((other.stdout + other.stderr).split())
    res = json.loads((tmp_path / "results.json").read_text())["models"]
    for name in ("normal", "fgsm-0.1"):
        assert res[name]["clean"] != 0.123 and "saturate-64" in res[name]["on_correct"]
