"""Robust accuracy against training time on real MNIST: PGD-40 adversarial training, Amata,
YOPO-5-10 and Amata+YOPO, each for the same budget of training time (the YOPO paper's Fig. 2,
the Amata paper's time comparison), scored with AutoAttack.

    python benchmarks/time_to_robust.py --budget-s 720 --snapshot-every-s 72 --out runs/time_to_robust

SmallCNN, ε = 0.3 (ℓ∞), batch 128, Adam (lr 1e-3 by default, the same for every method).

- ``pgd40``: PGD-AT with 40 steps of α = 0.01 (the papers' MNIST setting).
- ``amata``: Amata on PGD-AT, K from 5 to 40 (linear), α_t = τ/K_t with τ = 40·0.01 = 0.4.
- ``yopo5-10``: YOPO with f0 = conv1 + ReLU (``model.layer_one``), m = 5, n = 10, α = 0.01.
- ``amata-yopo``: Amata on YOPO, m from 2 to 5 (n = 10), α_t = τ/m_t with τ = 5·0.01.

Three stages (``--stage``, default ``all``), each resumable from what the one before wrote:

``train``
    The methods run interleaved in one process, each with its own clock, always stepping the
    one whose clock is the furthest behind: the clocks advance together, so the machine's speed
    drifts (large on shared VMs) hit the same stretch of every method's training. Progress t/T
    of the Amata schedules is the method's training time over the budget. Every
    ``--snapshot-every-s`` seconds of a method's training time its clock pauses and the weights
    are saved (``snapshots/<method>/<n>.safetensors``); nothing is evaluated during training,
    so the scoring attack can be as strong as it must be without distorting the clocks. At the
    ``--c-at`` fractions of its budget the Amata run computes criterion C
    (:func:`robustreg.criterion_c`, γ = ``--gamma``) on a fixed training batch for its own
    (α_t, K_t) and for PGD-10, PGD-20 and PGD-40 (the Amata paper's Table 1). ``train.json`` is
    rewritten (atomically) after every snapshot.
``score``
    Every snapshot is scored on a fixed test subset (the first ``--n-test`` images) with
    ``--curve-attack`` (default: AutoAttack's ``"apgd"`` version, APGD-CE + APGD-T, from the
    authors' ``pyautoattack``), plus the mean FOSC of those adversaries on the first 128. Each
    method's final model is then evaluated with AutoAttack ``standard`` on the first
    ``--n-final`` test images, and with the curve attack (and ``--final-attacks``) on the same
    images, so the report shows how far the curve attack is from the standard. Every score is
    its own small JSON (``scores/<attack>/<method>/<n>.json``, ``final/<method>.json``, written
    as each attack ends), so several scoring processes (``--methods``, ``--what``) can share a
    run directory, ``--what curves --follow`` can score while the training runs, and an
    interrupted scoring resumes where it stopped.
``summary``
    ``curves.json``: every point, the C table, the time each method needed to reach the PGD-40
    run's final robust accuracy (at snapshot granularity, and linearly interpolated between the
    snapshots around the crossing), the ratios, the final AutoAttack table; and
    ``robust_vs_time.png``.

The learning rate is exposed on purpose: the official YOPO MNIST code sums its m gradients and
divides the learning rate by m (SGD 0.1/5), which is SGD at 0.1 on the mean gradient that
:class:`robustreg.YOPO` returns; that run is reported to collapse, so the default here is a
stable Adam at 1e-3 for every method.

Data: ``--data-dir`` holds ``MNIST/raw/*.gz`` (torchvision's layout); by default
``$ROBUSTREG_DATA`` or ``../shared/data`` next to this repository, read by
:func:`robustreg.data.load_vision` (which checks every file's MD5 and never downloads).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robustreg
from robustreg import cli
from robustreg.data import load_vision
from robustreg.models import SmallCNN

from reporting import loadavg, progress_bar, setup_logging, write_json

log = logging.getLogger("time_to_robust")
ROOT = Path(__file__).resolve().parents[1]
EPS, ALPHA = 0.3, 0.01
CURVE_ATTACKS = ("apgd", "apgd-ce", "standard")


def load_mnist(data_dir: Path) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """MNIST as float tensors in [0, 1], through torchvision (:func:`robustreg.data.load_vision`)."""
    try:
        return load_vision("mnist", data_dir, train=True), load_vision("mnist", data_dir, train=False)
    except OSError as err:  # missing or damaged files
        raise SystemExit(str(err)) from None


AMATA_TAU = 40 * ALPHA  # Amata+PGD: the PGD-40 attack's total length, K_t·α_t = 0.4
YOPO_TAU = 5 * ALPHA  # Amata+YOPO: m_t·α_t = YOPO-5-10's 5 × 0.01, so every run travels n·τ = 0.5
C_SETTINGS = {"pgd10": (10, AMATA_TAU / 10), "pgd20": (20, AMATA_TAU / 20), "pgd40": (40, ALPHA)}  # (K, α)


def make_method(name: str, model: SmallCNN):
    """The loss object of ``name``; Amata variants are driven by progress = training time / budget."""
    if name == "pgd40":
        return robustreg.PGDAT(model, eps=EPS, alpha=ALPHA, steps=40)
    if name == "amata":
        return robustreg.Amata(robustreg.PGDAT(model, eps=EPS), k_min=5, k_max=40, tau=AMATA_TAU)
    if name == "yopo5-10":
        return robustreg.YOPO(model, m=5, n=10, eps=EPS, alpha=ALPHA, first_layer=model.layer_one)
    if name == "amata-yopo":
        yopo = robustreg.YOPO(model, m=5, n=10, eps=EPS, alpha=ALPHA, first_layer=model.layer_one)
        return robustreg.Amata(yopo, k_min=2, k_max=5, tau=YOPO_TAU)
    if name == "natural":
        return lambda x, y: F.cross_entropy(model(x), y)
    raise SystemExit(f"unknown method {name!r}")


def read_json(path: Path) -> dict | None:
    """``path``'s JSON object, or None when it is missing or unreadable (a truncated or edited
    score is scored again rather than trusted or crashed on)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        if path.exists():
            log.warning("%s is unreadable: scoring it again", path)
        return None
    return data if isinstance(data, dict) else None


