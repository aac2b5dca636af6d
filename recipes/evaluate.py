"""Evaluate any recipe's saved model: clean accuracy, AutoAttack (standard by default, from the
authors' ``pyautoattack``) beside robustreg's PGD-k (with restarts) and CW, in the ℓ∞ or ℓ2 ball
the model was trained against (``--norm``, ``--eps``), the per-sample worst case over all of them,
and the gradient-masking report (FGSM ≥ PGD-10 ≥ PGD-50, restarts never help the model, an
unbounded attack reaches 0%, PGD-50 has converged, and robustreg's strongest attack is within a
point of APGD).

AutoAttack needs the ``eval`` extra (``pip install -e ".[eval]"``); without it the recipe stops and
says so. ``--autoattack none`` runs robustreg's attacks alone: the report then marks its robust
accuracy as not AutoAttack-grade.

The model directory (``<out>/model`` of ``recipes/robust.py``, ``recipes/semisupervised.py``,
``recipes/msa_stability.py`` or ``recipes/interpret.py``) holds safetensors weights and a JSON of
architecture and run options; the data set, its split and the default threat model come from
there. A checkpoint directory (``<out>/checkpoints/step_N``, also of a run still going) works too:
its architecture is read from ``<out>/run.json``.

    python recipes/evaluate.py runs/robust_mnist_pgd/model --data-dir ../shared/data
    python recipes/evaluate.py runs/robust_cifar10_trades/model --pgd 20 100 --restarts 5 --eps 0.03137

Says what it loads at once, then shows a progress bar per stage (with an ETA at the average pace so
far; ``--no-progress`` for logs alone) and logs a line each time an attack has run on a batch. It
prints a table and writes ``evaluation.json`` next to the model directory, or into the checkpoint
directory (or to ``--out``). The JSON is written before the first attack and rewritten (atomically)
after every attack on every batch with ``"partial": true``, the stage under way in ``"stage"`` and
its running counts in ``"running"`` (``"masking_running"`` for the masking report), until the
evaluation is complete (``"partial": false``): a run that is stopped leaves what it has measured.

Cost on 2 CPU cores (SmallCNN, 1000 MNIST images): see docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import skeleton
import torch
from rich.progress import (
    Progress,
)
from torch import Tensor

import robustreg
from robustreg import cli
from robustreg.checkpoint import ARCHITECTURES, ENSEMBLES, atomic_write_text, load_model
from robustreg.data import rings_ssl

log = logging.getLogger("robustreg.recipes.evaluate")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument("model", help="a saved model directory (model.json + model.safetensors)")
    per_dataset = "; ".join(f"{cli.show(preset.eps)} {k}" for k, preset in skeleton.PRESETS.items())
    p.add_argument(
        "--norm", choices=("linf", "l2"), default=None,
        help="threat model (default: the one the model was trained against, else linf)",
    )  # fmt: skip
    p.add_argument(
        "--eps", type=float, default=None,
        help=f"radius (default: the run's when --norm is its norm, else the ℓ∞ preset: {per_dataset}; ℓ2: required)",
    )  # fmt: skip
    p.add_argument(
        "--autoattack", choices=("standard", "apgd", "none"), default="standard",
        help="AutoAttack version (apgd: APGD-CE + APGD-T only; none: robustreg's attacks alone)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of every attack")
    p.add_argument("--pgd", type=int, nargs="+", default=[20, 40], help="PGD steps to run (α = max(ε/4, 2.5ε/k))")
    p.add_argument("--restarts", type=int, default=1, help="random restarts of every PGD attack")
    p.add_argument("--cw-steps", type=int, default=30, help="steps of the CW (margin) attack")
    p.add_argument("--eval-size", type=int, default=1000, help="test examples (0: all)")
    p.add_argument("--masking", action=argparse.BooleanOptionalAction, default=True, help="gradient-masking report")
    p.add_argument("--data-dir", default=None, help="data root (default: the run's)")
    p.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=None, help="(default: the run's)")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="rich progress bars")
    p.add_argument("--out", default="", help="JSON report (default: <model>/../evaluation.json)")
    args = p.parse_args(argv)
    if min(args.pgd) < 1 or args.restarts < 1 or args.cw_steps < 1 or args.eval_size < 0 or args.seed < 0:
        p.error("--pgd steps, --restarts and --cw-steps must be >= 1, --eval-size and --seed >= 0")
    if args.autoattack != "none" and not robustreg.autoattack.available():
        p.error(
            "AutoAttack (the default evaluation) needs the authors' package pyautoattack: "
            f"{robustreg.autoattack.INSTALL}; or pass --autoattack none for robustreg's attacks alone "
            "(not an AutoAttack-grade figure)"
        )
    return args


def test_data(run_cfg: dict[str, Any], args: argparse.Namespace) -> tuple[Tensor, Tensor]:
    """The test split the run was evaluated on (regenerated for two rings from the run's seed)."""
    dataset, seed = run_cfg["dataset"], run_cfg.get("seed", 0)
    if dataset == "two-rings":
        if "n_unlabeled" in run_cfg:  # the semi-supervised problem: its unlabeled points
            rings = rings_ssl(run_cfg["n_unlabeled"], labeled_per_class=run_cfg["labels"] // 2, seed=seed)
            return rings.x_unlabeled, rings.y_unlabeled
        return skeleton.rings_split(seed, run_cfg.get("train_size") or 4000, run_cfg.get("eval_size") or 1000)[1]
    cfg = SimpleNamespace(
        data_dir=args.data_dir or run_cfg.get("data_dir", "../shared/data"),
        synthetic=run_cfg.get("synthetic", False) if args.synthetic is None else args.synthetic,
        seed=seed,
    )
    return skeleton.load_images(cfg, dataset, n_test=args.eval_size)[1]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    skeleton.setup_logging(True)
    log.info("evaluating %s: loading the model and the test data", args.model)
    path = Path(args.model)
    # a recipe's checkpoint (<out>/checkpoints/step_N): the architecture is in <out>/run.json
    meta_file = (
        path.parents[1] / "run.json" if (path / "model.safetensors").is_file() and len(path.parents) > 1 else None
    )
    if (path / "model.json").is_file() or meta_file is None or not meta_file.is_file():
        meta_file = None
    try:
        model, meta = load_model(path, meta_file=meta_file)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    if meta["arch"] not in ARCHITECTURES and meta["arch"] not in ENSEMBLES:
        raise SystemExit(f"error: {path} holds a {meta['arch']} chart, not a classifier")
    run_cfg = meta["config"]
    if "dataset" not in run_cfg:
        raise SystemExit(f"error: {args.model}/model.json records no data set: not a recipe's classifier")
    if run_cfg["dataset"] not in skeleton.PRESETS:
        known = ", ".join(skeleton.PRESETS)
        raise SystemExit(f"error: {args.model}/model.json records data set {run_cfg['dataset']!r}, not one of {known}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model = model.to(device)
    x, y = test_data(run_cfg, args)
    if args.eval_size:
        x, y = x[: args.eval_size], y[: args.eval_size]
    # the radius the model was trained against, as its run recorded it ("threat_model"; None: none);
    # a model saved before runs recorded it: a robust run's "eps" (a semi-supervised run's "eps",
    # with its "methods", is VAT's ℓ2 radius, not a threat model)
    if "threat_model" in run_cfg:
        threat = run_cfg["threat_model"] or {}
        trained_norm, trained_eps = threat.get("norm", "linf"), threat.get("eps")
    else:
        trained_norm, trained_eps = "linf", None if "methods" in run_cfg else run_cfg.get("eps")
    norm = args.norm or trained_norm
    if norm != trained_norm:
        trained_eps = None  # a radius of another ball means nothing here
    eps = args.eps if args.eps is not None else trained_eps
    if eps is None and norm == "l2":
        raise SystemExit("error: an ℓ2 evaluation of a model not trained in an ℓ2 ball needs its radius: --eps")
    eps = skeleton.PRESETS[run_cfg["dataset"]].eps if eps is None else eps
    bounds = skeleton.PRESETS[run_cfg["dataset"]].bounds
    torch.manual_seed(args.seed)  # the PGD/CW random starts
    attacks = skeleton.attack_suite(
        eps, bounds=bounds, autoattack=None if args.autoattack == "none" else args.autoattack,
        pgd_steps=args.pgd, restarts=args.restarts, cw_steps=args.cw_steps, seed=args.seed, norm=norm,
    )  # fmt: skip
    default = path.resolve().parent / "evaluation.json" if meta_file is None else path / "evaluation.json"
    out = Path(args.out) if args.out else default
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"model": str(args.model), "arch": meta["arch"], "dataset": run_cfg["dataset"]}
    report |= {"norm": norm, "eps": eps, "attacks": {k: repr(v) for k, v in attacks.items()}}
    report |= {"partial": True, "stage": "attacks"}
    if args.autoattack == "none":
        report["warning"] = "no AutoAttack: robust_acc is robustreg's PGD/CW only, not an AutoAttack-grade figure"
    write_json(out, report)
    names = ", ".join(attacks)
    log.info("%d test examples, %s eps %.4g, attacks %s; partial results in %s", len(x), norm, eps, names, out)

    with progress(args.progress) as bar:
        watch = Watch("attacks", "running", report, out, bar)
        res = robustreg.robust_accuracy(model, (x, y), attack=attacks, batch_size=100, device=device, progress=watch)
        report.pop("running", None)
        report |= {"n": res.n, "clean_acc": res.clean, "robust_acc": res.robust}
        report |= {f"{k}_acc": v for k, v in res.per_attack.items()}
        if args.masking:
            report["stage"] = "masking"
        write_json(out, report)
        if args.masking:
            watch = Watch("masking report", "masking_running", report, out, bar)
            masking = robustreg.gradient_masking_report(
                model, (x, y), eps=eps, norm=norm, bounds=bounds, batch_size=100, apgd=args.autoattack != "none",
                progress=watch,
            )  # fmt: skip
            report.pop("masking_running", None)
            report["masking"] = {"passed": masking.passed, "accuracy": masking.accuracy}
            checks = [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in masking.checks]
            report["masking"]["checks"] = checks
    report["partial"] = False
    report["stage"] = "done"
    write_json(out, report)
    table = {k: v for k, v in report.items() if k not in ("masking", "attacks", "partial", "stage")}
    if args.masking:
        failed = [c["name"] for c in report["masking"]["checks"] if c["passed"] is False]
        table["masking checks"] = "all passed" if not failed else "FAILED: " + ", ".join(failed)
    table["report"] = str(out)
    skeleton.print_summary(table, f"evaluation of {args.model}")
    return report


class Watch:
    """The progress hook of one stage (:class:`robustreg.ProgressEvent`): a bar that appears with
    the stage's first event, a log line each time an attack has run on a batch, and the report
    rewritten with the running counts under ``report[key]``."""

    def __init__(self, stage: str, key: str, report: dict[str, Any], out: Path, bar: Progress) -> None:
        self.stage, self.key, self.report, self.out, self.bar = stage, key, report, out, bar
        self.task: Any = None
        self.start = self.tick = time.perf_counter()

    def __call__(self, event: robustreg.ProgressEvent) -> None:
        now = time.perf_counter()
        if event.attack is None:
            what = f"{self.stage}: {event.batches or '?'} batches × {len(event.correct)} attacks"
            self.task = self.bar.add_task(what, total=event.total)
            self.start = self.tick = now
            return
        self.bar.update(self.task, completed=event.done)
        name, hit, seen = event.attack, event.correct[event.attack], event.attacked[event.attack]
        log.info(
            "%s %d/%s: batch %d/%s, %s: %d/%d correct so far (%.1f%%), %.1f s",
            self.stage, event.done, event.total or "?", event.batch, event.batches or "?", name, hit, seen,
            100 * hit / seen, now - self.tick,
        )  # fmt: skip
        self.tick = now
        seen_by = event.attacked
        per_attack = {
            k: {"correct": c, "attacked": seen_by[k], "acc": c / seen_by[k] if seen_by[k] else None}
            for k, c in event.correct.items()
        }
        self.report[self.key] = {
            "done": event.done, "total": event.total, "batch": event.batch, "batches": event.batches,
            "elapsed_s": round(now - self.start, 2), "samples": event.samples, "clean_acc": event.clean / event.samples,
            "finished": event.finished, "robust_acc": event.robust / event.finished if event.finished else None,
            "per_attack": per_attack,
        }  # fmt: skip
        write_json(self.out, self.report)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically: a kill mid-write leaves the previous report whole."""
    atomic_write_text(path, json.dumps(data, indent=2))


def progress(enabled: bool) -> Progress:
    """A rich progress bar: description, bar, done/total, elapsed, ETA at the average pace so far."""
    return cli.progress_bar(disable=not enabled)


if __name__ == "__main__":
    main()
