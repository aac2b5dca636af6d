"""FashionMNIST with 100 labels under the TNAR paper's protocol, as closely as 2 CPU cores allow:
supervised-only, VAT, TAR, NAR and TNAR with a VAE chart (and a Localized-GAN chart), each with
the entropy term, over several seeds, the iteration to report chosen on a validation split.

    python benchmarks/fashion_ssl.py --stage chart                      # the VAE and LGAN charts, once
    python benchmarks/fashion_ssl.py --stage train --methods vat,tnar   # every --seeds, one method after another
    python benchmarks/fashion_ssl.py --stage summary                    # table, curves, perturbation images

Data: the last ``--val-size`` training images are the validation split (never trained on, neither
labelled nor unlabelled; the charts do not see them either); from the others, ``--per-class``
labelled images per class are drawn by the seed (:func:`robustreg.data.label_split`) and every one
of them is unlabelled data. The full test set is evaluated every ``--eval-every`` iterations beside
the validation split; the figure reported for a run is its test error at the evaluation with the
lowest validation error (and its final one beside it), never chosen on the test set.

Training (the same for every method): SmallCNN (dropout ``--dropout``), Adam (lr 1e-3, linearly
decayed to 0 after ``--decay-from`` of the iterations), ``--iters`` iterations, each on a batch
of ``--batch-labeled`` labelled images (cycled) plus, for the regularised methods, the regulariser
on ``--batch-unlabeled`` unlabelled images and ``--entropy`` × the mean entropy of the model's
predictions on them (:class:`robustreg.EntMin`, the official code's ``CE + KL_tangent +
KL_normal + entropy``; 0 switches it off), one clean forward shared by both. VAT: ε =
``--eps-vat`` (ℓ2). TAR/NAR/TNAR: one power step, 4 CG iterations, weights 1, the tangent
step on the manifold (``decode(z + ε_t·η) − decode(z) + x``); ``--normalize official`` (the
default) puts ε_t (``--eps-tangent``) in the latent space's units (the largest entry of η, as the
official code) and ε_n (``--eps-normal``) on the normal perturbation's largest entry, ``l2`` makes
both ℓ2 norms in input space (the paper's text); ``--normal`` and ``--normal-start`` choose NAR's
direction (:class:`robustreg.TNAR`); ``--hvp`` takes exact Hessian products instead of finite
differences (VAT and TNAR alike). ``--eps-tangent-final`` shrinks ε_t linearly from ``--eps-tangent``
to that value over the iterations after ``--tangent-decay-from`` of them (constant without it;
the radius of each iteration is logged as ``eps_tangent``). ``--tag`` names a variant (its files
are ``<method>@<tag>``), for the ablations.

Charts, trained once by ``--stage chart`` (seeded by ``--chart-seed``) and shared by every method
and seed: :class:`robustreg.charts.VAE` (latent ``--latent``, width ``--width``, KL weight
``--vae-kl-weight``, ``--chart-epochs`` epochs), or the Localized GAN
(:class:`robustreg.charts.LocalizedGAN`, latent ``--lgan-latent``, width 32, ``--lgan-epochs``
epochs with :data:`LGAN_TRAIN`; its locality and orthonormality errors on test images, before
and after, go to ``charts/lgan.json``) for ``tnar-lgan``. ``--chart-tag T`` trains and uses a
second chart, ``charts/<kind>@T``, beside the first (each run records its chart's settings as
``chart_config``).

Every ``--log-every`` iterations a run records its terms: cross-entropy, the regulariser's KLs
(VAT's, or TAR's and NAR's), the entropy, and the gradient norm of each of cross-entropy,
regulariser and entropy with respect to the weights, so the late-training behaviour is visible.

Each stage shows a progress bar with an ETA on stderr. ``--stage train`` writes
``<out>/seed<N>/<run>.json`` at every evaluation (``"partial": true`` until its last iteration;
atomically: a killed run keeps its curve so far), and the classifier (``<run>.classifier.pt``,
read back with ``weights_only=True``) at its end. ``--stage summary`` gathers the finished runs into
``summary.json``: per run, the mean ± s.d. over seeds of the selected and the final test error,
the late rise (the mean validation error over the last third of the iterations minus the
lowest), and the paired difference to VAT's on the same seeds (to ``vat@<tag>``'s for a run
``<method>@<tag>`` when the tag is a setting, run for VAT and another method alike, as
``--per-class`` or ``--entropy``); ``curves.png`` (test and validation error against iterations,
mean over seeds) of the untagged runs, ``curves-<tag>.png`` of such a setting's runs (one
panel per seed instead of the mean where its runs do not all have the same seeds);
``curves-variants.png``, the validation error of the other tagged runs beside VAT's and TNAR's
(likewise per seed);
``perturbations.png`` and ``perturbations-lgan.png`` (x, its tangent and normal perturbations, as
the paper's Fig. 4) from the first seed's untagged TNAR classifiers (skipped, with a note, where
the classifier's file is absent, as in the repository's copy of the results, which keeps no weights).
``--synthetic`` replaces the data by random tensors of the same shape (a smoke run of the code
path).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robustreg
from robustreg import cli
from robustreg.charts import VAE, LocalizedGAN, load_chart, train_chart, train_lgan
from robustreg.checkpoint import save_model
from robustreg.data import cycle_batches, label_split, load_vision, synthetic_vision
from robustreg.models import SmallCNN
from robustreg.plots import perturbation_grid

from reporting import progress_bar, write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fashion_ssl_protocol"
METHODS = ("supervised", "vat", "tar", "nar", "tnar", "tnar-lgan")
WEIGHTS = {"tar": (1.0, 0.0), "nar": (0.0, 1.0), "tnar": (1.0, 1.0), "tnar-lgan": (1.0, 1.0)}
#: the paper's test errors (%), FashionMNIST with 100 labels
PAPER = {"vat": 27.69, "tar": 26.45, "nar": 27.83, "tnar": 23.35, "tnar-lgan": 23.65}


def load(args: argparse.Namespace) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x, y, xt, yt)``: the training images and labels, the test ones."""
    if args.synthetic:
        gen = torch.Generator().manual_seed(0)
        x, y = synthetic_vision("fashionmnist", 512, generator=gen)
        xt, yt = synthetic_vision("fashionmnist", 256, generator=gen)
        return x, y, xt, yt
    x, y = load_vision("fashionmnist", args.data_dir, train=True)
    xt, yt = load_vision("fashionmnist", args.data_dir, train=False)
    return x, y, xt, yt


