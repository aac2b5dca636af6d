"""Semi-supervised training: supervised-only, VAT, VAT+EntMin, TAR, NAR and TNAR on two rings,
FashionMNIST, MNIST, SVHN or CIFAR-10.

Each step takes a batch of labeled and a batch of unlabeled examples (one forward of both), and
minimises ``CE(labeled) + regulariser(unlabeled)`` with Adam, the learning rate decaying linearly
to 0 from ``--decay-start`` (a fraction of ``--steps``), as in the VAT paper. TAR / NAR / TNAR
need a manifold chart: the exact one for two rings (``--chart oracle``), or a VAE, autoencoder
or Localized GAN (``--chart vae|ae|lgan``) from ``--chart-path`` (made by ``recipes/chart.py``),
trained here first when none is given.

Defaults depend on the data set (``None`` in ``--help`` means "the data set's default"):

============  ======  =======  ==============  ========  ==========  =====  =======
data set      labels  steps    batches (l/u)   ε (VAT)   arch        chart  entropy
============  ======  =======  ==============  ========  ==========  =====  =======
two-rings     6       3000     6 / 128         0.3       mlp         oracle 0
fashionmnist  100     3000     32 / 64         2.0       smallcnn    vae    1
mnist         100     3000     32 / 64         2.0       smallcnn    vae    1
svhn          1000    48000    32 / 128        2.5       conv_large  vae    1
cifar10       4000    200000   32 / 128        2.0       conv_large  vae    1
============  ======  =======  ==============  ========  ==========  =====  =======

On images every regularised method carries the entropy term of its unlabelled predictions
(``--entropy``, weight 1: the TNAR paper's protocol, whose official loss is ``CE + KL_tangent +
KL_normal + entropy`` and whose VAT baseline very likely carries it too; ``vat-entmin`` takes ``--entmin``
instead). ``--val-size N`` holds out the last N training images: the periodic evaluation then
reports their accuracy (``val_acc``), so that ε and the step to report are chosen without the
test set; the final test accuracy is in ``summary.json``. TNAR's units and NAR's direction:
``--tnar-normalize``, ``--normal``, ``--normal-start``, ``--zeta`` (:class:`robustreg.TNAR`).

SVHN and CIFAR-10 follow the VAT paper (Conv-Large, 48k / 200k Adam steps, decay over the last
third / 8%); its CIFAR-10 ε = 10 applies to ZCA-whitened images, ours are in [0, 1], so our
ε = 2 there is the FashionMNIST value, untuned. TNAR on FashionMNIST takes the radii chosen on
the validation split of ``benchmarks/fashion_ssl.py`` (docs/benchmarks.md): the official code's
units (``--tnar-normalize official``), ε_t = 0.25 (latent), ε_n = 1 (largest pixel); elsewhere
ε_t = ε_n = ε (ℓ2) unless given, untuned. ``--drop`` is 0 by default; ``--drop 0.5`` is the
official TNAR code's dropout (every pass its own mask). In ``benchmarks/fashion_ssl.py``
(FashionMNIST, 100 labels, 3 seeds, 3000 steps) TNAR-VAE beat VAT by 2.5 points with it, and
trailed VAT by 1.4 without it, where VAT was 2.9 points better than with dropout
(docs/benchmarks.md).

    python recipes/semisupervised.py                       # two rings: supervised, VAT, TNAR; one plot
    python recipes/semisupervised.py --methods tar,nar,tnar --seed 1
    python recipes/semisupervised.py --dataset fashionmnist --methods vat,tnar --data-dir ../shared/data
    accelerate launch recipes/semisupervised.py --dataset cifar10 --chart-path runs/chart_cifar10_vae/model

Writes, per method, ``<out>/<method>/``: ``metrics.jsonl``, ``curves.png``, ``summary.json``,
``model/`` (safetensors + JSON), ``checkpoints/``; for two rings ``<out>/decision_regions.png``,
for images with TNAR ``<out>/<method>/perturbations.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chart as chart_recipe
import skeleton
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robustreg
from robustreg import plots
from robustreg.charts import RingsChart, load_chart
from robustreg.checkpoint import ARCHITECTURES, save_model
from robustreg.data import label_split, rings_ssl

log = logging.getLogger("robustreg.recipes")

DATASETS = ("two-rings", "fashionmnist", "mnist", "svhn", "cifar10")
METHODS = ("supervised", "vat", "vat-entmin", "tar", "nar", "tnar")
CHARTS = ("oracle", "vae", "ae", "lgan", "mlp-ae")
DEFAULTS: dict[str, dict[str, Any]] = {
    "two-rings": dict(labels=6, steps=3000, batch_labeled=6, batch_unlabeled=128, eps=0.3, eps_tangent=1.0,
                      eps_normal=0.05, arch="mlp", chart="oracle", decay_start=1.0, entropy=0.0),
    "fashionmnist": dict(labels=100, steps=3000, batch_labeled=32, batch_unlabeled=64, eps=2.0, arch="smallcnn",
                         chart="vae", decay_start=2 / 3, entropy=1.0, eps_tangent=0.25, eps_normal=1.0,
                         tnar_normalize="official"),
    "mnist": dict(labels=100, steps=3000, batch_labeled=32, batch_unlabeled=64, eps=2.0, arch="smallcnn",
                  chart="vae", decay_start=2 / 3, entropy=1.0),
    "svhn": dict(labels=1000, steps=48000, batch_labeled=32, batch_unlabeled=128, eps=2.5, arch="conv_large",
                 chart="vae", decay_start=2 / 3, entropy=1.0),
    "cifar10": dict(labels=4000, steps=200000, batch_labeled=32, batch_unlabeled=128, eps=2.0, arch="conv_large",
                    chart="vae", decay_start=0.92, entropy=1.0),
}  # fmt: skip
TNAR_WEIGHTS = {"tar": (1.0, 0.0), "nar": (0.0, 1.0), "tnar": (1.0, 1.0)}


@dataclass
class SSLConfig(skeleton.RunConfig):
    out: str = skeleton.opt("", "output directory (empty: runs/ssl_<dataset>; each method in a folder of its own)")
    dataset: str = skeleton.opt("two-rings", "data set", choices=DATASETS)
    methods: str = skeleton.opt("supervised,vat,tnar", f"comma-separated, each trained in turn: {', '.join(METHODS)}")
    labels: int | None = skeleton.opt(None, "labeled examples (equal per class)")
    steps: int | None = skeleton.opt(None, "training steps (the learning-rate schedule's length)")
    batch_labeled: int | None = skeleton.opt(None, "labeled batch (global)")
    batch_unlabeled: int | None = skeleton.opt(None, "unlabeled batch (global)")
    lr: float = skeleton.opt(1e-3, "Adam's learning rate (VAT paper: 1e-3)")
    decay_start: float | None = skeleton.opt(None, "fraction of --steps after which lr decays linearly to 0")
    arch: str | None = skeleton.opt(None, f"classifier: {', '.join(ARCHITECTURES)}")
    drop: float = skeleton.opt(0.0, "dropout of smallcnn / conv_large (0: deterministic passes inside VAT/TNAR)")
    eps: float | None = skeleton.opt(None, "VAT's ε (ℓ2; SVHN's and rings' from the VAT and TNAR papers)")
    xi: float = skeleton.opt(1e-6, "VAT's / TNAR's finite-difference ξ (VAT paper: 1e-6)")
    n_power: int = skeleton.opt(1, "power-iteration steps (VAT, TNAR papers: 1)")
    vat_method: str = skeleton.opt("finite_difference", "Hessian products", choices=("finite_difference", "hvp"))
    entmin: float = skeleton.opt(1.0, "weight of the entropy term of vat-entmin (VAT paper: 1)")
    entropy: float | None = skeleton.opt(
        None, "weight of the entropy term added to vat, tar, nar and tnar (the TNAR paper's protocol: 1)"
    )
    eps_tangent: float | None = skeleton.opt(None, "TNAR's ε_t", fallback="= --eps")
    eps_normal: float | None = skeleton.opt(None, "TNAR's ε_n", fallback="= --eps")
    cg_iters: int = skeleton.opt(4, "CG iterations for (JᵀJ)⁻¹ (TNAR)")
    tangent: str = skeleton.opt("manifold", "tangent perturbation", choices=("manifold", "linear"))
    tnar_normalize: str | None = skeleton.opt(
        None, "units of ε_t, ε_n: l2 norms (the paper) or official (ε_t the latent step's largest entry, ε_n the "
        "normal perturbation's)", choices=("l2", "official"), fallback="l2",
    )  # fmt: skip
    normal: str = skeleton.opt(
        "projection", "NAR's direction (robustreg.TNAR)", choices=("projection", "penalty", "official")
    )
    normal_start: str = skeleton.opt("random", "start of NAR's projected iteration", choices=("random", "residual"))
    zeta: float | None = skeleton.opt(None, "ζ of --normal penalty / official (none: 1 / 1e-3)")
    val_size: int = skeleton.opt(
        0, "last N training images held out: the periodic evaluation reports their accuracy (val_acc), to choose "
        "hyperparameters and the step without the test set (0: the periodic evaluation uses the test set)",
    )  # fmt: skip
    chart: str | None = skeleton.opt(None, "manifold chart of TAR/NAR/TNAR", choices=CHARTS)
    chart_path: str = skeleton.opt(
        "", "a saved chart: recipes/chart.py's model/ directory (a deprecated .pt chart file still loads)"
    )
    chart_epochs: int = skeleton.opt(10, "epochs of the chart trained here when --chart-path is empty")
    n_unlabeled: int = skeleton.opt(3000, "two rings: unlabeled points")
    eval_size: int = skeleton.opt(0, "test examples evaluated (0: all)")


# -- data, model, regulariser ----------------------------------------------------------------


@dataclass
class Data:
    labeled: tuple[Tensor, Tensor]
    unlabeled: Tensor
    test: tuple[Tensor, Tensor]
    rings: Any = None  # the RingsSSL problem, for two rings
    val: tuple[Tensor, Tensor] | None = None  # held-out training images (--val-size)


def load_data(cfg: SSLConfig) -> Data:
    if cfg.dataset == "two-rings":
        if cfg.labels % 2:
            raise SystemExit(f"error: --labels must be a multiple of the 2 rings, got {cfg.labels}")
        rings = rings_ssl(cfg.n_unlabeled, labeled_per_class=cfg.labels // 2, seed=cfg.seed)
        # evaluated on the unlabeled points' hidden labels (transductive), as the TNAR paper
        return Data(
            (rings.x_labeled, rings.y_labeled), rings.x_unlabeled, (rings.x_unlabeled, rings.y_unlabeled), rings
        )
    n_synthetic = max(1000, 2 * cfg.labels) + cfg.val_size
    train, test = skeleton.load_images(cfg, cfg.dataset, n_train=n_synthetic if cfg.synthetic else 0)
    val = None
    if cfg.val_size:
        train, val = skeleton.hold_out(train, cfg.val_size, minimum=cfg.labels)
    classes = int(train[1].max()) + 1
    if cfg.labels % classes:
        raise SystemExit(f"error: --labels must be a multiple of the {classes} classes, got {cfg.labels}")
    try:
        labeled, _ = label_split(train[1], cfg.labels // classes, seed=cfg.seed)
    except ValueError as err:
        raise SystemExit(f"error: --labels {cfg.labels}: {err}") from None
    # the unlabeled set is the whole training set, the labeled images included (VAT's protocol)
    n_eval = cfg.eval_size or len(test[0])
    return Data((train[0][labeled], train[1][labeled]), train[0], (test[0][:n_eval], test[1][:n_eval]), val=val)


def model_kwargs(cfg: SSLConfig, data: Data) -> dict[str, Any]:
    shape = tuple(data.unlabeled.shape[1:])
    if cfg.arch == "mlp":
        return {"in_features": int(torch.tensor(shape).prod()), "num_classes": 2 if data.rings else 10}
    if cfg.arch == "smallcnn":
        return {"in_channels": shape[0], "image_size": shape[1], "drop": cfg.drop}
    if cfg.arch == "conv_large":
        return {"in_channels": shape[0], "drop": cfg.drop}
    return {"in_channels": shape[0]}


def get_chart(cfg: SSLConfig, data: Data, out: Path) -> Any:
    """The chart of TAR/NAR/TNAR: the oracle (rings), a saved one, or one trained here (seeded; every
    process trains the same one)."""
    if cfg.chart == "oracle":
        if data.rings is None:
            raise SystemExit("error: --chart oracle exists for two-rings only; use vae, ae or lgan")
        return RingsChart(data.rings.embedding, data.rings.radii)
    if cfg.chart_path:
        path = Path(cfg.chart_path)
        try:
            chart = load_chart(path)
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"error: --chart-path {path}: {err}") from None
    else:
        log.info("no --chart-path: training a %s chart for %d epochs first", cfg.chart, cfg.chart_epochs)
        chart = chart_recipe.fit(cfg.chart, data.unlabeled, epochs=cfg.chart_epochs, seed=cfg.seed)
        if skeleton.is_main():
            save_model(chart, out / "chart")
    if getattr(chart, "kind", None) != cfg.chart:
        log.warning("--chart %s, but --chart-path holds a %s chart: using it", cfg.chart, chart.kind)
    return chart.requires_grad_(False).eval()


def make_reg(method: str, model: nn.Module, chart: Any, cfg: SSLConfig) -> Any:
    if method == "supervised":
        return None
    if method in ("vat", "vat-entmin"):
        return robustreg.VAT(model, eps=cfg.eps, xi=cfg.xi, n_power=cfg.n_power, method=cfg.vat_method)
    return robustreg.TNAR(
        model, chart, eps_tangent=cfg.eps_tangent, eps_normal=cfg.eps_normal, n_power=cfg.n_power,
        cg_iters=cfg.cg_iters, weights=TNAR_WEIGHTS[method], xi=cfg.xi, method=cfg.vat_method, tangent=cfg.tangent,
        normalize=cfg.tnar_normalize, normal=cfg.normal, normal_start=cfg.normal_start, zeta=cfg.zeta,
    )  # fmt: skip


# -- one run -------------------------------------------------------------------------------


def train(method: str, cfg: SSLConfig, data: Data, chart: Any, out: Path) -> tuple[nn.Module, dict[str, Any]]:
    small = data.rings is not None  # the two-rings MLP: one thread
    run = skeleton.Run(
        dataclasses.replace(cfg, out=str(out / method)), f"ssl_{cfg.dataset}_{method}", small_model=small
    )
    acc = run.accelerator
    torch.manual_seed(cfg.seed)
    kwargs = model_kwargs(cfg, data)
    model = ARCHITECTURES[cfg.arch](**kwargs)
    run.describe(cfg.arch, kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    decay_from = int(cfg.decay_start * cfg.steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 1.0 if t < decay_from else max(0.0, (cfg.steps - t) / max(1, cfg.steps - decay_from))
    )
    model, opt, sched = run.prepare(model, opt, sched)
    run.resume()
    reg = make_reg(method, model, chart.to(acc.device) if hasattr(chart, "to") else chart, cfg)
    entropy_weight = cfg.entmin if method == "vat-entmin" else cfg.entropy if method != "supervised" else 0.0
    entmin = robustreg.EntMin(model) if entropy_weight else None
    stop = run.stop(cfg.steps)
    labeled = run.batches(list(data.labeled), cfg.batch_labeled, stop=stop, stream=0)
    unlabeled = run.batches([data.unlabeled], cfg.batch_unlabeled, stop=stop, stream=1)
    epoch_len = max(1, len(data.unlabeled) // min(cfg.batch_unlabeled, len(data.unlabeled)))
    test = tuple(t.to(acc.device) for t in data.test)
    val = tuple(t.to(acc.device) for t in data.val) if data.val is not None else None
    eval_name, eval_set = ("val_acc", val) if val is not None else ("acc", test)
    model.train()
    with run.progress(stop, f"{method} on {cfg.dataset}"):
        for step in range(run.start, stop):
            (x_l, y_l), (x_u,) = next(labeled), next(unlabeled)
            with acc.accumulate(model), run.step_guard(step, model) as guard:
                logits = model(torch.cat([x_l, x_u]))  # one pass: BN sees both, DDP one forward
                logits_l, logits_u = logits[: len(x_l)], logits[len(x_l) :]
                ce = F.cross_entropy(logits_l, y_l)
                loss, parts = ce, {"ce": ce.detach()}
                if reg is not None:
                    r = reg(x_u, logits=logits_u)
                    loss = loss + r
                    parts |= {k: v for k, v in reg.last.metrics.items() if k in ("lds", "tar", "nar")}
                if entmin is not None:
                    ent = entmin(logits=logits_u)
                    loss = loss + entropy_weight * ent
                    parts["entropy"] = ent.detach()
                opt.zero_grad(set_to_none=True)
                acc.backward(loss)
                if guard.ok(loss, model.parameters()):  # a non-finite step is skipped, not applied
                    opt.step()
                sched.step()
            done = step + 1
            run.end_step(
                done, stop, done / epoch_len, log_every=50,
                metrics=lambda loss=loss, parts=parts: {"lr": sched.get_last_lr()[0], "loss": loss.detach(), **parts},
                evaluate=lambda: {eval_name: skeleton.accuracy(acc.unwrap_model(model), eval_set)},
            )  # fmt: skip
    bare = acc.unwrap_model(model)
    final = skeleton.accuracy(bare, test)
    extra: dict[str, Any] = {}
    if run.main and method in ("tar", "nar", "tnar") and data.rings is None:
        x = data.test[0][:6].to(acc.device)
        torch.manual_seed(cfg.seed)
        grid_reg = make_reg("tnar", bare, chart, cfg)
        grid_reg(x)
        extra["perturbations_plot"] = str(
            plots.perturbation_grid(
                x, grid_reg.last.r_tangent, grid_reg.last.r_normal, run.out / "perturbations.png",
                f"TNAR perturbations, {cfg.chart} chart (ε_t = {cfg.eps_tangent}, ε_n = {cfg.eps_normal})",
            )
        )  # fmt: skip
    summary = {"method": method, "dataset": cfg.dataset, "labels": cfg.labels, "steps": stop, "acc": final}
    if val is not None:
        summary["val_acc"] = skeleton.accuracy(bare, val)
    summary["planned_steps"] = cfg.steps
    summary = run.finish(model, summary={**summary, **extra}, title=f"{method}, {cfg.dataset}")
    return bare, summary


def resolve(cfg: SSLConfig) -> SSLConfig:
    """Fill the data set's defaults into the options left at None, and check the methods."""
    d = DEFAULTS[cfg.dataset]
    keys = ("labels", "steps", "batch_labeled", "batch_unlabeled", "eps", "arch", "chart", "entropy")
    filled = {k: d.get(k) for k in keys}
    filled["decay_start"] = d["decay_start"]
    cfg = dataclasses.replace(cfg, **{k: v for k, v in filled.items() if getattr(cfg, k) is None})
    cfg = dataclasses.replace(
        cfg,
        eps_tangent=cfg.eps_tangent if cfg.eps_tangent is not None else d.get("eps_tangent", cfg.eps),
        eps_normal=cfg.eps_normal if cfg.eps_normal is not None else d.get("eps_normal", cfg.eps),
        tnar_normalize=cfg.tnar_normalize or d.get("tnar_normalize", "l2"),
    )
    unknown = set(cfg.methods.split(",")) - set(METHODS)
    if unknown:
        raise SystemExit(f"error: --methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if cfg.arch not in ARCHITECTURES:
        raise SystemExit(f"error: --arch must be one of {', '.join(ARCHITECTURES)}, got {cfg.arch!r}")
    if not 0 <= cfg.decay_start <= 1:
        raise SystemExit(f"error: --decay-start must be in [0, 1], got {cfg.decay_start}")
    if cfg.steps < 1 or cfg.labels < 2:
        raise SystemExit("error: --steps must be >= 1 and --labels >= 2")
    if cfg.entropy < 0 or cfg.val_size < 0 or (cfg.zeta is not None and not cfg.zeta > 0):
        raise SystemExit("error: --entropy and --val-size must be >= 0, --zeta > 0")
    if cfg.val_size and cfg.dataset == "two-rings":
        raise SystemExit("error: --val-size: two rings are evaluated on their unlabeled points (transductive)")
    if cfg.dataset == "two-rings" and cfg.chart not in ("oracle", "mlp-ae"):
        raise SystemExit(f"error: two-rings points are vectors: --chart oracle or mlp-ae, got {cfg.chart}")
    return cfg


def main(argv: list[str] | None = None, *, doc: str | None = None, **defaults: Any) -> dict[str, Any]:
    """Train every ``--methods``; ``doc``: the ``--help`` text of a thin recipe built on this one."""
    cfg = resolve(skeleton.parse(SSLConfig, argv, doc or __doc__, by_dataset=DEFAULTS, **defaults))
    out = Path(cfg.out or f"runs/ssl_{cfg.dataset}")
    data = load_data(cfg)
    methods = cfg.methods.split(",")
    chart = get_chart(cfg, data, out) if any(m in ("tar", "nar", "tnar") for m in methods) else None
    models, results = {}, {}
    for method in methods:
        models[method], results[method] = train(method, cfg, data, chart, out)
    if data.rings is not None and skeleton.is_main():
        titles = {f"{m} ({100 * r['acc']:.1f}%)": models[m] for m, r in results.items()}
        results["decision_regions_plot"] = str(plots.decision_regions(titles, data.rings, out / "decision_regions.png"))
    if skeleton.is_main():
        (out / "results.json").write_text(json.dumps(skeleton.jsonable(results), indent=2))
        report(results, out)
    return results


def report(results: dict[str, Any], out: Path) -> None:
    """The methods side by side, and where everything went."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"accuracy on the evaluation set ({out})")
    for col in ("method", "accuracy", "training time", "metrics and model"):
        table.add_column(col)
    for method, r in results.items():
        if isinstance(r, dict):
            table.add_row(method, f"{100 * r['acc']:.2f} %", f"{r['wall_seconds']:.1f} s", str(Path(r["out"])))
    console = Console()
    console.print(table)
    if "decision_regions_plot" in results:
        console.print(f"decision regions: {results['decision_regions_plot']}")
    console.print(f"all results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
