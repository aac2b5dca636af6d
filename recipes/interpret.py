"""Do adversarially trained CNNs rely on shape more than texture? The study of Zhang and Zhu,
"Interpreting Adversarially Trained Convolutional Neural Networks" (ICML 2019), at the scale of
this machine: one family of models on the same data, then the same probes on each.

The family (each a SmallCNN by default, trained with Adam for ``--epochs`` on the first
``--train-size`` training images; adversarial ones with robustreg's engines):

- ``normal``: cross-entropy;
- ``pgd-linf-<ε>`` for each ``--eps-linf``, ``pgd-l2-<ε>`` for each ``--eps-l2``: PGD-AT
  (:class:`robustreg.PGDAT`, ``--attack-steps`` steps of 2.5ε/k from a random start);
- ``fgsm-<ε>`` for each ``--eps-fgsm``: FGSM-AT (one step of ε from the clean image, Goodfellow
  et al.; PGDAT with steps=1, α=ε, no random start);
- ``underfit``: normal training stopped at the first check (every ``--underfit-every`` steps) whose
  accuracy on a held-out validation split (``--val-size`` training images after the training
  ones) reaches ``--underfit-target`` (0: the lowest validation accuracy of the adversarially
  trained models, so that it generalises as they do, the paper's control). Trained last.

The probes (test images; the same draws for every model):

- clean accuracy; robust accuracy under AutoAttack (``--autoattack``, the authors' pyautoattack:
  ``apgd`` = APGD-CE + APGD-T, or ``standard``) at every ``--eval-linf`` and ``--eval-l2`` radius
  on the first ``--robust-size`` images (the paper's Table 1);
- accuracy on correctly classified images (:func:`robustreg.interpret.accuracy_on_correct`) under
  saturation at every ``--saturation`` level (Fig. 5) and patch-shuffle at every ``--shuffle``
  k (Fig. 7), on the first ``--eval-size`` images; ``--style-transform module:callable`` adds a
  transform of your own (a stylisation network: it is imported and called on each batch);
- SmoothGrad saliency (n = ``--saliency-samples``, σ = ``--saliency-noise`` of each image's range)
  of the first ``--saliency-size`` images for their true class: mean Gini coefficient (sparsity)
  and mean fraction of the map's mass on the image's Sobel edges (the top 20% of pixels), on clean
  and on saturated-1024 inputs.

    python recipes/interpret.py --dataset fashionmnist --data-dir ../shared/data
    python recipes/interpret.py --dataset mnist --data-dir ../shared/data
    python recipes/interpret.py --dataset cifar10 --synthetic --epochs 1 --train-size 256  # smoke test

Each model is a run of the recipes' skeleton under ``<out>/<model>/`` (``metrics.jsonl``,
``curves.png``, ``summary.json``, ``model/``, ``checkpoints/``, ``--resume``); ``--out`` (default
``runs/interpret_<dataset>``) gets ``results.json`` (rewritten after every model: a stopped run
keeps what it measured), ``saliency_clean.png`` and ``saliency_saturated.png`` (Fig. 2),
``saturation.png`` (Fig. 5), ``shuffle.png`` (Fig. 7), ``transforms.png`` (Figs. 1, 4, 6) and
``results.md`` (the tables).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import skeleton
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robustreg
from robustreg import interpret
from robustreg.checkpoint import ARCHITECTURES, atomic_write_text
from robustreg.data import VISION

FAMILIES = ("normal", "underfit", "pgd-linf", "pgd-l2", "fgsm")
opt = skeleton.opt
#: per data set: the radii of the family and of the evaluation (None in --help: these)
DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": dict(eps_linf=[0.1, 0.2, 0.3], eps_l2=[1.0, 2.0], eps_fgsm=[0.1, 0.3], eval_linf=[0.3], eval_l2=[2.0]),
    "fashionmnist": dict(eps_linf=[0.05, 0.1, 0.2], eps_l2=[0.5, 1.5], eps_fgsm=[0.05, 0.1], eval_linf=[0.1],
                         eval_l2=[1.5]),
    "cifar10": dict(eps_linf=[2 / 255, 4 / 255, 8 / 255], eps_l2=[0.25, 0.5], eps_fgsm=[2 / 255, 8 / 255],
                    eval_linf=[8 / 255], eval_l2=[0.5]),
}  # fmt: skip
DEFAULTS["svhn"] = DEFAULTS["cifar10"]
RADII = ("eps_linf", "eps_l2", "eps_fgsm", "eval_linf", "eval_l2")
RADIUS_OPTION = {"pgd-linf": "eps_linf", "pgd-l2": "eps_l2", "fgsm": "eps_fgsm"}  # family -> its radii


@dataclass
class InterpretConfig(skeleton.RunConfig):
    out: str = opt("", "output directory (empty: runs/interpret_<dataset>; each model in a folder of its own)")
    dataset: str = opt("fashionmnist", "data set", choices=tuple(VISION))
    models: str = opt(",".join(FAMILIES), f"comma-separated families, each trained in turn: {', '.join(FAMILIES)}")
    arch: str = opt("smallcnn", f"network: {', '.join(ARCHITECTURES)}")
    eps_linf: list[float] | None = opt(None, "radii of the PGD-ℓ∞ models")  # noqa: RUF009
    eps_l2: list[float] | None = opt(None, "radii of the PGD-ℓ2 models")  # noqa: RUF009
    eps_fgsm: list[float] | None = opt(None, "radii of the FGSM models (ℓ∞)")  # noqa: RUF009
    attack_steps: int = opt(10, "PGD steps inside training (α = 2.5ε/k)")
    epochs: int = opt(2, "training epochs of every model (underfit: at most)")
    train_size: int = opt(10000, "first N training images (0: all but the validation split)")
    val_size: int = opt(2000, "training images after those, held out for underfit's stopping rule")
    batch_size: int = opt(128, "batch size")
    lr: float = opt(1e-3, "Adam learning rate")
    underfit_target: float = opt(0.0, "underfit stops at this validation accuracy (0: the AT models' lowest)")
    underfit_every: int = opt(5, "steps between underfit's validation checks")
    eval_size: int = opt(1000, "first N test images of the transforms' accuracy on correct")
    robust_size: int = opt(200, "first N test images of the robust accuracy")
    eval_linf: list[float] | None = opt(None, "ℓ∞ radii of the robust accuracy")  # noqa: RUF009
    eval_l2: list[float] | None = opt(None, "ℓ2 radii of the robust accuracy")  # noqa: RUF009
    autoattack: str = opt(
        "apgd", "AutoAttack version of the robust accuracy (apgd: APGD-CE + APGD-T; standard adds FAB-T and Square: "
        "the figure to publish)", choices=("apgd", "standard"),
    )  # fmt: skip
    saturation: list[float] = opt(  # noqa: RUF009
        [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0], "saturation levels p (2: identity)"
    )
    shuffle: list[int] = opt([1, 2, 4, 8], "patch-shuffle k (k×k patches; 1: identity)")  # noqa: RUF009
    style_transform: str = opt("", "module:callable, a transform x -> x' of your own (e.g. stylisation)")
    saliency_size: int = opt(200, "first N test images of the saliency measures")
    saliency_samples: int = opt(100, "SmoothGrad's noisy copies n")
    saliency_noise: float = opt(0.1, "SmoothGrad's σ / (x_max − x_min)")
    show: int = opt(6, "test images in the saliency and transform figures")


def models_of(cfg: InterpretConfig) -> dict[str, dict[str, Any] | None]:
    """The family expanded by radius, in training order (underfit last: its target is theirs):
    ``name -> threat model`` (``{"norm": …, "eps": …}`` for the adversarially trained, None else)."""
    families = cfg.models.split(",")
    out: dict[str, dict[str, Any] | None] = {}
    for family in families:
        if family in RADIUS_OPTION:
            norm = "l2" if family == "pgd-l2" else "linf"
            for eps in getattr(cfg, RADIUS_OPTION[family]):
                out[f"{family}-{eps:.4g}"] = {"norm": norm, "eps": eps}
        elif family == "normal":
            out[family] = None
    return out | ({"underfit": None} if "underfit" in families else {})


def adversarial(name: str) -> bool:
    """Whether model ``name`` is one of the adversarially trained (by its name)."""
    return name.startswith(("pgd-", "fgsm-"))


def resolve(cfg: InterpretConfig) -> InterpretConfig:
    """Fill the radii from :data:`DEFAULTS` and check what the option types do not (before any training)."""
    cfg = dataclasses.replace(
        cfg, **{k: DEFAULTS[cfg.dataset][k] for k in RADII if getattr(cfg, k) is None}
    )  # fmt: skip
    families = cfg.models.split(",")
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise SystemExit(f"error: --models: unknown {sorted(unknown)}; choose from {', '.join(FAMILIES)}")
    planned = sum(len(getattr(cfg, RADIUS_OPTION[f])) if f in RADIUS_OPTION else 1 for f in families)
    if len(models_of(cfg)) != planned:  # a family given twice, or two radii equal to 4 digits
        raise SystemExit(f"error: --models and the radii name a model twice: {cfg.models}, {', '.join(models_of(cfg))}")
    if cfg.arch not in ARCHITECTURES or cfg.arch == "mlp":
        raise SystemExit(f"error: --arch must be an image network: {', '.join(a for a in ARCHITECTURES if a != 'mlp')}")
    for name in ("epochs", "batch_size", "eval_size", "attack_steps", "underfit_every", "saliency_samples", "show"):
        if getattr(cfg, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if any(not (e > 0 and math.isfinite(e)) for k in RADII for e in getattr(cfg, k)):
        raise SystemExit("error: every radius (--eps-*, --eval-*) must be a finite number > 0")
    if not all(p > 0 for p in cfg.saturation) or not all(k >= 1 for k in cfg.shuffle):
        raise SystemExit("error: --saturation levels must be > 0 and --shuffle k >= 1")
    if not 0 <= cfg.underfit_target <= 1 or not cfg.saliency_noise >= 0:
        raise SystemExit("error: --underfit-target must be in [0, 1] and --saliency-noise >= 0")
    if "underfit" in families and cfg.val_size < 1:
        raise SystemExit("error: underfit stops on a validation split: --val-size >= 1")
    if cfg.mixed_precision != "no" or cfg.grad_accum != 1:
        raise SystemExit("error: this recipe compares full-precision models: --mixed-precision no, --grad-accum 1")
    if (cfg.eval_linf or cfg.eval_l2) and cfg.robust_size and not robustreg.autoattack.available():
        raise SystemExit(f"error: the robust accuracy runs AutoAttack (pyautoattack): {robustreg.autoattack.INSTALL}")
    style_transform(cfg)  # an unimportable --style-transform fails now, not after training
    return cfg


def style_transform(cfg: InterpretConfig) -> Callable[[Tensor], Tensor] | None:
    """``--style-transform module:callable``, imported (it is your code, and runs as such), or None."""
    if not cfg.style_transform:
        return None
    module, _, attr = cfg.style_transform.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise SystemExit(f"error: --style-transform {cfg.style_transform!r}: {err}") from None
    if not callable(fn):
        raise SystemExit(f"error: --style-transform {cfg.style_transform!r} is not callable")
    return fn


def make_loss(
    name: str, threat: dict[str, Any] | None, model: nn.Module, cfg: InterpretConfig
) -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss of model ``name``: cross-entropy, or an engine at its radius."""
    if threat is None:
        return lambda x, y: F.cross_entropy(model(x), y)
    bounds, eps = skeleton.PRESETS[cfg.dataset].bounds, threat["eps"]
    if name.startswith("fgsm-"):
        return robustreg.PGDAT(model, eps=eps, alpha=eps, steps=1, random_start=False, bounds=bounds)
    k = cfg.attack_steps
    return robustreg.PGDAT(model, eps=eps, alpha=2.5 * eps / k, steps=k, norm=threat["norm"], bounds=bounds)


