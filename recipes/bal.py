"""Bayesian Adversarial Learning against point-estimate adversarial training: the MNIST experiment of
Ye and Zhu (NeurIPS 2018, Sec. 5) at the scale of this machine.

The paper's protocol: an ERM model first (``erm``: Adam, ``--erm-epochs``), then every other model
starts from its weights and trains ``--epochs`` more:

- ``fgsm``: FGSM adversarial training (one step of ε from x), ε = ``--eps-train``;
- ``ifgsm``: iterative FGSM, M = ``--attack-steps`` steps of 2.5ε/M from x (no random start);
- ``pgd``: PGD-M from a random start, the same steps;
- ``bnn``: a Bayesian network, ``--chains`` SGAdaLD chains on the clean data (no adversary);
- ``bal``: :class:`robustreg.bayes.BAL`, S_θ = ``--chains`` chains against SGLD adversaries
  (S_x̃ = ``--data-chains``, M = ``--attack-steps`` Langevin steps of ``--sgld-step``, cost weight
  ``--sgld-alpha``, temperature ``--sgld-temperature``);
- ``bal-S<k>`` for every k in ``--sweep-chains``: BAL with S_θ = k (the paper's Fig. 2).

(WRM, Sinha et al.'s Lagrangian attack, is not among them.) Each model is then evaluated on the
first ``--eval-size`` test images: accuracy under FGSM at every ``--fgsm-eps`` (the paper's Fig. 1a);
under CW-ℓ2 at every ``--cw-eps`` (Fig. 1b) in two forms, the paper's one-step variant (one
normalised gradient step of length ε on the CW margin: at δ = 0 the CW objective's distance term has
no gradient) and the standard Carlini–Wagner ℓ2 attack (:class:`robustreg.CWL2`, one run per model,
read at every radius); and, on the first ``--robust-size`` images, AutoAttack (``--autoattack``) at
every ``--eval-linf``, the strong evaluation (with ``--masking``, the gradient-masking report on the
bal and bnn ensembles too: an ensemble can mask gradients). ``--val-size N`` evaluates on N held-out
training images instead of the test set: choose hyperparameters there, then run on the test set.

    python recipes/bal.py --dataset mnist --data-dir ../shared/data
    python recipes/bal.py --dataset fashionmnist --data-dir ../shared/data
    python recipes/bal.py --dataset mnist --synthetic --erm-epochs 1 --train-size 256   # smoke test

Each model is a run of the recipes' skeleton under ``<out>/<model>/`` (BAL's and BNN's saved model
is the posterior ensemble, which ``recipes/evaluate.py`` evaluates end to end); ``--out`` (default
``runs/bal_<dataset>``) gets ``results.json`` (after every model), ``results.md``, ``fgsm.png``,
``cw_l2.png`` and ``chains.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from robustreg.bayes import BAL, SGLDAdversary
from robustreg.checkpoint import atomic_write_text, load_model
from robustreg.data import VISION
from robustreg.models import BALCNN

MODELS = ("erm", "fgsm", "ifgsm", "pgd", "bnn", "bal")
opt = skeleton.opt


@dataclass
class BALConfig(skeleton.RunConfig):
    out: str = opt("", "output directory (empty: runs/bal_<dataset>; each model in a folder of its own)")
    dataset: str = opt("mnist", "data set", choices=tuple(VISION))
    models: str = opt(",".join(MODELS), f"comma-separated, each trained in turn: {', '.join(MODELS)}")
    erm_epochs: int = opt(10, "epochs of the ERM model every other model starts from")
    epochs: int = opt(1, "epochs of every other model, from the ERM weights")
    train_size: int = opt(10000, "first N training images (0: all)")
    batch_size: int = opt(100, "batch size")
    lr: float = opt(1e-3, "Adam learning rate of ERM and adversarial training")
    eps_train: float = opt(0.1, "ℓ∞ radius of FGSM, IFGSM and PGD training")
    attack_steps: int = opt(15, "M: IFGSM/PGD steps and BAL's Langevin steps (the paper: 15)")
    chains: int = opt(5, "S_θ: weight chains of BAL and BNN (the paper: 5)")
    sweep_chains: list[int] = opt(  # noqa: RUF009
        [1, 3, 10], "S_θ of the extra BAL models bal-S<k> (--sweep-chains alone: none)", empty=True
    )
    data_chains: int = opt(1, "S_x̃: adversarial chains per sample (the paper: 1)")
    sgld_step: float = opt(0.5, "η₁, the Langevin step of the data sampler")
    sgld_alpha: float = opt(0.1, "α, the weight of the cost ‖x̃ − x‖²")
    sgld_temperature: float = opt(1e-5, "T of the data sampler (the paper: 1e-5)")
    sgadald_lr: float = opt(0.03, "η₂, SGAdaLD's step (its gradient step is η₂²)")
    tau: float = opt(100.0, "τ, SGAdaLD's averaging window")
    friction: float = opt(0.05, "C, SGAdaLD's friction")
    temperature: float = opt(1e-5, "T of the weight sampler (the paper: 1e-5)")
    prior_precision: float = opt(0.0, "λ of the Gaussian prior N(0, λ⁻¹I) (0: flat)")
    val_size: int = opt(
        0, "N > 0: evaluate on N held-out training images (after the training ones) instead of the test set, "
        "to choose hyperparameters without looking at it",
    )  # fmt: skip
    eval_size: int = opt(1000, "first N evaluation images (test, or --val-size) of the FGSM and CW-ℓ2 curves")
    fgsm_eps: list[float] = opt([0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15], "FGSM radii (ℓ∞)")  # noqa: RUF009
    cw_eps: list[float] = opt([0.5, 1.0, 1.5, 2.0, 2.5, 3.0], "CW-ℓ2 radii")  # noqa: RUF009
    cw_steps: int = opt(100, "Adam steps of the standard CW-ℓ2 per value of c")
    cw_lr: float = opt(0.1, "Adam's step of the standard CW-ℓ2 (--cw-steps × --cw-lr >= 7.25: see robustreg.CWL2)")
    cw_search: int = opt(5, "values of c of the standard CW-ℓ2 (binary search)")
    robust_size: int = opt(200, "first N test images of AutoAttack (0: none)")
    eval_linf: list[float] = opt([0.1], "ℓ∞ radii of AutoAttack")  # noqa: RUF009
    autoattack: str = opt(
        "standard",
        "AutoAttack version (standard: the figure to publish; apgd: its first two attacks, faster)",
        choices=("apgd", "standard"),
    )
    masking: bool = opt(
        True, "the gradient-masking report on the bal and bnn ensembles (--robust-size images; not the S_θ sweep)"
    )


def model_names(cfg: BALConfig) -> list[str]:
    names = cfg.models.split(",")
    return names + ([f"bal-S{k}" for k in cfg.sweep_chains] if "bal" in names else [])


def resolve(cfg: BALConfig) -> BALConfig:
    """Check what the option types do not (before any training)."""
    unknown = set(cfg.models.split(",")) - set(MODELS)
    if unknown:
        raise SystemExit(f"error: --models: unknown {sorted(unknown)}; choose from {', '.join(MODELS)}")
    if len(set(model_names(cfg))) != len(model_names(cfg)) or cfg.chains in cfg.sweep_chains:
        raise SystemExit(f"error: a model is named twice ({', '.join(model_names(cfg))}; --chains is bal's S_θ)")
    for name in ("erm_epochs", "epochs", "batch_size", "chains", "data_chains", "eval_size", "cw_steps", "cw_search"):
        if getattr(cfg, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.val_size < 0:
        raise SystemExit(f"error: --val-size must be >= 0, got {cfg.val_size}")
    if min(cfg.sweep_chains, default=1) < 1:
        raise SystemExit("error: --sweep-chains must be >= 1")
    positive = ("lr", "eps_train", "sgld_step", "sgadald_lr")
    if any(not (getattr(cfg, k) > 0 and math.isfinite(getattr(cfg, k))) for k in positive):
        raise SystemExit(f"error: {', '.join('--' + k.replace('_', '-') for k in positive)} must be finite and > 0")
    if cfg.tau < 1 or min(cfg.sgld_alpha, cfg.sgld_temperature, cfg.friction, cfg.temperature, cfg.prior_precision) < 0:
        raise SystemExit(
            "error: --tau must be >= 1; --sgld-alpha, the temperatures, --friction, --prior-precision >= 0"
        )
    if not (cfg.cw_steps * cfg.cw_lr >= robustreg.attacks.CWL2_EDGE and math.isfinite(cfg.cw_lr)):
        raise SystemExit(
            f"error: --cw-steps × --cw-lr must be >= {robustreg.attacks.CWL2_EDGE:.2f} (a pixel on the box's edge "
            f"moves only after that many steps of CW-ℓ2's tanh space), got {cfg.cw_steps} × {cfg.cw_lr:g}"
        )
    if min(cfg.fgsm_eps + cfg.cw_eps + cfg.eval_linf, default=0) < 0:
        raise SystemExit("error: every radius must be >= 0")
    if cfg.mixed_precision != "no" or cfg.grad_accum != 1:
        raise SystemExit("error: this recipe compares full-precision models: --mixed-precision no, --grad-accum 1")
    if cfg.robust_size and cfg.eval_linf and not robustreg.autoattack.available():
        raise SystemExit(f"error: the strong evaluation runs AutoAttack (pyautoattack): {robustreg.autoattack.INSTALL}")
    return cfg


def member_kwargs(cfg: BALConfig) -> dict[str, Any]:
    channels, size, _ = VISION[cfg.dataset][1]
    return {"num_classes": 10, "in_channels": channels, "image_size": size}


def chains_of(name: str, cfg: BALConfig) -> int:
    return int(name.removeprefix("bal-S")) if name.startswith("bal-S") else cfg.chains


def point_loss(name: str, model: nn.Module, cfg: BALConfig) -> Callable[[Tensor, Tensor], Tensor]:
    """ERM's cross-entropy, or the adversarial-training engine of ``name``."""
    bounds, eps, m = skeleton.PRESETS[cfg.dataset].bounds, cfg.eps_train, cfg.attack_steps
    if name == "erm":
        return lambda x, y: F.cross_entropy(model(x), y)
    if name == "fgsm":
        return robustreg.PGDAT(model, eps=eps, alpha=eps, steps=1, random_start=False, bounds=bounds)
    return robustreg.PGDAT(model, eps=eps, alpha=2.5 * eps / m, steps=m, random_start=name == "pgd", bounds=bounds)