def split(x: Tensor, y: Tensor, args: argparse.Namespace) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(train, validation)``: the validation split is the last ``--val-size`` images."""
    cut = len(x) - args.val_size
    if cut < 10 * args.per_class:
        raise SystemExit(f"error: --val-size {args.val_size} leaves {cut} of {len(x)} training images")
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def chart_path(out: Path, kind: str, tag: str = "") -> Path:
    """Where the chart ``kind`` is saved under the results ``out``: a model directory (safetensors +
    JSON), ``charts/<kind>``, or ``charts/<kind>@<tag>`` for ``--chart-tag`` (a second chart)."""
    return out / "charts" / (f"{kind}@{tag}" if tag else kind)


def check_tags(p: argparse.ArgumentParser, args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Tags name files: letters, digits and ``. _ -`` only (never a path)."""
    for name in names:
        value = getattr(args, name)
        if value and not all(c.isalnum() or c in "._-" for c in value):
            p.error(f"--{name.replace('_', '-')} may hold letters, digits and . _ - only, got {value!r}")


# the LGAN's training settings (train_lgan's defaults, the Jacobian term on 16 of every 64 images)
LGAN_TRAIN = {"batch_size": 64, "lr": 2e-4, "sigma": 1.0, "locality": 10.0, "orthonormality": 10.0}
LGAN_TRAIN["jacobian_batch"] = 16


