"""recipes/bal.py run as users run it (a subprocess) on synthetic images: ERM first, the others
from its weights, BAL's posterior ensemble saved and evaluated end to end, the errors."""

import json
import shutil

import torch

from robustreg.bayes import PosteriorEnsemble
from robustreg.checkpoint import load_model

from ._recipes import interrupt, ok, rows, run, same_weights

TINY = ["--dataset", "mnist", "--synthetic", "--erm-epochs", "1", "--epochs", "1", "--train-size", "120",
        "--batch-size", "40", "--eval-size", "30", "--robust-size", "8", "--chains", "2", "--attack-steps", "2",
        "--fgsm-eps", "0", "0.1", "--cw-eps", "1", "2", "--cw-steps", "4", "--cw-lr", "2", "--cw-search", "2",
        "--autoattack", "apgd", "--threads", "1"]  # fmt: skip


def test_bal_recipe_trains_erm_then_the_others_from_it_and_saves_the_ensemble(tmp_path):
    ok(run("bal.py", *TINY, "--models", "erm,pgd,bnn,bal", "--sweep-chains", "1", "--out", str(tmp_path)))
    res = json.loads((tmp_path / "results.json").read_text())
    assert list(res["models"]) == ["erm", "pgd", "bnn", "bal", "bal-S1"] and res["complete"]
    for name, r in res["models"].items():
        assert set(r["fgsm"]) == {"0", "0.1"} and r["fgsm"]["0"] == r["clean"], name
        assert set(r["cw_l2"]) == set(r["cw_one_step"]) == {"1", "2"}
        assert r["cw_l2"]["2"] <= r["cw_l2"]["1"] <= r["clean"]  # a larger budget never helps the model
        assert 0 <= r["autoattack-apgd=0.1"] <= 1 and r["seconds_per_step"] > 0
    assert res["models"]["bal"]["chains"] == 2 and res["models"]["bal-S1"]["chains"] == 1
    assert "masking=0.1" in res["models"]["bal"] and "masking=0.1" not in res["models"]["pgd"]
    assert "masking=0.1" in res["models"]["bnn"] and "masking=0.1" not in res["models"]["bal-S1"]  # Fig. 2: none
    # BAL's training log says how far its adversary moved the data; the BNN's (no adversary) is 0
    moved = {"adv_acc", "perturbation_l2", "perturbation_linf"}
    for name in ("bal", "bnn"):
        train = rows(tmp_path / name / "metrics.jsonl", "train")
        assert train and all(moved <= set(r) for r in train), name
    assert all(r["perturbation_l2"] > 0 for r in rows(tmp_path / "bal" / "metrics.jsonl", "train"))
    assert all(r["perturbation_linf"] == 0 for r in rows(tmp_path / "bnn" / "metrics.jsonl", "train"))
    assert not moved & set(rows(tmp_path / "pgd" / "metrics.jsonl", "train")[0])
    ensemble, meta = load_model(tmp_path / "bal" / "model")
    assert isinstance(ensemble, PosteriorEnsemble) and len(ensemble.members) == 2
    assert meta["arch"] == "posterior_ensemble" and meta["kwargs"]["member_arch"] == "bal_cnn"
    probs = ensemble(torch.rand(3, 1, 28, 28)).exp()
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    # the PGD model started from ERM's weights (one epoch of 3 steps cannot have moved them far)
    erm, pgd = load_model(tmp_path / "erm" / "model")[0], load_model(tmp_path / "pgd" / "model")[0]
    gap = max((a - b).abs().max().item() for a, b in zip(erm.parameters(), pgd.parameters(), strict=True))
    assert gap < 0.05
    for plot in ("fgsm", "cw_l2", "chains"):
        assert (tmp_path / f"{plot}.png").stat().st_size > 5000, plot
    assert "| bal |" in (tmp_path / "results.md").read_text()
    # the ensemble is a classifier recipes/evaluate.py attacks end to end
    quick = ["--autoattack", "none", "--pgd", "2", "--cw-steps", "2", "--eval-size", "10", "--no-masking"]
    quick += ["--eps", "0.1"]
    ok(run("evaluate.py", str(tmp_path / "bal" / "model"), *quick, "--out", str(tmp_path / "ev.json")))
    assert json.loads((tmp_path / "ev.json").read_text())["arch"] == "posterior_ensemble"


