"""The benchmark scripts run and report every method (a smoke run; no timing is asserted)."""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_step_cost_reports_each_method_and_its_ratio(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "step_cost.py"), "--repeats", "1", "--warmup", "0",
           "--batch-size", "4", "--out", str(tmp_path / "step_cost.json")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["partial"] is False and json.loads((tmp_path / "step_cost.json").read_text()) == report
    assert "13 methods × 0 + 1 rounds" in out.stderr and "13/13" in out.stderr  # the bar, drawn at its end
    assert list(report["results"]) == [
        "natural", "pgd10", "pgd40", "fast", "free", "trades10", "yopo5-3", "yopo5-10", "vat", "vat-hvp", "tnar",
        "tnar-func", "tnar-penalty",
    ]  # fmt: skip
    assert set(report["ratios"]) == {
        "yopo5-10 / pgd40", "yopo5-3 / pgd10", "yopo5-3 / (5 x natural)", "yopo5-10 / (5 x natural)",
        "vat / natural", "vat-hvp / natural", "tnar / vat", "tnar-func / vat", "tnar-penalty / vat",
    }  # fmt: skip
    assert report["results"]["natural"]["ratio_to_natural"] == 1.0
    assert all(r["median_s"] > 0 for r in report["results"].values())


@pytest.mark.parametrize("model", ["preact-resnet18", "wrn-34-10", "conv-large", "mlp"])
def test_step_cost_builds_and_steps_every_network(model, tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "step_cost.py"), "--repeats", "1", "--warmup", "0",
           "--batch-size", "2", "--model", model, "--methods", "natural,fast", "--threads", "1"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    shape = {"mlp": [2, 50]}.get(model, [2, 3, 32, 32])
    assert report["config"]["input_shape"] == shape and report["config"]["model"].startswith(model)
    assert report["failed"] == {} and list(report["results"]) == ["natural", "fast"]
    for r in report["results"].values():
        assert r["median_s"] > 0 and r["aten_ops"] > 0 and r["cuda_kernels"] is None
    # a Fast-AT step is a natural one plus an FGSM forward and backward: more operations
    assert report["results"]["fast"]["aten_ops"] > report["results"]["natural"]["aten_ops"]


def test_step_cost_times_bal_against_pgd15_on_its_network(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "step_cost.py"), "--repeats", "1", "--warmup", "0",
           "--batch-size", "4", "--model", "bal-cnn", "--methods", "pgd15,bal1,bal5", "--threads", "1"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["failed"] == {} and set(report["ratios"]) == {"bal5 / pgd15", "bal1 / pgd15", "bal5 / bal1"}
    # one BAL iteration runs S_θ chains' Langevin passes and updates: more operations with more chains
    ops = {m: report["results"][m]["aten_ops"] for m in ("pgd15", "bal1", "bal5")}
    assert ops["bal5"] > 3 * ops["bal1"] > 0 and ops["pgd15"] > 0