def save_snapshot(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def load_snapshot(path: Path) -> SmallCNN:
    from safetensors.torch import load_file

    model = SmallCNN()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def criterion_row(model: nn.Module, batch: tuple[Tensor, Tensor], current: tuple[int, float], gamma: float) -> dict:
    """Criterion C on a fixed training batch for the run's current setting and for PGD-10/20/40
    (one search over the default grid, every setting from one common start)."""
    x, y = batch
    c = robustreg.criterion_c(model, x, y, steps=current[0], alpha=current[1], eps=EPS, gamma=gamma, candidates=_grid())
    row = {"current": list(current), "best": list(c.best), "C_current": c.value}
    for name, setting in C_SETTINGS.items():
        row[f"C_{name}"] = max(c.scores.values()) - c.scores[setting]
    return row


def _grid() -> list[tuple[int, float]]:
    ks = robustreg.diagnostics.DEFAULT_KS
    alphas = [EPS * f for f in robustreg.diagnostics.DEFAULT_ALPHA_FRACTIONS]
    return [(k, a) for k in ks for a in alphas] + list(C_SETTINGS.values())


def trainer(
    name: str, train: tuple[Tensor, Tensor], args: argparse.Namespace, curve: list, table: list, on_point
) -> Iterator[float]:
    """Train ``name`` for ``args.budget_s`` seconds of its own training time, one step per
    ``next()``, which returns the training time so far (:func:`run_all` interleaves the runs).
    Snapshots (and, for Amata, criterion C at ``--c-at`` fractions of the budget) pause the clock;
    ``on_point()`` is called after each snapshot."""
    torch.manual_seed(args.seed)
    model = SmallCNN().train()
    loss_fn = make_method(name, model)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    x, y = train
    c_batch = (x[: args.c_batch], y[: args.c_batch])
    c_marks = [float(f) * args.budget_s for f in args.c_at.split(",")] if name == "amata" and args.c_at else []
    gen = torch.Generator().manual_seed(args.seed)
    snapshots = args.out / "snapshots" / name

    def snapshot(point: dict) -> None:
        path = snapshots / f"{len(curve):03d}.safetensors"
        save_snapshot(model, path)
        curve.append(point | {"snapshot": str(path.relative_to(args.out))})
        on_point()

    snapshot({"train_s": 0.0, "step": 0, "epoch": 0.0})
    trained, step, next_snap = 0.0, 0, args.snapshot_every_s
    while trained < args.budget_s:
        for idx in torch.randperm(x.shape[0], generator=gen).split(args.batch_size):
            yield trained
            start = time.perf_counter()
            if isinstance(loss_fn, robustreg.Amata):
                loss_fn.set_progress(min(1.0, trained / args.budget_s))
            loss = loss_fn(x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            trained += time.perf_counter() - start
            step += 1
            done = trained >= args.budget_s
            if trained >= next_snap or done:
                point = {"train_s": trained, "step": step, "epoch": step * args.batch_size / x.shape[0]}
                if isinstance(loss_fn, robustreg.Amata):
                    point |= {"K": loss_fn.K, "alpha": loss_fn.alpha}
                snapshot(point | {"loss": float(loss.detach())})
                log.info("%s %s", name, json.dumps({k: round(v, 4) for k, v in point.items()}))
                next_snap += args.snapshot_every_s
            while c_marks and (trained >= c_marks[0] or done):
                c_marks.pop(0)
                row = {"train_s": trained, "progress": loss_fn.progress}
                row |= criterion_row(model, c_batch, loss_fn.knobs(), args.gamma)
                model.train()
                table.append(row)
                on_point()
                log.info("criterion C %s", json.dumps(row))
            if done:
                return


def run_all(
    names: list[str],
    train: tuple[Tensor, Tensor],
    args: argparse.Namespace,
    *,
    curves: dict[str, list] | None = None,
    table: list | None = None,
    on_point=lambda: None,
    on_step=lambda clocks: None,
) -> tuple[dict[str, list], list]:
    """Every method to its budget, always stepping the one whose clock is the furthest behind:
    the clocks advance together, so a slow spell of the machine covers the same stretch of
    training time in every run. Fills and returns ``(curves, criterion C table)``; ``on_point()``
    after each snapshot, ``on_step(clocks)`` after each step."""
    curves = {} if curves is None else curves
    table = [] if table is None else table
    for name in names:
        curves[name] = []
    runs = {name: trainer(name, train, args, curves[name], table, on_point) for name in names}
    clocks = {name: 0.0 for name in names}
    while runs:
        name = min(runs, key=lambda n: (clocks[n], names.index(n)))
        try:
            clocks[name] = next(runs[name])
        except StopIteration:
            clocks[name] = args.budget_s
            del runs[name]
        on_step(clocks)
    return curves, table


def stage_train(args: argparse.Namespace) -> dict:
    """Train every method interleaved; ``train.json`` and the snapshots are written as it goes."""
    train, _ = load_mnist(args.data_dir)
    names = args.methods.split(",")
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config |= {"torch": torch.__version__, "threads": torch.get_num_threads(), "eps": EPS, "alpha": ALPHA}
    config["loadavg_start"] = loadavg()
    report: dict = {"config": config, "curves": {}, "criterion_c": []}
    args.out.mkdir(parents=True, exist_ok=True)
    with progress_bar() as bar:
        task = bar.add_task("training (seconds, all clocks)", total=args.budget_s * len(names))
        run_all(
            names, train, args, curves=report["curves"], table=report["criterion_c"],
            on_point=lambda: write_json(args.out / "train.json", report),
            on_step=lambda clocks: bar.update(task, completed=sum(clocks.values())),
        )  # fmt: skip
    config["loadavg_end"] = loadavg()
    write_json(args.out / "train.json", report)
    return report


def curve_attack(name: str) -> Any:
    """The attack that scores the curves: AutoAttack's ``"apgd"`` or ``"standard"`` version, or
    APGD-CE alone (AutoAttack's first attack, ``version="custom"``)."""
    if name == "apgd-ce":
        return robustreg.AutoAttack(eps=EPS, version="custom", attacks=("apgd-ce",))
    return robustreg.AutoAttack(eps=EPS, version=name)


def score_model(model: nn.Module, data: tuple[Tensor, Tensor], attack: Any, fosc_n: int = 128) -> dict[str, float]:
    """Clean and robust accuracy of ``model`` on ``data`` under ``attack``, and the mean FOSC of
    the attack's adversaries on the first ``fosc_n`` images (how close they are to a stationary
    point of the inner maximisation)."""
    x, y = data
    x_adv = torch.cat([attack(model, xb, yb) for xb, yb in zip(x.split(500), y.split(500), strict=True)])
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        robust = clean & (model(x_adv).argmax(1) == y)
    c = robustreg.fosc(model, x[:fosc_n], x_adv[:fosc_n], y[:fosc_n], eps=EPS)
    return {"clean": float(clean.float().mean()), "robust": float(robust.float().mean()), "fosc": float(c.mean())}


def _score_file(args: argparse.Namespace, snapshot: str, attack: str | None = None) -> Path:
    """Where a snapshot's score goes: one small JSON per model, so that several scoring processes
    (``--methods``, ``--what``) can share one run directory and an interrupted one resumes."""
    relative = Path(snapshot).with_suffix(".json").relative_to("snapshots")
    return args.out / "scores" / (attack or args.curve_attack) / relative


def stage_score(args: argparse.Namespace) -> None:
    """Score the snapshots of ``train.json`` (``--what curves``; with ``--follow``, also those a
    training still running writes, until it ends) and each method's final model with AutoAttack
    standard and the curve attack on ``--n-final`` images (``--what final``). Models already
    scored are skipped."""
    _, (xt, yt) = load_mnist(args.data_dir)
    names = args.methods.split(",")
    attack = curve_attack(args.curve_attack)
    test, final_data = (xt[: args.n_test], yt[: args.n_test]), (xt[: args.n_final], yt[: args.n_final])
    with progress_bar() as bar:
        if args.what in ("curves", "both"):
            task = bar.add_task(f"snapshots ({args.curve_attack}, {args.n_test} images)", total=0)
            while True:
                trained = json.loads((args.out / "train.json").read_text())
                finished = "loadavg_end" in trained["config"]
                snaps = [p["snapshot"] for n in names for p in trained["curves"].get(n, [])]
                if args.points:  # only these snapshot numbers (e.g. around a crossing, with a costlier attack)
                    snaps = [snap for snap in snaps if int(Path(snap).stem) in args.points]
                todo = [s for s in snaps if read_json(_score_file(args, s)) is None]
                bar.update(task, total=len(snaps), completed=len(snaps) - len(todo))
                if not todo:
                    if finished or not args.follow:
                        break
                    time.sleep(10)
                    continue
                for snap in todo:
                    start = time.perf_counter()
                    row = score_model(load_snapshot(args.out / snap), test, attack)
                    row |= {"eval_s": time.perf_counter() - start, "loadavg": loadavg()}
                    _score_file(args, snap).parent.mkdir(parents=True, exist_ok=True)
                    write_json(_score_file(args, snap), row)
                    bar.advance(task)
        if args.what in ("final", "both"):
            trained = json.loads((args.out / "train.json").read_text())
            if "loadavg_end" not in trained["config"]:
                raise SystemExit("the training has not finished: no final models to score yet")
            keys = list(dict.fromkeys([*args.final_attacks.split(","), args.curve_attack]))
            task = bar.add_task(
                f"final models ({', '.join(keys)}; {args.n_final} images)", total=len(names) * len(keys)
            )
            for name in names:
                path = args.out / "final" / f"{name}.json"
                snap = trained["curves"][name][-1]["snapshot"]
                row = read_json(path) or {"snapshot": snap, "n": args.n_final}
                if (row["snapshot"], row["n"]) != (snap, args.n_final):
                    raise SystemExit(f"{path} holds another model or --n-final: use another --out")
                model = load_snapshot(args.out / snap)
                for key in keys:  # one attack at a time, saved as it ends: a rerun adds what is missing
                    if key not in row:
                        start = time.perf_counter()
                        row[key] = score_model(model, final_data, curve_attack(key))
                        row[key] |= {"eval_s": time.perf_counter() - start, "loadavg": loadavg()}
                        path.parent.mkdir(parents=True, exist_ok=True)
                        write_json(path, row)
                    bar.advance(task)


def time_to_reach(curve: list[dict], target: float) -> float | None:
    """Training seconds at the first evaluation whose robust accuracy is ≥ ``target``."""
    return next((p["train_s"] for p in curve if p["robust"] >= target), None)


def time_to_reach_interpolated(curve: list[dict], target: float) -> float | None:
    """The crossing of ``target``, linearly interpolated between the two evaluations around it
    (evaluations are ``--snapshot-every-s`` apart, so the first one above can be late by that much)."""
    for before, after in itertools.pairwise(curve):
        if after["robust"] >= target:
            if before["robust"] >= target:
                return before["train_s"]
            w = (target - before["robust"]) / (after["robust"] - before["robust"])
            return before["train_s"] + w * (after["train_s"] - before["train_s"])
    return None


RATIOS = [("yopo5-10", "pgd40"), ("amata", "pgd40"), ("amata-yopo", "pgd40"), ("amata-yopo", "yopo5-10")]


def bounded_crossing(bound: list[dict], exact: dict[int, dict], target: float) -> dict:
    """The first snapshot whose ``exact`` robust accuracy reaches ``target``, found with few exact
    scores: ``bound`` is the curve of an attack that is an upper bound of the exact one at every
    snapshot (APGD-CE, the first attack of AutoAttack's ``"apgd"`` version, run with the same
    seed: every image APGD-T then breaks only lowers the exact accuracy), so a snapshot whose
    bound is below the target is below it exactly too. ``exact`` maps snapshot indices to the
    exact scores known so far.

    Returns ``{"index", "train_s", "interpolated_s", "need"}``: the crossing (``index`` None when
    the target is never reached, or not known yet), and ``need``, the snapshot indices whose exact
    score would settle it (the first candidate, and the one before it for the interpolation)."""
    for i, point in enumerate(bound):
        if point["robust"] < target:
            continue  # exact ≤ bound < target
        if i not in exact:
            return {"index": None, "need": [j for j in (i - 1, i) if j >= 0 and j not in exact]}
        if exact[i]["robust"] < target:
            continue
        if i == 0:
            return {"index": 0, "train_s": point["train_s"], "interpolated_s": point["train_s"], "need": []}
        if i - 1 not in exact:
            return {"index": None, "need": [i - 1]}
        before, after = exact[i - 1]["robust"], exact[i]["robust"]
        t0, t1 = bound[i - 1]["train_s"], point["train_s"]
        w = (target - before) / (after - before)
        return {"index": i, "train_s": t1, "interpolated_s": t0 + w * (t1 - t0), "need": []}
    return {"index": None, "need": []}


def summarize_exact(report: dict, exact: dict[str, dict[int, dict]], attack: str) -> dict:
    """The target and the crossings under the ``exact`` attack (scored at a few snapshots), the
    curves being its upper bound (:func:`bounded_crossing`); what still needs scoring goes into
    ``report["exact"]["need"]`` as snapshot numbers per method."""
    curves = report["curves"]
    out: dict[str, Any] = {"attack": attack, "need": {}, "bound_violations": []}
    for name, points in exact.items():  # the bound must hold wherever both are known
        for i, e in points.items():
            if e["robust"] > curves[name][i]["robust"] + 1e-9:
                out["bound_violations"].append({"method": name, "snapshot": i, "exact": e["robust"]})
    last = len(curves["pgd40"]) - 1
    if last not in exact.get("pgd40", {}):
        out["need"]["pgd40"] = [last]
        report["exact"] = out
        return report
    target = exact["pgd40"][last]["robust"]
    out["target_robust"] = target
    crossings = {name: bounded_crossing(c, exact.get(name, {}), target) for name, c in curves.items()}
    out["crossings"] = crossings
    out["need"] = {name: c["need"] for name, c in crossings.items() if c["need"]}
    for key in ("train_s", "interpolated_s"):
        reach = {name: c.get(key) for name, c in crossings.items()}
        out[f"time_to_target_{key}"] = reach
        out[f"ratios_{key}"] = {
            f"{a} / {b}": reach[a] / reach[b] for a, b in RATIOS if reach.get(a) is not None and reach.get(b)
        }
    report["exact"] = out
    return report


def summarize(report: dict) -> dict:
    """Target (PGD-40's final robust accuracy), each method's time to reach it, and the ratios."""
    curves = report["curves"]
    for key in [k for k in report if k.startswith(("target_", "time_to_target", "ratios", "yopo_over_pgd40"))]:
        del report[key]  # recomputed below
    if "pgd40" not in curves:
        return report
    target = curves["pgd40"][-1]["robust"]
    report["target_robust"] = target
    for suffix, fn in (("", time_to_reach), ("_interpolated", time_to_reach_interpolated)):
        reach = {name: fn(c, target) for name, c in curves.items()}
        report[f"time_to_target{suffix}_s"] = reach
        report[f"ratios{suffix}"] = {
            f"{a} / {b}": reach[a] / reach[b] for a, b in RATIOS if reach.get(a) is not None and reach.get(b)
        }
    return report


LABELS = {"pgd40": "PGD-40", "amata": "Amata", "yopo5-10": "YOPO-5-10", "amata-yopo": "Amata+YOPO"}


def plot(report: dict, path: Path) -> None:
    """Robust accuracy against training time, one line a method, and the target as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = report["config"]
    threads = config.get("threads", "?")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    exact = report.get("exact")
    for name, curve in report["curves"].items():
        xs, ys = [p["train_s"] / 60 for p in curve], [100 * p["robust"] for p in curve]
        label = LABELS.get(name, name) + (f" ({report['curve_attack']}, upper bound)" if exact else "")
        (line,) = ax.plot(xs, ys, marker="o", ms=3, label=label)
        if exact:
            pts = sorted(exact["scores"].get(name, {}).items())
            xs, ys = [curve[i]["train_s"] / 60 for i, _ in pts], [100 * e["robust"] for _, e in pts]
            label = f"{LABELS.get(name, name)} ({exact['attack']})"
            ax.plot(xs, ys, ls="none", marker="D", ms=6, color=line.get_color(), label=label)
    target = exact.get("target_robust") if exact else report.get("target_robust")
    if target is not None:
        ax.axhline(100 * target, color="grey", ls="--", lw=1, label="target: PGD-40's final")
    ax.set_xlabel(f"training time per method (min; CPU, {threads} thread{'s' if threads != 1 else ''})")
    ax.set_ylabel(
        f"robust accuracy (%), ε = {EPS}" if exact else f"robust accuracy (%), {report['curve_attack']}, ε = {EPS}"
    )
    ax.set_title(f"MNIST SmallCNN, first {config.get('n_test', '?')} test images")
    ax.grid(alpha=0.3)
    ax.legend(title="method", fontsize=7 if exact else None)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stage_summary(args: argparse.Namespace) -> dict:
    """Merge ``train.json`` and the scores into ``curves.json`` and the plot."""
    report = json.loads((args.out / "train.json").read_text())
    missing = [
        p["snapshot"] for c in report["curves"].values() for p in c if not _score_file(args, p["snapshot"]).is_file()
    ]
    if missing:
        raise SystemExit(f"{len(missing)} snapshots are not scored yet (first: {missing[0]}): run --stage score")
    for curve in report["curves"].values():
        for p in curve:
            p |= json.loads(_score_file(args, p["snapshot"]).read_text())
    report["curve_attack"] = args.curve_attack
    finals = {name: args.out / "final" / f"{name}.json" for name in report["curves"]}
    report["final"] = {name: json.loads(f.read_text()) for name, f in finals.items() if f.is_file()}
    summarize(report)
    if args.exact_attack:
        exact = {
            name: {
                i: score
                for i, p in enumerate(curve)
                if (score := read_json(_score_file(args, p["snapshot"], args.exact_attack)))
            }
            for name, curve in report["curves"].items()
        }
        summarize_exact(report, exact, args.exact_attack)
        report["exact"]["scores"] = {name: {i: e for i, e in pts.items()} for name, pts in exact.items()}
        if report["exact"]["need"]:
            need = {
                name: [Path(report["curves"][name][i]["snapshot"]).stem for i in idx]
                for name, idx in report["exact"]["need"].items()
            }
            log.warning("to settle the crossings, score with %s: %s", args.exact_attack, need)
    write_json(args.out / "curves.json", report)
    report["config"]["n_test"] = args.n_test  # the scoring's subset (train.json holds the training's options)
    plot(report, args.out / "robust_vs_time.png")
    return report


def main(argv: list[str] | None = None) -> dict:
    default_data = Path(os.environ.get("ROBUSTREG_DATA", ROOT.parent / "shared" / "data"))
    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument(
        "--stage",
        choices=("train", "score", "summary", "all"),
        default="all",
        help="train the methods, score the snapshots, summarise, or all three",
    )
    p.add_argument("--data-dir", type=Path, default=default_data, help="holds MNIST/raw/*.gz")
    p.add_argument(
        "--methods", default="pgd40,amata,yopo5-10,amata-yopo", help="comma list of the methods to train or score"
    )
    p.add_argument("--budget-s", type=float, default=720.0, help="training seconds per method")
    p.add_argument("--snapshot-every-s", type=float, default=72.0, help="training seconds between snapshots")
    p.add_argument("--n-test", type=int, default=500, help="the curves' fixed test subset: the first N test images")
    p.add_argument("--n-final", type=int, default=1000, help="test images for the final models' AutoAttack")
    p.add_argument("--curve-attack", choices=CURVE_ATTACKS, default="apgd", help="AutoAttack version of the curves")
    p.add_argument("--what", choices=("curves", "final", "both"), default="both", help="what --stage score scores")
    p.add_argument(
        "--final-attacks", default="standard", help=f"comma list from {CURVE_ATTACKS} for the final models, "
        "run in this order (the curve attack runs too)",
    )  # fmt: skip
    p.add_argument("--follow", action="store_true", help="score snapshots as a running training writes them")
    p.add_argument(
        "--exact-attack", choices=CURVE_ATTACKS, default=None,
        help="with --stage summary: the crossings under this attack, scored at a few snapshots (--points), "
        "the --curve-attack curves being its upper bound (apgd-ce for apgd); the summary names the snapshots "
        "still to score",
    )  # fmt: skip
    p.add_argument(
        "--points", type=lambda v: [int(i) for i in v.split(",")], default=None,
        help="with --what curves: score only these snapshot numbers (comma list; default all)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128, help="training batch of every method")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, the same for every method")
    p.add_argument("--seed", type=int, default=0, help="seeds the models and the data order")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--c-at", default="0.1,0.4,0.7,1.0", help="fractions of the budget where Amata's run computes C")
    p.add_argument("--c-batch", type=int, default=128, help="training images (the first N) for criterion C")
    p.add_argument("--gamma", type=float, default=0.04, help="criterion C's cost per step γ")
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "runs" / "time_to_robust",
        help="run directory: train.json, snapshots, scores, summary",
    )
    args = p.parse_args(argv)
    if args.budget_s <= 0 or args.snapshot_every_s <= 0 or args.n_test < 1 or args.n_final < 1:
        p.error("--budget-s and --snapshot-every-s must be > 0, --n-test and --n-final >= 1")
    if unknown := set(args.final_attacks.split(",")) - set(CURVE_ATTACKS):
        p.error(f"--final-attacks: unknown {sorted(unknown)}; choose from {CURVE_ATTACKS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logging()
    logging.getLogger("auto-attack").setLevel(logging.WARNING)  # its checks' warnings, not its per-call info
    report: dict = {}
    if args.stage in ("train", "all"):
        report = stage_train(args)
    if args.stage in ("score", "all"):
        stage_score(args)
    if args.stage in ("summary", "all"):
        report = stage_summary(args)
        shown = {k: v for k, v in report.items() if k not in ("curves", "criterion_c", "config")}
        print(json.dumps(shown, indent=2))
    return report


if __name__ == "__main__":
    main()