def held_out(chart: LocalizedGAN, xt: Tensor, n_loc: int = 1000, n_jac: int = 256) -> dict:
    """The LGAN's locality ‖G(x, 0) − x‖₂ and orthonormality ‖JᵀJ − I‖²_F on test images."""
    with torch.no_grad():
        loc = chart.locality_error(xt[:n_loc]).sqrt()
    ortho = torch.cat([chart.orthonormality_error(xt[i : i + 64]).detach() for i in range(0, n_jac, 64)])
    return {
        "locality_l2_mean": float(loc.mean()),
        "relative_locality": float((loc / xt[:n_loc].flatten(1).norm(dim=1)).mean()),
        "orthonormality_fro2_mean": float(ortho.mean()),
    }


def stage_chart(args: argparse.Namespace) -> None:
    """Train the charts of ``--charts`` on the training images outside the validation split."""
    x, y, xt, _ = load(args)
    (x, _), _ = split(x, y, args)
    with progress_bar() as bar:
        task = bar.add_task(f"charts ({', '.join(args.charts)})", total=len(args.charts))
        for kind in args.charts:
            train_one_chart(kind, x, xt, args)
            bar.advance(task)


def train_one_chart(kind: str, x: Tensor, xt: Tensor, args: argparse.Namespace) -> None:
    """Train, save and describe (``charts/<kind>.json``) the chart ``kind``."""
    torch.manual_seed(args.chart_seed)
    start = time.perf_counter()
    if kind == "vae":
        chart = VAE((1, 28, 28), latent=args.latent, width=args.width, kl_weight=args.vae_kl_weight)
        history = train_chart(chart, x, epochs=args.chart_epochs, seed=args.chart_seed)
        info = {"kind": kind, "config": chart.config, "epochs": args.chart_epochs, "loss_per_epoch": history}
        with torch.no_grad():
            z = chart.encode(x[:1000])
        info["code_norm_mean"] = float(z.norm(dim=1).mean())  # the scale ε_t's latent units compare to
        info["code_abs_max_mean"] = float(z.abs().amax(1).mean())
    else:
        chart = LocalizedGAN((1, 28, 28), latent=args.lgan_latent, width=32)
        before = held_out(chart, xt)
        history = train_lgan(chart, x, epochs=args.lgan_epochs, seed=args.chart_seed, **LGAN_TRAIN)
        info = {"kind": kind, "config": chart.config, "train": {"epochs": args.lgan_epochs, **LGAN_TRAIN}}
        info |= {"history": history, "held_out_before": before, "held_out_after": held_out(chart, xt)}
    info |= {"images": len(x), "threads": torch.get_num_threads(), "seconds": time.perf_counter() - start}
    path = chart_path(args.out, kind, args.chart_tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(chart, path)
    write_json(path.parent / f"{path.name}.json", info)


def make_reg(method: str, model: nn.Module, args: argparse.Namespace) -> Any:
    """The regulariser of ``method`` (None for supervised-only)."""
    fd = "hvp" if args.hvp else "finite_difference"
    if method == "supervised":
        return None
    if method == "vat":
        return robustreg.VAT(model, eps=args.eps_vat, method=fd)
    path = chart_path(args.out, "lgan" if method == "tnar-lgan" else "vae", args.chart_tag)
    if not path.exists():
        raise SystemExit(f"error: {method} needs the chart {path}: run --stage chart first")
    chart = load_chart(path)
    chart.requires_grad_(False)
    return robustreg.TNAR(
        model, chart, eps_tangent=args.eps_tangent, eps_normal=args.eps_normal, weights=WEIGHTS[method],
        tangent="manifold", normalize=args.normalize, normal=args.normal, normal_start=args.normal_start, method=fd,
    )  # fmt: skip


def run_name(method: str, args: argparse.Namespace) -> str:
    return f"{method}@{args.tag}" if args.tag else method


@torch.no_grad()
def error(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Error in %, in eval mode (the model's mode restored)."""
    with robustreg.inner_mode(model, "eval"):
        wrong = sum(int((model(x[i : i + 1000]).argmax(1) != y[i : i + 1000]).sum()) for i in range(0, len(x), 1000))
    return 100.0 * wrong / len(x)


def grad_norm(term: Tensor, params: list[nn.Parameter]) -> float:
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.detach() ** 2).sum() for g in grads if g is not None)))