def test_step_cost_reports_a_method_that_cannot_run_instead_of_failing(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import step_cost

    import workloads

    def broken(model, net):
        def objective(x, y):
            raise RuntimeError("cannot run here")

        return objective

    monkeypatch.setitem(workloads.METHODS, "broken", broken)
    report = step_cost.main(["--repeats", "1", "--warmup", "0", "--batch-size", "2", "--methods", "natural,broken"])
    assert report["failed"] == {"broken": "RuntimeError: cannot run here"}
    assert list(report["results"]) == ["natural"]
    with pytest.raises(SystemExit, match="--device must be cpu or cuda"):
        step_cost.main(["--device", "tpu"])


def test_operations_are_not_counted_under_compile(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import workloads

    setup = workloads.Setup(torch.device("cpu"), compile=True)
    trainer = workloads.Trainer("natural", "mlp", setup, 0)  # compiled lazily: nothing compiles here
    assert trainer.count(*workloads.make_batch("mlp", 2, setup, 0)) == {"aten_ops": None, "cuda_kernels": None}


def test_peak_memory_measures_any_network_and_method_in_its_own_process(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "peak_memory.py"), "--repeats", "1", "--batch-size", "8",
           "--model", "mlp", "--methods", "natural,yopo3-5", "--out", str(tmp_path / "m.json")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["config"]["model"] == "mlp" and report["config"]["measure"] == "peak RSS growth (CPU)"
    assert list(report["peak_growth_mib"]) == ["natural", "yopo3-5"]
    assert all(v["median"] >= 0 for v in report["peak_growth_mib"].values())
    bad = subprocess.run([*cmd[:2], "--methods", "natural,pgd7"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--methods from" in bad.stderr


def test_device_check_smoke_reports_every_section(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--smoke", "--out", str(tmp_path / "d.json")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["partial"] is False and json.loads((tmp_path / "d.json").read_text()) == report
    assert report["config"]["device"] == "cpu" and report["skipped"] == []
    sections = report["sections"]
    assert list(sections) == ["preact-resnet18", "wrn-34-10", "conv-large"]
    assert list(sections["preact-resnet18"]["results"]) == [
        "natural", "pgd10", "yopo5-3", "yopo3-5", "fast", "free", "trades10", "yopo5-3[kernels on]",
        "yopo5-3[kernels off]",
    ]  # fmt: skip
    assert set(sections["preact-resnet18"]["ratios"]) == {
        "yopo5-3 / pgd10", "yopo3-5 / pgd10", "yopo5-3[kernels on] / yopo5-3[kernels off]",
    }  # fmt: skip
    assert set(sections["conv-large"]["ratios"]) == {"ssl-tnar / ssl-vat"}
    for section in sections.values():
        assert section["failed"] == {}
        for r in section["results"].values():
            assert r["median_s"] > 0 and r["aten_ops"] > 0 and r["peak_mib"] is None  # no CUDA here
    assert "device check: cpu" in out.stderr and "yopo5-3[kernels on]" in out.stderr


def test_device_check_skips_what_the_budget_does_not_allow(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--smoke", "--budget-s", "0.001"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert list(report["sections"]) == ["preact-resnet18"]  # the first section always runs
    assert report["skipped"] == ["wrn-34-10", "conv-large"] and "skipped (budget)" in out.stderr


def _benchmark(name):
    """The module ``benchmarks/<name>.py`` (imported with its directory on the path, as it runs)."""
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _time_to_robust():
    return _benchmark("time_to_robust")


def test_time_to_robust_summary():
    curves = {
        "pgd40": [{"train_s": 0, "robust": 0.1}, {"train_s": 100, "robust": 0.5}, {"train_s": 200, "robust": 0.8}],
        "yopo5-10": [{"train_s": 0, "robust": 0.1}, {"train_s": 50, "robust": 0.6}, {"train_s": 100, "robust": 0.9}],
        "amata": [{"train_s": 0, "robust": 0.1}, {"train_s": 100, "robust": 0.8}],
        "amata-yopo": [{"train_s": 0, "robust": 0.1}, {"train_s": 100, "robust": 0.7}],
    }
    report = _time_to_robust().summarize({"curves": curves})
    assert report["target_robust"] == 0.8
    assert report["time_to_target_s"] == {"pgd40": 200, "yopo5-10": 100, "amata": 100, "amata-yopo": None}
    assert report["ratios"] == {"yopo5-10 / pgd40": 0.5, "amata / pgd40": 0.5}  # amata-yopo never reached it
    # YOPO crosses 0.8 two thirds of the way from 0.6 (t = 50) to 0.9 (t = 100).
    assert abs(report["time_to_target_interpolated_s"]["yopo5-10"] - 250 / 3) < 1e-9
    assert abs(report["ratios_interpolated"]["yopo5-10 / pgd40"] - 250 / 600) < 1e-9


def test_time_to_robust_exact_crossings_from_an_upper_bound_and_a_few_exact_scores():
    ttr = _time_to_robust()
    t = [0, 100, 200, 300, 400]
    bound = {  # e.g. APGD-CE: at every snapshot at least the exact (apgd) accuracy
        "pgd40": [0.1, 0.3, 0.5, 0.6, 0.7],
        "yopo5-10": [0.2, 0.55, 0.7, 0.8, 0.9],
        "amata": [0.1, 0.2, 0.3, 0.4, 0.45],  # never reaches the target even as a bound
    }
    curves = {n: [{"train_s": ti, "robust": r} for ti, r in zip(t, rs, strict=True)] for n, rs in bound.items()}
    report = ttr.summarize_exact({"curves": curves}, {}, "apgd")
    assert report["exact"]["need"] == {"pgd40": [4]}  # the target first
    exact = {"pgd40": {4: {"robust": 0.5}}, "yopo5-10": {}}
    report = ttr.summarize_exact({"curves": curves}, exact, "apgd")
    # bound < 0.5 rules out snapshots 0 (pgd40: 0-1); the first candidates and their predecessors are asked for
    assert report["exact"]["need"] == {"pgd40": [1, 2], "yopo5-10": [0, 1]}
    exact["pgd40"] |= {1: {"robust": 0.25}, 2: {"robust": 0.45}, 3: {"robust": 0.5}}
    exact["yopo5-10"] |= {0: {"robust": 0.15}, 1: {"robust": 0.4}, 2: {"robust": 0.6}}
    report = ttr.summarize_exact({"curves": curves}, exact, "apgd")
    ex = report["exact"]
    assert ex["need"] == {} and ex["target_robust"] == 0.5 and ex["bound_violations"] == []
    assert ex["crossings"]["pgd40"]["index"] == 3 and ex["crossings"]["yopo5-10"]["index"] == 2
    assert ex["crossings"]["amata"] == {"index": None, "need": []}  # never: no exact score was needed
    assert ex["time_to_target_train_s"] == {"pgd40": 300, "yopo5-10": 200, "amata": None}
    # YOPO: 0.4 at t = 100, 0.6 at t = 200 -> 0.5 at t = 150; PGD-40: 0.45 -> 0.5 from 200 to 300 -> 300
    assert ex["time_to_target_interpolated_s"]["yopo5-10"] == pytest.approx(150)
    assert ex["ratios_interpolated_s"]["yopo5-10 / pgd40"] == pytest.approx(0.5)
    exact["amata"] = {4: {"robust": 0.5}}  # above its bound (0.45): flagged
    assert ttr.summarize_exact({"curves": curves}, exact, "apgd")["exact"]["bound_violations"] == [
        {"method": "amata", "snapshot": 4, "exact": 0.5}
    ]


def test_time_to_robust_runs_every_method_interleaved(monkeypatch, tmp_path):
    ttr = _time_to_robust()
    order = []
    real = ttr.make_method

    def spy(name, model):
        model.register_forward_pre_hook(lambda *_: order.append(name))
        return real(name, model)

    monkeypatch.setattr(ttr, "make_method", spy)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    args = argparse.Namespace(
        budget_s=1e-9, snapshot_every_s=1.0, batch_size=16, lr=1e-3, seed=0, c_at="1.0", c_batch=4, gamma=0.04,
        out=tmp_path,
    )  # fmt: skip
    names = ["pgd40", "amata", "yopo5-10", "amata-yopo"]
    curves, table = ttr.run_all(names, (x, y), args)
    turns = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]
    assert turns == names  # one step each, in turn (all clocks at 0; the budget ends after a step)
    assert all(len(curves[n]) == 2 and curves[n][-1]["step"] == 1 for n in names)
    assert curves["amata"][-1]["K"] == 5 and curves["amata-yopo"][-1]["K"] == 2
    (row,) = table
    assert row["C_current"] >= 0 and {"C_pgd10", "C_pgd20", "C_pgd40"} <= set(row)
    # each point's weights are saved: the snapshot at step 0 is the untrained model of the seed
    first = ttr.load_snapshot(tmp_path / curves["pgd40"][0]["snapshot"])
    torch.manual_seed(0)
    fresh = ttr.SmallCNN().state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), fresh, strict=True))


def test_time_to_robust_stages_score_with_autoattack_and_summarize(monkeypatch, tmp_path):
    pytest.importorskip("pyautoattack")
    ttr = _time_to_robust()
    gen = torch.Generator().manual_seed(0)
    fake = ((torch.rand(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)),) * 2
    monkeypatch.setattr(ttr, "load_mnist", lambda data_dir: fake)
    common = ["--methods", "pgd40,yopo5-10", "--budget-s", "1e-9", "--c-at", "", "--out", str(tmp_path)]
    ttr.main([*common, "--stage", "train"])
    score = [*common, "--stage", "score", "--curve-attack", "apgd-ce", "--n-test", "8", "--n-final", "6"]
    ttr.main([*score, "--what", "curves"])
    (tmp_path / "scores" / "apgd-ce" / "pgd40" / "000.json").unlink()
    with pytest.raises(SystemExit, match="1 snapshots are not scored yet"):
        ttr.main([*common, "--stage", "summary", "--curve-attack", "apgd-ce"])
    (tmp_path / "scores" / "apgd-ce" / "yopo5-10" / "000.json").write_text('{"clean": 0.')  # truncated
    ttr.main([*score, "--what", "both"])  # rescores the missing and the truncated point, then the final models
    report = ttr.main([*common, "--stage", "summary", "--curve-attack", "apgd-ce"])
    assert report["curve_attack"] == "apgd-ce" and set(report["final"]) == {"pgd40", "yopo5-10"}
    for curve in report["curves"].values():
        assert all(0 <= p["robust"] <= p["clean"] <= 1 for p in curve)
    for row in report["final"].values():
        assert row["n"] == 6 and row["standard"]["robust"] <= row["standard"]["clean"]
    assert (tmp_path / "robust_vs_time.png").stat().st_size > 1000
    # the crossings under apgd, from the APGD-CE curves and the apgd scores the summary asks for
    exact = [*common, "--stage", "summary", "--curve-attack", "apgd-ce", "--exact-attack", "apgd"]
    last = len(report["curves"]["pgd40"]) - 1
    assert ttr.main(exact)["exact"]["need"] == {"pgd40": [last]}
    ttr.main([*score, "--curve-attack", "apgd", "--what", "curves", "--methods", "pgd40", "--points", str(last)])
    report = ttr.main(exact)
    assert report["exact"]["target_robust"] <= report["curves"]["pgd40"][last]["robust"]
    assert report["exact"]["bound_violations"] == [] and "crossings" in report["exact"]


def test_two_rings_ssl_smoke(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "two_rings_ssl.py"), "--steps", "3", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["partial"] is False and set(report["results"]) == {"supervised", "vat", "tar", "nar", "tnar"}
    assert all(0 <= r["unlabeled_accuracy"] <= 1 for r in report["results"].values())
    assert (tmp_path / "decision_boundaries.png").stat().st_size > 1000


def test_fashion_ssl_protocol_on_generated_images(tmp_path):
    script = [sys.executable, str(ROOT / "benchmarks" / "fashion_ssl.py"), "--synthetic", "--val-size", "64",
              "--out", str(tmp_path)]  # fmt: skip
    train = ["--stage", "train", "--iters", "3", "--eval-every", "1", "--log-every", "2", "--seeds", "0,1"]
    stages = [
        ["--stage", "chart", "--chart-epochs", "1", "--lgan-epochs", "1", "--lgan-latent", "2"],
        [*train, "--methods", "supervised,vat,tnar,tnar-lgan"],
        [*train, "--methods", "tnar", "--tag", "l2", "--normalize", "l2", "--normal", "official", "--entropy", "0"],
        [*train, "--methods", "vat,supervised", "--tag", "few", "--per-class", "2"],  # a setting: its own VAT
        [*train, "--methods", "vat", "--tag", "eps1", "--eps-vat", "1"],  # a variant of VAT alone
        [*train, "--methods", "tnar", "--tag", "shrink", "--eps-tangent-final", "0.05", "--tangent-decay-from", "0"],
        ["--stage", "chart", "--charts", "vae", "--chart-epochs", "1", "--chart-tag", "small", "--latent", "3"],
        [*train, "--methods", "tnar", "--tag", "small", "--chart-tag", "small"],  # the second chart
        ["--stage", "summary"],
    ]
    for stage in stages:
        out = subprocess.run(script + stage, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    runs = {"supervised", "vat", "tnar", "tnar-lgan", "tnar@l2", "vat@few", "supervised@few", "vat@eps1", "tnar@shrink"}
    runs.add("tnar@small")
    assert set(summary["runs"]) == runs and not summary["unfinished"]
    for name, row in summary["runs"].items():
        assert row["seeds"] == [0, 1] and row["test_error"]["n"] == 2, name
        assert ("minus_vat" in row) == (name not in ("vat", "vat@few")), name
    assert summary["runs"]["supervised@few"]["vat_run"] == "vat@few"  # compared within its setting
    assert summary["runs"]["tnar@l2"]["vat_run"] == summary["runs"]["vat@eps1"]["vat_run"] == "vat"
    runs = {
        (s, n): json.loads((tmp_path / f"seed{s}" / f"{n}.json").read_text()) for s in (0, 1) for n in ("vat", "tnar")
    }
    tnar = runs[0, "tnar"]
    assert [p["iter"] for p in tnar["curve"]] == [1, 2, 3] and len(tnar["labeled_indices"]) == 100
    assert max(tnar["labeled_indices"]) < 512 - 64  # never from the validation split
    best = min(tnar["curve"], key=lambda p: p["val_error"])  # the reported figure: chosen on validation
    assert (tnar["selected_iter"], tnar["test_error"]) == (best["iter"], best["test_error"])
    assert tnar["final_test_error"] == tnar["curve"][-1]["test_error"]
    assert [r["iter"] for r in tnar["log"]] == [1, 2]
    assert {"kl_tar", "kl_nar", "grad_ce", "grad_reg", "grad_entropy"} <= set(tnar["log"][0])
    assert tnar["config"]["normalize"] == "official" and tnar["config"]["entropy"] == 1.0
    vals = [p["val_error"] for p in tnar["curve"]]  # 3 evaluations: the last third is the last one
    assert summary["runs"]["tnar"]["late_rise"]["values"][0] == pytest.approx(vals[-1] - min(vals))
    diffs = [runs[s, "tnar"]["test_error"] - runs[s, "vat"]["test_error"] for s in (0, 1)]
    assert summary["runs"]["tnar"]["minus_vat"]["values"] == pytest.approx(diffs)
    tagged = json.loads((tmp_path / "seed0" / "tnar@l2.json").read_text())
    assert "grad_entropy" not in tagged["log"][0] and tagged["config"]["normal"] == "official"
    # the logged sizes are the perturbations' own: ε_n is a max-abs bound under "official", an ℓ2 norm under "l2"
    assert tnar["log"][0]["max_r_normal"] == pytest.approx(1.0, rel=1e-4)  # --eps-normal's default
    assert tagged["log"][0]["l2_r_normal"] == pytest.approx(1.0, rel=1e-4)
    # ε_t constant by default; --eps-tangent-final shrinks it linearly: 0.25 → 0.05 over iterations 1..3 from 0
    assert [r["eps_tangent"] for r in tnar["log"]] == [0.25, 0.25]
    shrink = json.loads((tmp_path / "seed0" / "tnar@shrink.json").read_text())
    expected = [0.25 + it / 3 * (0.05 - 0.25) for it in (1, 2)]
    assert [r["eps_tangent"] for r in shrink["log"]] == pytest.approx(expected)
    # --chart-tag: a second chart beside the first, each run recording the chart it used
    small = json.loads((tmp_path / "seed0" / "tnar@small.json").read_text())
    assert (small["config"]["chart_config"]["latent"], tnar["config"]["chart_config"]["latent"]) == (3, 20)
    assert {"vae", "vae@small"} <= {p.name for p in (tmp_path / "charts").iterdir()}
    assert json.loads((tmp_path / "charts" / "vae@small.json").read_text())["config"]["latent"] == 3
    assert "chart_config" not in runs[0, "vat"]["config"]
    few = json.loads((tmp_path / "seed0" / "supervised@few.json").read_text())
    assert len(few["labeled_indices"]) == 20 and few["config"]["per_class"] == 2
    assert runs[0, "vat"]["log"][0]["l2_r_adv"] == pytest.approx(2.0, rel=1e-4)  # --eps-vat
    for image in ("curves.png", "curves-variants.png", "curves-few.png", "perturbations.png", "perturbations-lgan.png"):
        assert (tmp_path / image).stat().st_size > 1000, image
    # a copy of the results holds no classifiers (.gitignore): the summary still runs, and says what it skips
    (tmp_path / "seed0" / "tnar-lgan.classifier.pt").unlink()
    (tmp_path / "perturbations-lgan.png").unlink()
    again = subprocess.run([*script, "--stage", "summary"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "tnar-lgan: no " in again.stdout, again.stderr[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert not (tmp_path / "perturbations-lgan.png").exists() and (tmp_path / "perturbations.png").exists()
    bad = subprocess.run([*script, "--stage", "train", "--tag", "a/b"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--tag" in bad.stderr
    bad = subprocess.run([*script, "--stage", "chart", "--chart-tag", "../x"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--chart-tag may hold letters" in bad.stderr
    bad = subprocess.run(
        [*script, "--stage", "train", "--methods", "tnar", "--chart-tag", "none"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and f"needs the chart {tmp_path / 'charts' / 'vae@none'}" in bad.stderr
    bad = subprocess.run([*script, "--stage", "train", "--eps-tangent-final", "0"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--eps-tangent-final must be a finite number > 0" in bad.stderr


def test_fashion_ssl_curves_never_average_over_different_seeds(tmp_path):
    fashion = _benchmark("fashion_ssl")

    def run(seed, shift):
        curve = [{"iter": i, "val_error": 20.0 + shift + i, "test_error": 21.0 + shift + i} for i in (1, 2, 3)]
        return {"seed": seed, "curve": curve, "config": {"per_class": 10}}

    same = {"vat@x": {0: run(0, 0), 1: run(1, 5)}, "tnar@x": {0: run(0, 1), 1: run(1, 2)}}
    titles = fashion.plot_curves(same, tmp_path / "same.png")
    assert titles == ["FashionMNIST, 100 labels: mean over seeds 0, 1"]
    mixed = {**same, "tar@x": {1: run(1, 3)}}  # one seed only: a panel per seed, no mean across seed sets
    titles = fashion.plot_curves(mixed, tmp_path / "mixed.png")
    assert titles == ["FashionMNIST, 100 labels: seed 0", "FashionMNIST, 100 labels: seed 1"]
    restricted = fashion.plot_curves(mixed, tmp_path / "one.png", seeds=[1])  # every run has seed 1
    assert restricted == ["FashionMNIST, 100 labels: seed 1"]
    assert fashion.plot_curves(mixed, tmp_path / "none.png", seeds=[7]) == [] and not (tmp_path / "none.png").exists()
    for name in ("same", "mixed", "one"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


class _FirstPixelLabel(torch.nn.Module):
    """Labels an image by its first pixel: class floor(10·x[0, 0, 0]) (one-hot logits)."""

    def forward(self, x):
        return torch.nn.functional.one_hot((x[:, 0, 0, 0] * 10).floor().long().clamp(0, 9), 10).float()


def test_tangent_flips_counts_against_a_hand_made_oracle():
    flips = _benchmark("tangent_flips").flips
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    x = torch.zeros(8, 1, 28, 28)
    x[:, 0, 0, 0] = (y + 0.5) / 10
    x[7, 0, 0, 0] = 0.05  # class 3 read as 0: the oracle is wrong on it, so it is left out of every count
    r = torch.zeros_like(x)
    r[[0, 2, 3, 7], 0, 0, 0] = 0.1  # moves images 0, 2, 3 (and the left-out 7) one class up
    r[4, 0, 0, 0] = 0.01  # stays inside class 2
    out = flips(_FirstPixelLabel(), _FirstPixelLabel(), x, y, r)
    assert out["images"] == 7 and out["oracle_flip"] == out["model_flip"] == pytest.approx(3 / 7)
    per_class = out["oracle_flip_per_class"]
    assert (per_class["T-shirt"], per_class["trouser"], per_class["pullover"], per_class["dress"]) == (0.5, 1.0, 0, 0)
    assert per_class["coat"] == 0  # no image of the class: 0, not a division by zero
    blind = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))  # a model the move cannot change
    torch.nn.init.zeros_(blind[1].weight)
    assert flips(blind, _FirstPixelLabel(), x, y, r)["model_flip"] == 0
    none_right = flips(blind, _FirstPixelLabel(), x, y + 5, r)  # the oracle right on no image: 0 of 0, not an error
    assert none_right["images"] == 0 and none_right["oracle_flip"] == none_right["model_flip"] == 0
    errors = _benchmark("tangent_flips").test_errors(_FirstPixelLabel(), x + r, y)  # images 0, 2, 3, 7 one class up
    confusion = torch.zeros(10, 10, dtype=torch.long)
    for true, pred in zip(y.tolist(), [1, 0, 2, 2, 2, 2, 3, 1], strict=True):
        confusion[true, pred] += 1
    assert errors["confusion"] == confusion.tolist() and errors["test_error"] == pytest.approx(100 * 4 / 8)
    assert errors["test_error_per_class"]["trouser"] == 100.0 and errors["test_error_per_class"]["coat"] is None


def test_tangent_flips_on_generated_images(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "tangent_flips.py"), "--synthetic", "--n", "64",
           "--val-size", "64", "--runs", "a,b", "--seeds", "0", "--eps-tangent", "0.1,0.5", "--oracle-epochs", "1",
           "--out", str(tmp_path / "f.json")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "f.json").read_text())
    assert report["partial"] is False and set(report["results"]) == {"a, seed 0", "b, seed 0"}
    assert report["chart"]["tag"] == "" and report["chart"]["config"]["latent"] == 4  # the chart the moves follow
    for row in report["results"].values():
        assert set(row) == {"0.1", "0.5", "test_error", "test_error_per_class", "confusion"}
        assert 0 <= row["test_error"] <= 100 and len(row["test_error_per_class"]) == 10
        confusion = torch.tensor(row["confusion"])  # the whole generated test set (256 images)
        assert confusion.sum() == 256 and row["test_error"] == pytest.approx(100 * (1 - confusion.trace() / 256))
        for moves in (row["0.1"], row["0.5"]):
            for move in (moves["tangent"], moves["random"]):
                assert 0 <= move["oracle_flip"] <= 1 and 0 <= move["model_flip"] <= 1 and move["l2"] > 0
                assert len(move["oracle_flip_per_class"]) == 10
    bad = subprocess.run([*cmd, "--eps-tangent", "0"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--eps-tangent must be finite numbers > 0" in bad.stderr
    bad = subprocess.run([*cmd, "--chart-tag", "../vae"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--chart-tag may hold letters" in bad.stderr
    real = [*cmd[:2], "--results", str(tmp_path), "--runs", "a", "--seeds", "0"]  # no classifier saved there
    bad = subprocess.run(real, capture_output=True, text=True)
    assert bad.returncode != 0 and f"no classifier of a, seed 0 in {tmp_path}" in bad.stderr
    assert not (tmp_path / "tangent_flips.json").exists()


def test_dropout_power_eigenpairs_against_the_exact_power_iteration():
    from robustreg.func import per_sample_normalize, power_steps
    from robustreg.models import SmallCNN
    from robustreg.ssl.base import kl_hessian_product

    dp = _benchmark("dropout_power")
    torch.manual_seed(0)
    model = SmallCNN().double().eval()
    torch.nn.init.normal_(model.classifier[-1].weight, std=0.3)  # (zero at init: p uniform, H of rank 9 all the same)
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    lam, u, jac, fisher = dp.top_eigenpairs(model, x)
    hess = kl_hessian_product(model, x, model(x).detach(), method="hvp", xi=1e-6)  # forward-over-reverse H·v
    _, estimate = power_steps(hess, per_sample_normalize(torch.randn_like(x)), iters=300)
    torch.testing.assert_close(lam, estimate, rtol=1e-6, atol=0)
    torch.testing.assert_close(hess(u), lam.view(-1, 1, 1, 1) * u, rtol=0, atol=1e-10 * float(lam.max()))
    torch.testing.assert_close(u.flatten(1).norm(dim=1), torch.ones(3, dtype=torch.float64))
    p = torch.softmax(model(x), dim=1)
    torch.testing.assert_close(fisher, torch.diag_embed(p) - p[:, :, None] * p[:, None, :])
    d = per_sample_normalize(torch.randn_like(x))
    torch.testing.assert_close(dp.curvature(jac, fisher, d), (d * hess(d)).flatten(1).sum(1))
    assert bool((dp.curvature(jac, fisher, d) < lam).all())  # a random direction: below the top


def test_dropout_power_reads_eps_from_the_run_json_and_names_a_bad_one(tmp_path):
    run_eps = _benchmark("dropout_power").run_eps
    good = tmp_path / "vat.json"
    good.write_text(json.dumps({"config": {"eps_vat": 2.5}}))
    assert run_eps(good) == 2.5
    cases = {"truncated.json": '{"config": {"eps_v', "no_eps.json": '{"config": {}}',
             "zero.json": '{"config": {"eps_vat": 0}}'}  # fmt: skip
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit, match=re.escape(str(tmp_path / name))):
            run_eps(tmp_path / name)
    with pytest.raises(SystemExit, match=re.escape(str(tmp_path / "absent.json"))):
        run_eps(tmp_path / "absent.json")


def test_dropout_power_on_generated_images(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "dropout_power.py"), "--synthetic", "--n", "48", "--batch", "32",
           "--runs", "a", "--seeds", "0", "--out", str(tmp_path / "d.json")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["partial"] is False and report["n"] == 48 and list(report["results"]) == ["a, seed 0"]
    row = report["results"]["a, seed 0"]
    assert row["lambda_max_mean"] > 0 and row["eps"] == 2.0
    for name in ("random", "fd-eval", "hvp-eval", "fd-dropout", "hvp-dropout"):
        stats = row[name]
        assert -1e-6 <= stats["ratio"]["mean"] <= 1 + 1e-6 and -1e-6 <= stats["pooled_ratio"] <= 1 + 1e-6
        assert 0 <= stats["cos"]["median"] <= 1 + 1e-6 and stats["pooled_kl_ratio"] >= 0
    assert row["random"]["ratio"]["mean"] < row["hvp-eval"]["ratio"]["mean"]  # one power step beats its start
    bad = subprocess.run([*cmd, "--dropout", "1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--dropout must be in (0, 1), got 1.0" in bad.stderr
    real = [*cmd[:2], "--results", str(tmp_path), "--runs", "a", "--seeds", "0"]  # no classifier saved there
    bad = subprocess.run(real, capture_output=True, text=True)
    assert bad.returncode != 0 and f"no classifier of a, seed 0 in {tmp_path}" in bad.stderr
    assert not (tmp_path / "dropout_power.json").exists()


def test_threads_reports_the_ratio_of_two_threads_to_one(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "threads.py"), "--workloads", "rings-vat,rings-trades",
           "--repeats", "2", "--warmup", "0", "--out", str(tmp_path / "threads.json")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "threads.json").read_text())
    assert report["partial"] is False and set(report["ratio"]) == {"rings-vat", "rings-trades"}
    for name in ("rings-vat", "rings-trades"):
        assert len(report["times_s"][f"{name}@1"]) == len(report["times_s"][f"{name}@2"]) == 2
        median = report["median_s"]
        assert report["ratio"][name]["2/1"] == pytest.approx(median[f"{name}@2"] / median[f"{name}@1"])


def test_smoothgrad_cost_reports_the_ratio_to_n_grad_passes(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "smoothgrad_cost.py"), "--images", "12", "--samples", "4",
           "--batch-size", "16", "--repeats", "2", "--grad-passes", "2",
           "--out", str(tmp_path / "sg.json")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "sg.json").read_text())
    assert report["partial"] is False and len(report["times"]["smoothgrad_s"]) == 2
    sg, gp = report["smoothgrad_median_s"], report["grad_pass_median_s"]
    assert report["ratio_smoothgrad_to_n_grad"] == pytest.approx(sg / (4 * gp))
    assert "loadavg_end" in report["config"]


def _attack_gap():
    return _benchmark("attack_gap")


def test_attack_gap_bookkeeping_against_a_hand_count():
    # 6 images; the 6th is misclassified clean (never robust). True = still correct after the attack.
    clean = torch.tensor([1, 1, 1, 1, 1, 0], dtype=torch.bool)
    robust = {
        "pgd40": torch.tensor([1, 1, 1, 0, 1, 0], dtype=torch.bool),
        "cw40": torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool),
        "apgd-t": torch.tensor([0, 0, 1, 1, 1, 0], dtype=torch.bool),
    }
    report = _attack_gap().summarise(robust, clean)
    assert report["union_robust_acc"] == pytest.approx(2 / 6, abs=1e-6)  # images 2 and 4 survive all three
    # image 0 falls to apgd-t alone; image 1 to cw40 and apgd-t; image 3 to pgd40 and cw40
    assert report["broken_by_it_alone"] == {"pgd40": 0, "cw40": 0, "apgd-t": 1}
    assert report["pgd40_survivors_broken"] == {"pgd40": 0, "cw40": 1, "apgd-t": 2}


def test_attack_gap_runs_each_attack_on_a_saved_model(tmp_path):
    from robustreg.checkpoint import save_model
    from robustreg.models import SmallCNN

    torch.manual_seed(0)
    save_model(SmallCNN(), tmp_path / "model", arch="smallcnn", kwargs={})
    cmd = [sys.executable, str(ROOT / "benchmarks" / "attack_gap.py"), str(tmp_path / "model"), "--eps", "0.1",
           "--synthetic", "--eval-size", "12", "--attacks", "cw40,apgd-ce",
           "--out", str(tmp_path / "gap.json")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "TERM": "dumb"})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "gap.json").read_text())
    assert report["partial"] is False and report["n"] == 12
    assert list(report["attacks"]) == ["pgd40", "cw40", "apgd-ce"]  # pgd40, the reference, added first
    accs = [a["robust_acc"] for a in report["attacks"].values()]
    assert all(0 <= a <= report["clean_acc"] for a in accs) and report["union_robust_acc"] <= min(accs)
    assert report["pgd40_survivors_broken"]["pgd40"] == 0
    assert set(report["logits"]) >= {"logit_range_median", "margin_median", "p_label_median"}
    bad = subprocess.run([*cmd[:3], "--eps", "0.1", "--attacks", "pgd40,nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--attacks must be distinct names" in bad.stderr
    bad = subprocess.run([*cmd[:3], "--eps", "0.1", "--attacks", "cwl2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "need --norm l2" in bad.stderr
    l2 = [*cmd[:3], "--eps", "1", "--norm", "l2", "--synthetic", "--eval-size", "6", "--attacks", "cwl2"]
    out = subprocess.run([*l2, "--out", str(tmp_path / "l2.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "l2.json").read_text())
    assert list(report["attacks"]) == ["pgd40", "cwl2"] and report["config"]["norm"] == "l2"
    assert 0 <= report["attacks"]["cwl2"]["robust_acc"] <= report["clean_acc"]


def test_bal_chains_against_a_hand_count():
    from torch import nn

    from robustreg.bayes import PosteriorEnsemble

    def linear(w):  # a 2-class linear model on 2 features, no bias: its prediction is argmax(x @ w.T)
        m = nn.Linear(2, 2, bias=False)
        m.weight.data = torch.tensor(w, dtype=torch.float32)
        return m

    start = torch.tensor([1.0, 0.0, 0.0, 1.0])  # ‖θ_ERM‖ = √2
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0], [2.0, 1.0]])
    y = torch.tensor([0, 1, 1, 0])
    same = PosteriorEnsemble([linear([[1, 0], [0, 1]]), linear([[1, 0], [0, 1]])])
    r = _benchmark("bal_chains").chains_report(same, start, x, y)
    assert r["chains"] == 2 and r["from_erm"] == r["between_chains"] == r["disagreement"] == 0
    assert r["chain_accuracy"] == [1.0, 1.0] and r["ensemble_accuracy"] == 1.0
    # a second chain that swaps the classes: wrong and in disagreement on all four images
    swapped = PosteriorEnsemble([linear([[1, 0], [0, 1]]), linear([[0, 1], [1, 0]])])
    r = _benchmark("bal_chains").chains_report(swapped, start, x, y)
    assert r["from_erm"] == pytest.approx((0 + 2 / 2**0.5) / 2) and r["between_chains"] == pytest.approx(2 / 2**0.5)
    assert r["disagreement"] == 1.0 and r["chain_accuracy"] == [1.0, 0.0]