def test_bal_recipe_refuses_bad_options_and_a_missing_erm(tmp_path):
    cases = {
        ("--models", "erm,wrm"): "unknown ['wrm']",
        ("--chains", "3", "--sweep-chains", "3"): "named twice",
        ("--sgadald-lr", "0"): "--sgadald-lr",
        ("--tau", "0.5"): "--tau",
        ("--models", "bal", "--out", str(tmp_path / "none")): "train erm first",
        ("--val-size", "-1"): "--val-size",
        ("--cw-lr", "0.01"): "--cw-steps × --cw-lr must be >= 7.25",
    }
    for extra, message in cases.items():
        proc = run("bal.py", *TINY, "--out", str(tmp_path / "x"), *extra)
        assert proc.returncode != 0 and message in proc.stderr, (extra, proc.stderr[-2000:])


def test_a_resumed_bal_run_continues_exactly(tmp_path):
    # the chains, SGAdaLD's V̂ and the samplers' random generators are all in the checkpoint
    args = [*TINY, "--models", "erm,bal", "--sweep-chains", "--robust-size", "0", "--no-masking",
            "--epochs", "2", "--checkpoint-every", "2", "--keep-checkpoints", "3"]  # fmt: skip
    ok(run("bal.py", *args, "--out", str(tmp_path / "full")))
    shutil.copytree(tmp_path / "full" / "erm", tmp_path / "cut" / "erm")
    interrupt(tmp_path / "full" / "bal", tmp_path / "cut" / "bal", at=2)  # of 6 steps
    ok(run("bal.py", *args, "--resume", "--out", str(tmp_path / "cut")))
    full, cut = tmp_path / "full" / "bal", tmp_path / "cut" / "bal"
    assert rows(full / "metrics.jsonl", "train") == rows(cut / "metrics.jsonl", "train")
    same_weights(full / "model", cut / "model")
    results = [json.loads((tmp_path / d / "results.json").read_text())["models"]["bal"] for d in ("full", "cut")]
    assert results[0]["fgsm"] == results[1]["fgsm"] and results[0]["cw_l2"] == results[1]["cw_l2"]


def test_val_size_evaluates_on_held_out_training_images_not_the_test_set(tmp_path):
    ok(run("bal.py", *TINY, "--models", "erm", "--val-size", "20", "--robust-size", "0", "--out", str(tmp_path)))
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["split"] == "validation" and res["models"]["erm"]["eval_n"] == 20  # the test set has 256
    assert json.loads((tmp_path / "erm" / "summary.json").read_text())["steps"] == 3  # still 120 training images


def test_a_finished_bal_run_resumed_reuses_each_evaluation_unless_its_options_changed(tmp_path):
    args = [*TINY, "--models", "erm,bal", "--sweep-chains", "--no-progress", "--out", str(tmp_path)]
    ok(run("bal.py", *args))
    for name in ("erm", "bal"):  # a mark that an evaluation made again cannot reproduce
        path = tmp_path / name / "summary.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"clean": 0.123, "autoattack-apgd=0.1": 0.0456}))
    again = run("bal.py", *args, "--resume")
    ok(again)
    assert " ".join((again.stdout + again.stderr).split()).count("reusing it") == 2
    res = json.loads((tmp_path / "results.json").read_text())["models"]
    for name in ("erm", "bal"):
        assert (res[name]["clean"], res[name]["autoattack-apgd=0.1"]) == (0.123, 0.0456)
        assert set(res[name]["fgsm"]) == {"0", "0.1"} and set(res[name]["cw_l2"]) == {"1", "2"}
    assert "masking=0.1" in res["bal"] and "masking=0.1" not in res["erm"]
    other = run("bal.py", *[a if a != "0.1" else "0.05" for a in args], "--resume", "--allow-changed-options")
    ok(other)
    assert "reusing it" not in " ".join((other.stdout + other.stderr).split())
    res = json.loads((tmp_path / "results.json").read_text())["models"]
    assert all(res[n]["clean"] != 0.123 and set(res[n]["fgsm"]) == {"0", "0.05"} for n in ("erm", "bal"))