def terms_log(it: int, model: nn.Module, terms: dict[str, Tensor], reg: Any) -> dict[str, float]:
    """The terms' values, the regulariser's KLs, its perturbations' sizes and each term's gradient
    norm in the weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    row = {"iter": it} | {k: float(v.detach()) for k, v in terms.items()}
    if isinstance(reg, robustreg.TNAR):
        row["eps_tangent"] = reg.eps_tangent
    if reg is not None and reg.last is not None:
        row |= {f"kl_{k}": float(v) for k, v in reg.last.metrics.items()}
        for k, r in reg.last.perturbations.items():  # the sizes used: mean per-sample ℓ2 and max-abs
            flat = r.flatten(1)
            row |= {f"l2_{k}": float(flat.norm(dim=1).mean()), f"max_{k}": float(flat.abs().amax(1).mean())}
    row |= {f"grad_{k}": grad_norm(v, params) for k, v in terms.items() if v.requires_grad}
    return row


def tangent_radius(it: int, args: argparse.Namespace) -> float:
    """ε_t at iteration ``it`` (1-based): ``--eps-tangent`` until ``--tangent-decay-from`` of the
    iterations, then linearly down to ``--eps-tangent-final`` at the last (constant without it)."""
    start, final = args.eps_tangent, args.eps_tangent_final
    if final is None:
        return start
    begin = int(args.tangent_decay_from * args.iters)
    frac = min(1.0, max(0.0, (it - begin) / max(1, args.iters - begin)))
    return start + frac * (final - start)


def stage_train(method: str, seed: int, args: argparse.Namespace) -> dict:
    x, y, xt, yt = load(args)
    (x, y), (xv, yv) = split(x, y, args)
    labeled, _ = label_split(y, args.per_class, seed=seed)
    torch.manual_seed(seed)
    model = SmallCNN(drop=args.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    decay_from = int(args.decay_from * args.iters)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 1.0 if i < decay_from else max(0.0, (args.iters - i) / max(1, args.iters - decay_from))
    )
    reg = make_reg(method, model, args)
    entmin = robustreg.EntMin(model) if reg is not None and args.entropy else None
    stream = cycle_batches(
        (x[labeled], y[labeled]), x, batch_labeled=args.batch_labeled, batch_unlabeled=args.batch_unlabeled, seed=seed
    )
    name, out = run_name(method, args), args.out / f"seed{seed}"
    curve, log, train_seconds, result = [], [], 0.0, {}
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {"seed": seed}
    if reg is not None and hasattr(reg, "chart"):  # the chart's own settings (--latent etc. only shape a new one)
        config["chart_config"] = reg.chart.config
    model.train()
    with progress_bar() as bar:
        task = bar.add_task(f"{name}, seed {seed} ({args.iters} iterations)", total=args.iters)
        for it, (x_l, y_l, x_u) in enumerate(itertools.islice(stream, args.iters), start=1):
            start = time.perf_counter()
            terms = {"ce": F.cross_entropy(model(x_l), y_l)}
            if reg is not None:
                if isinstance(reg, robustreg.TNAR):
                    reg.eps_tangent = tangent_radius(it, args)
                logits_u = model(x_u)
                terms["reg"] = reg(x_u, logits=logits_u)
                if entmin is not None:
                    terms["entropy"] = entmin(logits=logits_u)
            loss = terms["ce"] + terms.get("reg", 0.0) + args.entropy * terms.get("entropy", 0.0)
            if not bool(torch.isfinite(loss)):
                raise SystemExit(f"error: {name}, seed {seed}: non-finite loss at iteration {it}; nothing more written")
            train_seconds += time.perf_counter() - start
            if it % args.log_every == 0 or it == 1:
                log.append(terms_log(it, model, terms, reg))  # before the step, untimed
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            train_seconds += time.perf_counter() - start
            bar.advance(task)
            if it % args.eval_every == 0 or it == args.iters:
                curve.append({"iter": it, "train_seconds": train_seconds, "val_error": error(model, xv, yv),
                              "test_error": error(model, xt, yt)})  # fmt: skip
                result = {"method": method, "run": name, "seed": seed, "partial": it < args.iters, "iters_done": it}
                result |= selection(curve) | {"train_seconds": train_seconds, "seconds_per_iter": train_seconds / it}
                result |= {"curve": curve, "log": log, "labeled_indices": labeled.tolist(), "config": config}
                out.mkdir(parents=True, exist_ok=True)
                if it == args.iters:  # the classifier first: a finished JSON always has its weights
                    tmp = out / f"{name}.classifier.pt.tmp"  # written whole, then renamed: a kill leaves no torn file
                    torch.save(model.state_dict(), tmp)
                    os.replace(tmp, out / f"{name}.classifier.pt")
                write_json(out / f"{name}.json", result)
    return result


def selection(curve: list[dict]) -> dict:
    """The evaluation with the lowest validation error (the first such), and the final one."""
    best = min(curve, key=lambda p: p["val_error"])
    last = curve[-1]
    return {
        "selected_iter": best["iter"], "test_error": best["test_error"], "val_error": best["val_error"],
        "final_test_error": last["test_error"], "final_val_error": last["val_error"],
    }  # fmt: skip


def late_rise(curve: list[dict]) -> float:
    """The mean validation error of the evaluations in the last third of the iterations, minus the
    lowest validation error of the run: how far the run drifts up from its best point (0: it ends
    at its best)."""
    end = curve[-1]["iter"]
    last = [p["val_error"] for p in curve if p["iter"] > 2 * end / 3]
    return statistics.fmean(last) - min(p["val_error"] for p in curve)


def mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "values": values}  # fmt: skip


def stage_summary(args: argparse.Namespace) -> dict:
    runs: dict[str, dict[int, dict]] = {}
    unfinished = {}
    for path in sorted(args.out.glob("seed*/*.json")):
        r = json.loads(path.read_text())
        if "run" not in r:
            continue
        if r.get("partial"):
            unfinished[f"{r['run']}, seed {r['seed']}"] = r["iters_done"]
            continue
        runs.setdefault(r["run"], {})[r["seed"]] = r
    table = {}
    for name, by_seed in sorted(runs.items()):
        seeds = sorted(by_seed)
        row = {"seeds": seeds}
        for key in ("test_error", "final_test_error", "val_error", "seconds_per_iter"):
            row[key] = mean_sd([by_seed[s][key] for s in seeds])
        row["late_rise"] = mean_sd([late_rise(by_seed[s]["curve"]) for s in seeds])
        vat = baseline(name, runs)
        paired = [s for s in seeds if s in runs.get(vat, {})]
        if name != vat and paired:
            row["minus_vat"] = mean_sd([by_seed[s]["test_error"] - runs[vat][s]["test_error"] for s in paired])
            row["vat_run"] = vat
        table[name] = row
    summary = {"paper_test_error": PAPER, "runs": table, "unfinished": unfinished}
    write_json(args.out / "summary.json", summary)
    for name, row in table.items():
        sd = row["test_error"]["sd"]
        text = f"{name:24s} test error {row['test_error']['mean']:6.2f}" + (f" ± {sd:.2f}" if sd is not None else "")
        text += f"% (final {row['final_test_error']['mean']:.2f}%, late rise {row['late_rise']['mean']:.1f}"
        text += f", seeds {row['seeds']})"
        if "minus_vat" in row:
            text += f", − {row['vat_run']} {row['minus_vat']['mean']:+.2f}"
        print(text)
    for what, count in unfinished.items():
        print(f"unfinished (not in the table): {what} at iteration {count}")
    main = {name: by_seed for name, by_seed in runs.items() if "@" not in name}
    if main:
        plot_curves(main, args.out / "curves.png")
    settings = setting_tags(runs)
    for tag in sorted(settings):
        plot_curves({n: r for n, r in runs.items() if n.endswith(f"@{tag}")}, args.out / f"curves-{tag}.png")
    variants = {n: r for n, r in runs.items() if n in ("vat", "tnar") or n.partition("@")[2] not in {"", *settings}}
    if len(variants) > 2:  # the tagged variants, beside VAT and TNAR (a panel per seed where they differ)
        plot_curves(variants, args.out / "curves-variants.png", keys=("val_error",))
    for method in ("tnar", "tnar-lgan"):
        seeds = sorted(runs.get(method, {}))
        if seeds:
            plot_perturbations(args, method, runs[method][seeds[0]])
    return summary


def setting_tags(runs: dict[str, dict[int, dict]]) -> set[str]:
    """The tags run for VAT and for another method too: a setting changed for every method (e.g.
    the labels or the entropy term), not a variant of one method (``vat@eps1``)."""
    tags = {n.partition("@")[2] for n in runs if n.startswith("vat@")}
    return {t for t in tags if any(n.endswith(f"@{t}") and not n.startswith("vat@") for n in runs)}


def baseline(name: str, runs: dict[str, dict[int, dict]]) -> str:
    """The VAT run that ``name`` is compared with: ``vat@<tag>`` for a run ``<method>@<tag>`` of a
    setting (:func:`setting_tags`), else the untagged ``vat``."""
    tag = name.partition("@")[2]
    return f"vat@{tag}" if tag in setting_tags(runs) else "vat"


def plot_curves(
    runs: dict[str, dict[int, dict]], path: Path, seeds: list[int] | None = None, keys=("test_error", "val_error")
) -> list[str]:
    """Test (solid) and validation (dashed) error against iterations, per run: the mean over its
    seeds (over ``seeds`` if given) when every run has the same ones; otherwise (a run of a
    setting made for one seed only) one panel per seed, with the runs that have it, so that means
    over different seeds are never drawn side by side. Returns the panels' titles (none, and no
    figure, when no run has a curve of ``seeds``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {n: {s: r for s, r in by_seed.items() if seeds is None or s in seeds} for n, by_seed in runs.items()}
    runs = {n: by_seed for n, by_seed in sorted(runs.items()) if by_seed}
    if not runs:  # nothing of those seeds: no figure
        return []
    cmap = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")  # a colour per run up to 20
    colors = {name: cmap(i % cmap.N) for i, name in enumerate(runs)}
    labels = sorted({10 * r["config"]["per_class"] for by_seed in runs.values() for r in by_seed.values()})
    head = f"FashionMNIST, {' or '.join(map(str, labels))} labels"
    seed_sets = {tuple(sorted(by_seed)) for by_seed in runs.values()}
    if len(seed_sets) == 1:
        (shared,) = seed_sets
        what = f"seed {shared[0]}" if len(shared) == 1 else f"mean over seeds {', '.join(map(str, shared))}"
        panels = [(f"{head}: {what}", runs)]
    else:
        every = sorted({s for by_seed in runs.values() for s in by_seed})
        panels = [(f"{head}: seed {s}", {n: {s: r[s]} for n, r in runs.items() if s in r}) for s in every]
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5), squeeze=False, sharey=True)
    for ax, (title, shown) in zip(axes[0], panels, strict=True):
        for name, by_seed in shown.items():
            curves = [r["curve"] for r in by_seed.values()]
            iters = [p["iter"] for p in curves[0]]
            for key, style in (("test_error", "-"), ("val_error", "--")):
                if key not in keys:
                    continue
                mean = [statistics.fmean(c[j][key] for c in curves) for j in range(len(iters))]
                label = f"{name} ({'test' if key == 'test_error' else 'validation'})"
                ax.plot(iters, mean, style, color=colors[name], label=label)
        ax.set(xlabel="iteration", ylabel="error (%)", title=title)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [title for title, _ in panels]