def model_kwargs(cfg: InterpretConfig) -> dict[str, Any]:
    channels, size, _ = VISION[cfg.dataset][1]
    if cfg.arch == "smallcnn":
        return {"num_classes": 10, "in_channels": channels, "image_size": size}
    return {"num_classes": 10, "in_channels": channels}


def train(
    name: str,
    threat: dict[str, Any] | None,
    cfg: InterpretConfig,
    data: dict[str, tuple[Tensor, Tensor]],
    out: Path,
    target: float | None,
    test: tuple[Tensor, Tensor],
) -> tuple[nn.Module, dict[str, Any]]:
    """Train model ``name`` (a fresh network, the same seed for every model; adversarially against
    ``threat``) as a skeleton run under ``out/name``; ``target``: underfit's validation accuracy to
    stop at; then :func:`evaluate` it on ``test`` (a resumed run that trained nothing since its
    evaluation with the same options reuses that evaluation). Returns the bare model and the run's
    summary (with its validation accuracy and evaluation)."""
    run = skeleton.Run(dataclasses.replace(cfg, out=str(out / name), models=name), f"interpret_{cfg.dataset}_{name}")
    acc = run.accelerator
    torch.manual_seed(cfg.seed)
    kwargs = model_kwargs(cfg)
    model = ARCHITECTURES[cfg.arch](**kwargs)
    run.describe(cfg.arch, kwargs, threat_model=threat)
    model, opt_ = run.prepare(model, torch.optim.Adam(model.parameters(), lr=cfg.lr))
    loss_fn = make_loss(name, threat, model, cfg)
    run.resume()
    train_set, val = data["train"], tuple(t.to(acc.device) for t in data["val"])
    per_epoch = max(1, len(train_set[0]) // min(cfg.batch_size, len(train_set[0])))
    total = cfg.epochs * per_epoch
    stop = run.stop(total)
    stream = run.batches(list(train_set), cfg.batch_size, stop=stop)
    stopped_at = None
    check = (lambda: {"val_acc": skeleton.accuracy(acc.unwrap_model(model), val)}) if len(val[0]) else None
    model.train()
    with run.progress(stop, f"{name} on {cfg.dataset}"):
        for step in range(run.start, stop):
            # underfit: checked before the step, so that a run resumed at its stopping step stops again
            if target is not None and step > 0 and step % cfg.underfit_every == 0:
                with run.paused():
                    reached = skeleton.accuracy(acc.unwrap_model(model), val) >= target
                if reached:
                    stopped_at = step
                    if step != run.start:
                        run.checkpoint(step)
                    break
            x, y = next(stream)
            with run.step_guard(step, model) as guard:
                loss = loss_fn(x, y)
                opt_.zero_grad(set_to_none=True)
                acc.backward(loss)
                if guard.ok(loss, model.parameters()):  # a non-finite step is skipped, not applied
                    opt_.step()
            done = step + 1
            run.end_step(
                done, stop, done / per_epoch, evaluate_at_stop=False,
                metrics=lambda loss=loss: {"loss": loss.detach()},
                evaluate=check,
            )  # fmt: skip
    bare = acc.unwrap_model(model).eval()
    summary: dict[str, Any] = {
        "model": name,
        "dataset": cfg.dataset,
        "steps": stopped_at or stop,
        "planned_steps": total,
    }
    summary["val_acc"] = skeleton.accuracy(bare, val) if len(val[0]) else None
    if target is not None:
        summary |= {"underfit_target": target, "stopped_early": stopped_at is not None}
    summary["evaluation"] = {k: getattr(cfg, k) for k in EVALUATION_OPTIONS}
    if run.main:
        previous = run.previous_evaluation(summary["steps"], summary["evaluation"])  # not again on a resume
        keys = evaluation_keys(cfg)  # a summary missing one (edited by hand) is evaluated again
        reuse = previous is not None and all(k in previous for k in keys)
        summary |= {k: previous[k] for k in keys} if reuse else evaluate(bare, cfg, test)
    return bare, run.finish(model, summary=summary, title=f"{name}, {cfg.dataset}")


#: the options an evaluation depends on (:meth:`skeleton.Run.previous_evaluation` compares them)
EVALUATION_OPTIONS = (
    "dataset", "seed", "synthetic", "eval_size", "robust_size", "eval_linf", "eval_l2", "autoattack", "saturation",
    "shuffle", "style_transform", "saliency_size", "saliency_samples", "saliency_noise",
)  # fmt: skip


def evaluation_keys(cfg: InterpretConfig) -> list[str]:
    """The summary keys :func:`evaluate` writes."""
    radii = [f"{norm}={eps:g}" for norm, r in (("linf", cfg.eval_linf), ("l2", cfg.eval_l2)) for eps in r]
    radii = radii if cfg.robust_size else []
    return ["clean", "eval_n", "robust_n", *radii, "on_correct", "on_correct_n", "saliency"]


def probes(cfg: InterpretConfig) -> dict[str, Callable[[Tensor], Tensor]]:
    """The transforms of the accuracy on correct, seeded afresh (the same draws for every model)."""
    bounds = skeleton.PRESETS[cfg.dataset].bounds
    gen = torch.Generator().manual_seed(cfg.seed)
    out: dict[str, Callable[[Tensor], Tensor]] = {
        f"saturate-{p:g}": interpret.Saturate(p, bounds=bounds) for p in cfg.saturation
    }
    out |= {f"shuffle-{k}": interpret.PatchShuffle(k, generator=gen) for k in cfg.shuffle}
    style = style_transform(cfg)
    if style is not None:
        out["style"] = style
    return out


def evaluate(model: nn.Module, cfg: InterpretConfig, test: tuple[Tensor, Tensor]) -> dict[str, Any]:
    """Clean accuracy and accuracy on correct under every transform (first ``--eval-size`` test
    images), robust accuracy (first ``--robust-size``), saliency measures (first ``--saliency-size``)."""
    bounds = skeleton.PRESETS[cfg.dataset].bounds
    eval_set = (test[0][: cfg.eval_size], test[1][: cfg.eval_size])
    out: dict[str, Any] = {"clean": skeleton.accuracy(model, eval_set), "eval_n": len(eval_set[0])}
    robust = (test[0][: cfg.robust_size], test[1][: cfg.robust_size])
    out["robust_n"] = len(robust[0])
    for norm, radii in (("linf", cfg.eval_linf), ("l2", cfg.eval_l2)):
        for eps in radii if cfg.robust_size else []:
            aa = robustreg.AutoAttack(eps=eps, norm=norm, version=cfg.autoattack, bounds=bounds, seed=cfg.seed)
            with contextlib.ExitStack() as stack:
                bar = f"AutoAttack {cfg.autoattack}, {norm} ε = {eps:g}"
                hook = stack.enter_context(skeleton.evaluation_bar(bar)) if cfg.progress else None
                res = robustreg.robust_accuracy(model, robust, attack={"aa": aa}, batch_size=250, progress=hook)
            out[f"{norm}={eps:g}"] = res.robust
    with contextlib.ExitStack() as stack:
        hook = stack.enter_context(skeleton.evaluation_bar("transforms")) if cfg.progress else None
        on = interpret.accuracy_on_correct(model, eval_set, probes(cfg), batch_size=500, progress=hook)
    out["on_correct"] = on.per_transform
    out["on_correct_n"] = on.correct
    out["saliency"] = saliency_measures(model, cfg, test)
    return out


def saliency(model: nn.Module, cfg: InterpretConfig, x: Tensor, y: Tensor) -> Tensor:
    gen = torch.Generator(device=x.device).manual_seed(cfg.seed)
    return interpret.smooth_grad(
        model, x, y, samples=cfg.saliency_samples, noise=cfg.saliency_noise, batch_size=1000, generator=gen
    )


def saliency_measures(model: nn.Module, cfg: InterpretConfig, test: tuple[Tensor, Tensor]) -> dict[str, Any]:
    """Mean Gini and edge mass of SmoothGrad maps on clean and saturated-1024 images."""
    x, y = test[0][: cfg.saliency_size], test[1][: cfg.saliency_size]
    out: dict[str, Any] = {"n": len(x)}
    if not len(x):
        return out
    bounds = skeleton.PRESETS[cfg.dataset].bounds
    for label, images in (("clean", x), ("saturated", interpret.saturate(x, 1024, bounds=bounds))):
        maps = torch.cat([saliency(model, cfg, images[i : i + 50], y[i : i + 50]) for i in range(0, len(x), 50)])
        g, e = interpret.gini(maps), interpret.edge_mass(maps, images, top=0.2)
        out[label] = {"gini": float(g.nanmean()), "edge_mass": float(e.nanmean()), "empty": int(g.isnan().sum())}
    return out


def underfit_target(cfg: InterpretConfig, results: dict[str, Any], out: Path) -> float:
    """``--underfit-target``, or the lowest validation accuracy of the adversarially trained models
    (of this invocation, else of their ``summary.json`` under ``--out``)."""
    if cfg.underfit_target:
        return cfg.underfit_target
    accs = {n: r["val_acc"] for n, r in results.items() if adversarial(n)}
    if not accs:
        for path in sorted(out.glob("*/summary.json")):
            summary = json.loads(path.read_text())
            if adversarial(summary.get("model", "")) and summary.get("val_acc") is not None:
                accs[summary["model"]] = summary["val_acc"]
    if not accs:
        raise SystemExit("error: underfit matches the AT models' validation accuracy: train some, or --underfit-target")
    return min(accs.values())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = resolve(skeleton.parse(InterpretConfig, argv, __doc__, by_dataset=DEFAULTS))
    out = Path(cfg.out or f"runs/interpret_{cfg.dataset}")
    n_train = cfg.train_size or (512 if cfg.synthetic else 0)
    train_all, test = skeleton.load_images(
        cfg, cfg.dataset, n_train=n_train + cfg.val_size if n_train else 0,
        n_test=max(cfg.eval_size, cfg.robust_size, cfg.saliency_size, cfg.show),
    )  # fmt: skip
    data = dict(zip(("train", "val"), skeleton.hold_out(train_all, cfg.val_size, n_train=n_train), strict=True))
    results: dict[str, Any] = {"config": skeleton.jsonable(dataclasses.asdict(cfg)), "torch": torch.__version__}
    results["models"], models = {}, {}
    for name, threat in models_of(cfg).items():
        target = underfit_target(cfg, results["models"], out) if name == "underfit" else None
        models[name], summary = train(name, threat, cfg, data, out, target, test)
        results["models"][name] = {"train_seconds": summary["wall_seconds"], **summary}
        results["complete"] = False  # written after every model: a stopped run keeps what it measured
        if skeleton.is_main():
            atomic_write_text(out / "results.json", json.dumps(skeleton.jsonable(results), indent=2))
    results["complete"] = True
    if skeleton.is_main():
        results["plots"] = figures(models, cfg, test, results["models"], out)
        atomic_write_text(out / "results.json", json.dumps(skeleton.jsonable(results), indent=2))
        report(results, out)
    return results


def figures(
    models: dict[str, nn.Module], cfg: InterpretConfig, test: tuple[Tensor, Tensor], res: dict[str, Any], out: Path
) -> dict[str, str]:
    """The paper's figures from the trained models and their results."""
    bounds = skeleton.PRESETS[cfg.dataset].bounds
    x, y = test[0][: cfg.show], test[1][: cfg.show]
    saturated = interpret.saturate(x, 1024, bounds=bounds)
    paths = {}
    for label, images in (("clean", x), ("saturated", saturated)):
        maps = {name: saliency(m, cfg, images, y) for name, m in models.items()}
        title = f"SmoothGrad saliency, {cfg.dataset}, {'clean' if label == 'clean' else 'saturated (p = 1024)'} inputs"
        paths[f"saliency_{label}"] = str(
            interpret.plot_saliency(images, maps, out / f"saliency_{label}.png", title=title)
        )
    rows = {name: t(x) for name, t in probes(cfg).items() if name not in ("saturate-2", "shuffle-1")}
    paths["transforms"] = str(interpret.plot_transforms(x, rows, out / "transforms.png", title=f"{cfg.dataset}"))
    for kind, levels, xlabel in (
        ("saturate", cfg.saturation, "saturation level p (2: the clean image)"),
        ("shuffle", cfg.shuffle, "patch-shuffle k (k×k patches; 1: the clean image)"),
    ):
        curves = {n: [r["on_correct"][f"{kind}-{p:g}"] for p in levels] for n, r in res.items() if "on_correct" in r}
        name = "saturation" if kind == "saturate" else "shuffle"
        paths[name] = str(
            interpret.plot_accuracy_on_correct(
                levels, curves, out / f"{name}.png", xlabel=xlabel, log_x=kind == "saturate",
                title=f"accuracy on correctly classified images, {cfg.dataset}",
            )
        )  # fmt: skip
    return paths


def _pct(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f} %"


def table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The paper's Table 1 with the probes' headline numbers, model by model: ``(columns, rows)``."""
    models = results["models"]
    radii = [k for k in next(iter(models.values())) if k.startswith(("linf=", "l2="))]
    columns = ["model", "clean", *radii, "saturate-1024", "shuffle-4", "Gini", "edge mass", "training time"]
    rows = []
    for name, r in models.items():
        on, sal = r.get("on_correct", {}), r.get("saliency", {}).get("clean", {})
        cells = [name, _pct(r.get("clean")), *(_pct(r.get(k)) for k in radii)]
        cells += [_pct(on.get("saturate-1024")), _pct(on.get("shuffle-4"))]
        cells += [f"{sal[k]:.3f}" if k in sal else "—" for k in ("gini", "edge_mass")]
        rows.append([*cells, f"{r['train_seconds']:.0f} s"])
    return columns, rows


def markdown(results: dict[str, Any]) -> str:
    """``results.md``: :func:`table` with the attack behind its robust accuracy, then accuracy on
    correct under every transform and the saliency measures on saturated inputs, as Markdown tables."""
    columns, rows = table(results)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    cfg, models = results["config"], results["models"]
    if any(c.startswith(("linf=", "l2=")) for c in columns):
        version, n = cfg["autoattack"], cfg["robust_size"]
        attacks = ", ".join(robustreg.autoattack.VERSIONS[version])  # the package's own list, in its order
        lines += ["", f"Robust accuracy: AutoAttack {version} ({attacks}) on the first {n} test images."]
    transforms = list(next(iter(models.values())).get("on_correct", {}))
    if transforms:
        lines += ["", "Accuracy on correctly classified images:", ""]
        lines += ["| model | " + " | ".join(transforms) + " |", "|" + " --- |" * (len(transforms) + 1)]
        for name, r in models.items():
            lines.append(f"| {name} | " + " | ".join(_pct(r["on_correct"].get(t)) for t in transforms) + " |")
    lines += ["", "SmoothGrad maps, mean over the saliency images (clean / saturated-1024 inputs):", ""]
    lines += ["| model | Gini | edge mass | Gini (saturated) | edge mass (saturated) |", "|" + " --- |" * 5]
    for name, r in models.items():
        sal = r.get("saliency", {})
        cells = [f"{sal[k][m]:.3f}" if k in sal else "—" for k in ("clean", "saturated") for m in ("gini", "edge_mass")]
        lines.append(f"| {name} | " + " | ".join([cells[0], cells[1], cells[2], cells[3]]) + " |")
    return "\n".join(lines) + "\n"


def report(results: dict[str, Any], out: Path) -> None:
    """Print :func:`table` and write ``results.md`` (:func:`markdown`)."""
    from rich.console import Console
    from rich.table import Table

    columns, rows = table(results)
    rich_table = Table(title=f"interpretation study ({out}); robust: AutoAttack {results['config']['autoattack']}")
    for col in columns:
        rich_table.add_column(col)
    for row in rows:
        rich_table.add_row(*row)
    atomic_write_text(out / "results.md", markdown(results))
    console = Console()
    console.print(rich_table)
    console.print(f"all results: {out / 'results.json'}, tables: {out / 'results.md'}")


if __name__ == "__main__":
    main()