def make_bal(name: str, start: nn.Module, cfg: BALConfig, n_train: int) -> BAL:
    """BAL (S_θ from the name), or the BNN: the same chains without an adversary (0 Langevin steps)."""
    adversary = SGLDAdversary(
        steps=0 if name == "bnn" else cfg.attack_steps, step_size=cfg.sgld_step, alpha=cfg.sgld_alpha,
        temperature=cfg.sgld_temperature, chains=cfg.data_chains, bounds=skeleton.PRESETS[cfg.dataset].bounds,
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    return BAL(
        start, data_size=n_train, chains=chains_of(name, cfg), adversary=adversary, lr=cfg.sgadald_lr, tau=cfg.tau,
        friction=cfg.friction, temperature=cfg.temperature, prior_precision=cfg.prior_precision, seed=cfg.seed,
    )  # fmt: skip


def bal_metrics(bal: BAL, loss: Tensor) -> dict[str, Tensor]:
    """The logged metrics of a BAL or BNN step beyond its ``loss``: the chains' accuracy on the
    adversarial batch and how far the adversary moved it (``bal.last``; none after a NaN step,
    which leaves ``bal.last`` as the step before it had it)."""
    if bal.last is None or not bool(torch.isfinite(loss)):
        return {}
    return {k: v for k, v in bal.last.metrics.items() if k != "loss"}


def train(
    name: str,
    cfg: BALConfig,
    train_set: tuple[Tensor, Tensor],
    start: nn.Module | None,
    out: Path,
    test: tuple[Tensor, Tensor],
) -> tuple[nn.Module, dict[str, Any]]:
    """Train model ``name`` as a skeleton run under ``out/name`` (from ``start``'s weights unless it is
    ERM), then :func:`evaluate` it on ``test`` (a resumed run that trained nothing since its
    evaluation with the same options reuses that evaluation); returns the bare model (an ensemble
    for BAL and BNN) and the run's summary with the evaluation."""
    run = skeleton.Run(dataclasses.replace(cfg, out=str(out / name), models=name), f"bal_{cfg.dataset}_{name}")
    acc = run.accelerator
    torch.manual_seed(cfg.seed)
    kwargs = member_kwargs(cfg)
    bayesian = name == "bnn" or name.startswith("bal")
    epochs = cfg.erm_epochs if name == "erm" else cfg.epochs
    if bayesian:
        assert start is not None
        bal = make_bal(name, start, cfg, len(train_set[0]))
        model: nn.Module = bal.ensemble
        run.describe(
            "posterior_ensemble", {"member_arch": "bal_cnn", "member_kwargs": kwargs, "members": chains_of(name, cfg)}
        )
        model = model.to(acc.device)
        run.resume({"bal": bal})
    else:
        model = BALCNN(**kwargs)
        if start is not None:
            model.load_state_dict(start.state_dict())
        threat = None if name == "erm" else {"norm": "linf", "eps": cfg.eps_train}
        run.describe("bal_cnn", kwargs, threat_model=threat)
        model, optimizer = run.prepare(model, torch.optim.Adam(model.parameters(), lr=cfg.lr))
        loss_fn = point_loss(name, model, cfg)
        run.resume()
    per_epoch = max(1, len(train_set[0]) // min(cfg.batch_size, len(train_set[0])))
    stop = run.stop(epochs * per_epoch)
    stream = run.batches(list(train_set), cfg.batch_size, stop=stop)
    model.train()
    with run.progress(stop, f"{name} on {cfg.dataset}"):
        for step in range(run.start, stop):
            x, y = next(stream)
            with run.step_guard(step, model, parameters=bayesian) as guard:
                if bayesian:  # BAL writes the chains itself: a non-finite step puts them back
                    loss = bal.step(x, y)
                    guard.ok(loss, [], values=list(model.parameters()))
                else:
                    loss = loss_fn(x, y)
                    optimizer.zero_grad(set_to_none=True)
                    acc.backward(loss)
                    if guard.ok(loss, model.parameters()):
                        optimizer.step()
            done = step + 1
            run.end_step(
                done, stop, done / per_epoch, evaluate_at_stop=False,
                metrics=lambda loss=loss: {"loss": loss} | (bal_metrics(bal, loss) if bayesian else {}),
            )  # fmt: skip
    bare = acc.unwrap_model(model).eval()
    summary = {"model": name, "dataset": cfg.dataset, "steps": stop, "planned_steps": epochs * per_epoch}
    if bayesian:
        summary["chains"] = chains_of(name, cfg)
    summary["evaluation"] = {k: getattr(cfg, k) for k in EVALUATION_OPTIONS}
    if run.main:
        previous = run.previous_evaluation(stop, summary["evaluation"])  # not again on a resume
        keys = evaluation_keys(cfg)  # a summary missing one (edited by hand) is evaluated again
        reuse = previous is not None and all(k in previous for k in keys if not k.startswith("masking="))
        summary |= {k: previous[k] for k in keys if k in previous} if reuse else evaluate(bare, name, cfg, test)
    return bare, run.finish(model, summary=summary, title=f"{name}, {cfg.dataset}")


#: the options an evaluation depends on (:meth:`skeleton.Run.previous_evaluation` compares them)
EVALUATION_OPTIONS = (
    "dataset", "seed", "synthetic", "train_size", "val_size", "eval_size", "fgsm_eps", "cw_eps", "cw_steps", "cw_lr",
    "cw_search", "robust_size", "eval_linf", "autoattack", "masking",
)  # fmt: skip


def evaluation_keys(cfg: BALConfig) -> list[str]:
    """The summary keys :func:`evaluate` can write (the masking report: on ensembles only)."""
    keys = ["clean", "eval_n", "fgsm", "cw_one_step", "cw_l2"]
    for eps in cfg.eval_linf if cfg.robust_size else []:
        keys += [f"autoattack-{cfg.autoattack}={eps:g}", f"masking={eps:g}"]
    return keys


def evaluate(model: nn.Module, name: str, cfg: BALConfig, test: tuple[Tensor, Tensor]) -> dict[str, Any]:
    """Clean accuracy, the FGSM and CW-ℓ2 curves, AutoAttack (and the masking report for ensembles)."""
    bounds = skeleton.PRESETS[cfg.dataset].bounds
    x, y = test[0][: cfg.eval_size], test[1][: cfg.eval_size]
    out: dict[str, Any] = {"clean": skeleton.accuracy(model, (x, y)), "eval_n": len(x)}
    attacks: dict[str, Any] = {f"fgsm={e:g}": robustreg.FGSM(e, bounds=bounds) for e in cfg.fgsm_eps if e > 0}
    attacks |= {f"cw1={e:g}": robustreg.FGSM(e, norm="l2", loss="cw", bounds=bounds) for e in cfg.cw_eps}
    torch.manual_seed(cfg.seed)
    with contextlib.ExitStack() as stack:
        hook = (
            stack.enter_context(skeleton.evaluation_bar(f"{name}: FGSM and one-step CW-ℓ2")) if cfg.progress else None
        )
        res = robustreg.robust_accuracy(model, (x, y), attack=attacks, batch_size=500, progress=hook)
    out["fgsm"] = {"0": out["clean"]} | {k.split("=")[1]: v for k, v in res.per_attack.items() if k.startswith("fgsm")}
    out["cw_one_step"] = {k.split("=")[1]: v for k, v in res.per_attack.items() if k.startswith("cw1")}
    out["cw_l2"] = cw_curve(model, cfg, x, y)
    if cfg.robust_size:
        xr, yr = test[0][: cfg.robust_size], test[1][: cfg.robust_size]
        for eps in cfg.eval_linf:
            aa = robustreg.AutoAttack(eps=eps, version=cfg.autoattack, bounds=bounds, seed=cfg.seed)
            out[f"autoattack-{cfg.autoattack}={eps:g}"] = robustreg.robust_accuracy(model, (xr, yr), attack=aa).robust
            if cfg.masking and name in ("bal", "bnn"):  # the S_θ sweep (Fig. 2) goes without: it is costly
                report = robustreg.gradient_masking_report(model, (xr, yr), eps=eps, bounds=bounds, batch_size=100)
                out[f"masking={eps:g}"] = {"passed": report.passed, "accuracy": report.accuracy}
                out[f"masking={eps:g}"]["checks"] = {c.name: [c.passed, c.detail] for c in report.checks}
    return out


def cw_curve(model: nn.Module, cfg: BALConfig, x: Tensor, y: Tensor) -> dict[str, float]:
    """Accuracy under the standard CW-ℓ2 attack at every ``--cw-eps``, from one minimal-perturbation
    run: a sample counts as robust at ε when clean-correct and no misclassifying x' within ε was found."""
    bounds = skeleton.PRESETS[cfg.dataset].bounds
    attack = robustreg.CWL2(steps=cfg.cw_steps, lr=cfg.cw_lr, search_steps=cfg.cw_search, bounds=bounds)
    dist, correct = [], []
    for i in range(0, len(x), 500):
        xb, yb = x[i : i + 500], y[i : i + 500]
        xa = attack(model, xb, yb)
        with torch.no_grad(), robustreg.inner_mode(model, "eval"):
            ok = model(xb).argmax(1) == yb
            fooled = model(xa).argmax(1) != yb
        dist.append(
            torch.where(fooled, (xa - xb).flatten(1).norm(dim=1), torch.full_like(ok, math.inf, dtype=xb.dtype))
        )
        correct.append(ok)
    d, ok = torch.cat(dist), torch.cat(correct)
    return {f"{e:g}": int((ok & (d > e)).sum()) / len(d) for e in cfg.cw_eps}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = resolve(skeleton.parse(BALConfig, argv, __doc__))
    out = Path(cfg.out or f"runs/bal_{cfg.dataset}")
    n_train = cfg.train_size or (512 if cfg.synthetic else 0)
    train_set, test = skeleton.load_images(
        cfg, cfg.dataset, n_train=n_train + cfg.val_size if n_train else 0,
        n_test=max(cfg.eval_size, cfg.robust_size),
    )  # fmt: skip
    if cfg.val_size:  # the evaluation set is held-out training images: the test set is not used
        train_set, test = skeleton.hold_out(train_set, cfg.val_size, n_train=n_train)
    results: dict[str, Any] = {"config": skeleton.jsonable(dataclasses.asdict(cfg)), "torch": torch.__version__}
    results["split"] = "validation" if cfg.val_size else "test"
    results["models"] = {}
    erm: nn.Module | None = None
    for name in model_names(cfg):
        if name != "erm" and erm is None:
            erm = erm_model(out)
        model, summary = train(name, cfg, train_set, None if name == "erm" else erm, out, test)
        if name == "erm":
            erm = model
        if skeleton.is_main():
            summary["seconds_per_step"] = summary["wall_seconds"] / max(summary["steps"], 1)
        results["models"][name] = summary
        results["complete"] = False  # written after every model: a stopped run keeps what it measured
        if skeleton.is_main():
            atomic_write_text(out / "results.json", json.dumps(skeleton.jsonable(results), indent=2))
    results["complete"] = True
    if skeleton.is_main():
        results["plots"] = figures(results, cfg, out)
        atomic_write_text(out / "results.json", json.dumps(skeleton.jsonable(results), indent=2))
        atomic_write_text(out / "results.md", markdown(results))
        print((out / "results.md").read_text())
    return results


def erm_model(out: Path) -> nn.Module:
    """The ERM model of an earlier invocation (``<out>/erm/model``), for runs that leave ``erm`` out."""
    try:
        return load_model(out / "erm" / "model")[0]
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: every model starts from ERM's weights: train erm first ({err})") from None


def figures(results: dict[str, Any], cfg: BALConfig, out: Path) -> dict[str, str]:
    """Accuracy against FGSM's ε, against CW-ℓ2's ε (both forms), and against S_θ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, split = results["models"], results["split"]
    paths = {}
    for key, title, xlabel in (
        ("fgsm", "FGSM", "ε (ℓ∞)"), ("cw_l2", "CW-ℓ2 (standard, solid) and one-step (dashed)", "ε (ℓ2)"),
    ):  # fmt: skip
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, (name, r) in enumerate(models.items()):
            color = f"C{i % 10}"
            curve = r[key]
            ax.plot(
                [float(e) for e in curve], [100 * v for v in curve.values()], marker="o", ms=3, color=color, label=name
            )
            if key == "cw_l2":
                one = r["cw_one_step"]
                ax.plot([float(e) for e in one], [100 * v for v in one.values()], ls="--", color=color)
        ax.set(xlabel=xlabel, ylabel=f"{split} accuracy (%)", title=f"{title}, {cfg.dataset}", ylim=(-2, 102))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / ("fgsm.png" if key == "fgsm" else "cw_l2.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths[key] = str(path)
    sweep = {r["chains"]: r for name, r in models.items() if name.startswith("bal")}
    if len(sweep) > 1:
        fig, ax = plt.subplots(figsize=(5.6, 4.0))
        ks = sorted(sweep)
        top = f"{max(cfg.fgsm_eps):g}"
        ax.plot(ks, [100 * sweep[k]["fgsm"][top] for k in ks], marker="o", label=f"FGSM ε = {top}")
        for key in (k for k in sweep[ks[0]] if k.startswith("autoattack-")):
            ax.plot(ks, [100 * sweep[k][key] for k in ks], marker="s", label=key.replace("=", ", ε = "))
        ax.set(xlabel="S_θ (weight chains)", ylabel=f"{split} accuracy (%)", title=f"BAL against S_θ, {cfg.dataset}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "chains.png", dpi=110)
        plt.close(fig)
        paths["chains"] = str(out / "chains.png")
    return paths


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables: FGSM, CW-ℓ2 (standard / one-step), AutoAttack, time per step."""
    models = results["models"]
    first = next(iter(models.values()))
    fgsm, cw = list(first["fgsm"]), list(first["cw_l2"])
    aa = [k for k in first if k.startswith("autoattack-")]
    cols = ["model", *(f"FGSM {e}" for e in fgsm), *(f"CW-ℓ2 {e}" for e in cw), *aa, "s / step"]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for name, r in models.items():
        cells = [f"{100 * r['fgsm'][e]:.1f}" for e in fgsm]
        cells += [f"{100 * r['cw_l2'][e]:.1f} / {100 * r['cw_one_step'][e]:.1f}" for e in cw]
        cells += [f"{100 * r[k]:.1f}" for k in aa]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['seconds_per_step']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