#: the options of a run that its regulariser is built from (the perturbation images use the run's)
REG_OPTIONS = (
    "eps_vat", "eps_tangent", "eps_normal", "normalize", "normal", "normal_start", "hvp", "dropout", "chart_tag",
)  # fmt: skip


def plot_perturbations(args: argparse.Namespace, method: str, run: dict, n: int = 6) -> None:
    """``perturbations[-lgan].png``: rows of test images x, x + r_tangent (on the manifold),
    x + r_normal, and the two perturbations (each scaled to its own range), from the classifier of
    ``run`` (``method``'s finished run of one seed) with its chart and its options."""
    seed = run["seed"]
    weights = args.out / f"seed{seed}" / f"{method}.classifier.pt"
    if not weights.exists():  # the classifiers are not kept with the results (.gitignore): a copy has only the JSONs
        print(f"{method}: no {weights}, its perturbations are not drawn (train seed {seed} again to draw them)")
        return
    args = argparse.Namespace(**(vars(args) | {k: run["config"][k] for k in REG_OPTIONS if k in run["config"]}))
    _, _, xt, _ = load(args)
    model = SmallCNN(drop=args.dropout)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    reg = make_reg(method, model, args)
    torch.manual_seed(seed)
    x = xt[:n]
    reg(x)
    chart = "LGAN" if method == "tnar-lgan" else "VAE"
    perturbation_grid(
        x, reg.last.r_tangent, reg.last.r_normal,
        args.out / ("perturbations-lgan.png" if method == "tnar-lgan" else "perturbations.png"),
        f"TNAR-{chart} perturbations (ε_t = {args.eps_tangent}, ε_n = {args.eps_normal}, {args.normalize})",
    )  # fmt: skip


def add_data_dir(p: argparse.ArgumentParser) -> None:
    """``--data-dir``: where FashionMNIST is (shared with ``tangent_flips.py``)."""
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("ROBUSTREG_DATA", ROOT.parent / "shared" / "data")),
        help="holds FashionMNIST/raw/*.gz ($ROBUSTREG_DATA, else ../shared/data)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument(
        "--stage", choices=("chart", "train", "summary"), required=True,
        help="chart: train the charts; train: train --methods for every --seeds; summary: the table and plots",
    )  # fmt: skip
    p.add_argument("--methods", default="supervised", help=f"comma list of {','.join(METHODS)}")
    p.add_argument("--seeds", default="0,1,2", help="comma list: each seeds the labels and the classifier")
    p.add_argument("--tag", default="", help="names a variant: its files are <method>@<tag> (empty: <method>)")
    p.add_argument("--iters", type=int, default=3000, help="training iterations per method")
    p.add_argument("--eval-every", type=int, default=250, help="iterations between validation and test evaluations")
    p.add_argument("--log-every", type=int, default=50, help="iterations between records of the terms")
    p.add_argument("--val-size", type=int, default=1000, help="last training images held out for validation")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--decay-from", type=float, default=2 / 3, help="fraction of --iters; the lr decays after it")
    p.add_argument("--per-class", type=int, default=10, help="labeled images per class")
    p.add_argument("--batch-labeled", type=int, default=32, help="labeled batch")
    p.add_argument("--batch-unlabeled", type=int, default=64, help="unlabeled batch")
    p.add_argument("--dropout", type=float, default=0.0, help="SmallCNN's dropout (the official Conv-Large: 0.5)")
    p.add_argument("--entropy", type=float, default=1.0, help="weight of the entropy term (0: none)")
    p.add_argument("--eps-vat", type=float, default=2.0, help="VAT's ε (ℓ2)")
    p.add_argument("--eps-tangent", type=float, default=0.25, help="TNAR's ε_t (units: --normalize)")
    p.add_argument(
        "--eps-tangent-final", type=float, default=None,
        help="ε_t at the last iteration, reached linearly from --tangent-decay-from (default: ε_t constant)",
    )  # fmt: skip
    p.add_argument("--tangent-decay-from", type=float, default=1 / 3, help="fraction of --iters; ε_t shrinks after it")
    p.add_argument("--eps-normal", type=float, default=1.0, help="TNAR's ε_n (units: --normalize)")
    p.add_argument(
        "--normalize", choices=("official", "l2"), default="official",
        help="official: ε_t the largest entry of the latent step, ε_n of the normal perturbation; l2: ℓ2 norms",
    )  # fmt: skip
    p.add_argument("--normal", choices=("projection", "penalty", "official"), default="projection", help="NAR's step")
    p.add_argument("--normal-start", choices=("random", "residual"), default="random", help="NAR's start")
    p.add_argument("--hvp", action="store_true", help="exact Hessian products (VAT and TNAR) instead of ξ = 1e-6")
    p.add_argument("--latent", type=int, default=20, help="VAE latent dimension")
    p.add_argument("--width", type=int, default=16, help="VAE channels of the first convolution")
    p.add_argument("--vae-kl-weight", type=float, default=0.5, help="weight of the VAE's KL term (official: 0.5)")
    p.add_argument("--chart-epochs", type=int, default=20, help="VAE training epochs")
    p.add_argument("--charts", default="vae,lgan", help="charts to train in --stage chart: vae, lgan")
    p.add_argument("--lgan-epochs", type=int, default=3, help="Localized-GAN training epochs")
    p.add_argument("--lgan-latent", type=int, default=10, help="Localized-GAN latent dimension")
    p.add_argument("--chart-seed", type=int, default=0, help="seeds the charts' training")
    p.add_argument("--chart-tag", default="", help="names a second chart, charts/<kind>@<tag> (empty: charts/<kind>)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--synthetic", action="store_true", help="random tensors instead of FashionMNIST")
    add_data_dir(p)
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"--methods: unknown {sorted(unknown)}")
    args.methods = methods
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        p.error(f"--seeds must be a comma list of integers, got {args.seeds!r}")
    if not args.seeds:
        p.error("--seeds: give at least one")
    args.charts = [c for c in args.charts.split(",") if c]
    if set(args.charts) - {"vae", "lgan"}:
        p.error(f"--charts: unknown {sorted(set(args.charts) - {'vae', 'lgan'})}")
    if not 0 <= args.decay_from <= 1:
        p.error(f"--decay-from must be in [0, 1], got {args.decay_from}")
    if not 0 <= args.tangent_decay_from <= 1:
        p.error(f"--tangent-decay-from must be in [0, 1], got {args.tangent_decay_from}")
    if args.eps_tangent_final is not None and not 0 < args.eps_tangent_final < math.inf:
        p.error(f"--eps-tangent-final must be a finite number > 0, got {args.eps_tangent_final}")
    for name in ("iters", "eval_every", "log_every", "val_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.entropy < 0 or not 0 <= args.dropout < 1:
        p.error("--entropy must be >= 0 and --dropout in [0, 1)")
    check_tags(p, args, ("tag", "chart_tag"))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stage == "chart":
        stage_chart(args)
    elif args.stage == "train":
        for seed in args.seeds:
            for method in args.methods:
                stage_train(method, seed, args)
    else:
        stage_summary(args)


if __name__ == "__main__":
    main()
