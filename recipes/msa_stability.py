"""Vanilla training vs Lyapunov-stable MSA training vs PGD-10 adversarial training.

The MSA paper's comparison ("Adversarially Robust Neural Networks via Optimal Control"):
the same network (SmallCNN) trained for the same number of epochs three ways,

- ``vanilla``: cross-entropy with Adam (``--lr``);
- ``msa``: :class:`robustreg.control.MSA` with every Linear/convolution layer held at
  ‖θ‖₂ ≤ 1 (kernel read as a matrix), proximal weight β (``--msa-beta``: a step of 1/(2β) before
  the projection). The constrained network's logits are small (each layer is at most
  1-Lipschitz as a matrix), so its cross-entropy is taken on ``--msa-logit-scale`` × logits
  (10): a temperature, which changes neither the predictions nor the constraint;
- ``pgd10``: PGD-10 adversarial training (:class:`robustreg.PGDAT`, ε = ``--eps-train``,
  α = ε/4) with the same Adam,

then each is evaluated on a fixed test subset: clean accuracy and accuracy under AutoAttack
(``--autoattack``: the ``"apgd"`` version, APGD-CE + APGD-T, by default; ``standard`` for figures to
publish; from the authors' ``pyautoattack``, the ``eval`` extra), FGSM, PGD-10 (α = ε/4, so k·α =
2.5ε crosses the ball) and CW-ℓ∞ (20 steps of ε/8) at every ``--eps-eval``, and their per-sample
worst case (``all``); training wall time; every layer's spectral norm;
and the eigenvalues of the square layer (``classifier.4``, 200×200) of vanilla vs MSA against
the unit circle (the paper's Fig. 1).

    python recipes/msa_stability.py --dataset mnist --data-dir ../shared/data
    python recipes/msa_stability.py --dataset fashionmnist --data-dir ../shared/data
    python recipes/msa_stability.py --dataset cifar10 --data-dir ~/data       # with the files
    python recipes/msa_stability.py --dataset cifar10 --synthetic --epochs 1  # smoke test

Each method is a run of the recipes' skeleton under ``<out>/<method>/`` (``run.json``,
``metrics.jsonl``, ``curves.png``, ``summary.json``, ``model/``, ``checkpoints/``: ``--resume``,
``--eval-every``, the non-finite guard and the progress bars as in every recipe; MSA writes the
weights itself, so a non-finite MSA step puts them back). ``results.json`` (written after every
method) and ``eigenvalues.png`` go to ``--out`` (default ``runs/msa_<dataset>``); each saved
model is what ``recipes/evaluate.py`` evaluates further. The comparison is of full-precision
training: ``--mixed-precision`` and ``--grad-accum`` are refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import skeleton
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robustreg
from robustreg.checkpoint import atomic_write_text
from robustreg.control import CONSTRAINABLE, MSA, plot_eigenvalues, spectral_norm
from robustreg.data import VISION
from robustreg.models import SmallCNN

METHODS = ("vanilla", "msa", "pgd10")
opt = skeleton.opt


@dataclass
class MSAConfig(skeleton.RunConfig):
    out: str = opt("", "output directory (empty: runs/msa_<dataset>; each method in a folder of its own)")
    dataset: str = opt("mnist", "data set", choices=tuple(VISION))
    methods: str = opt("vanilla,msa,pgd10", f"comma-separated, each trained in turn: {', '.join(METHODS)}")
    epochs: int = opt(3, "training epochs of every method")
    train_size: int = opt(20000, "first N training images (0: all)")
    eval_size: int = opt(1000, "first N test images of the evaluation", renamed_from="test_size")
    batch_size: int = opt(128, "batch size")
    lr: float = opt(1e-3, "Adam learning rate of vanilla and PGD-10 training")
    msa_beta: float = opt(5.0, "MSA proximal weight β (step 1/(2β) = 0.1)", renamed_from="beta")
    msa_alpha: float = opt(0.0, "MSA weight penalty α", renamed_from="alpha")
    radius: float = opt(1.0, "spectral-norm bound of the MSA layers (the paper: 1)")
    msa_logit_scale: float = opt(10.0, "MSA's network multiplies its logits by this (saved with it)")
    conv_norm: str = opt("matrix", "MSA's convolution norm", choices=("matrix", "operator"))
    eps_train: float = opt(0.3, "PGD-10 adversarial training radius (ℓ∞)")
    eps_eval: list[float] = opt([0.1, 0.2, 0.3], "ℓ∞ radii of the evaluation")  # noqa: RUF009
    autoattack: str = opt("apgd", "AutoAttack version of the evaluation", choices=("apgd", "standard"))


def resolve(cfg: MSAConfig) -> MSAConfig:
    """Check what the option types do not (before any training)."""
    unknown = set(cfg.methods.split(",")) - set(METHODS)
    if unknown:
        raise SystemExit(f"error: --methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if cfg.mixed_precision != "no" or cfg.grad_accum != 1:
        raise SystemExit("error: this recipe compares full-precision training: --mixed-precision no, --grad-accum 1")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.eval_size < 1 or not cfg.eps_eval:
        raise SystemExit("error: --epochs, --batch-size and --eval-size must be >= 1, --eps-eval not empty")
    finite = all(math.isfinite(v) for v in (cfg.msa_logit_scale, cfg.msa_beta, cfg.msa_alpha, cfg.radius))
    if not (finite and cfg.msa_logit_scale > 0 and cfg.msa_beta > 0 and cfg.msa_alpha >= 0 and cfg.radius > 0):
        raise SystemExit("error: --msa-logit-scale, --msa-beta and --radius must be finite and > 0, --msa-alpha >= 0")
    if not robustreg.autoattack.available():  # before training, not after it
        raise SystemExit(f"error: the evaluation runs AutoAttack (pyautoattack): {robustreg.autoattack.INSTALL}")
    return cfg


def model_kwargs(cfg: MSAConfig) -> dict[str, Any]:
    channels, size, _ = VISION[cfg.dataset][1]
    return {"num_classes": 10, "in_channels": channels, "image_size": size}


def evaluate(model: nn.Module, test: tuple[Tensor, Tensor], cfg: MSAConfig, progress: bool = False) -> dict[str, Any]:
    """Clean accuracy and accuracy under AutoAttack ``--autoattack``, FGSM, PGD-10 (α = ε/4) and
    CW-ℓ∞ (20 steps of ε/8) at each ``--eps-eval``; ``all`` is their per-sample worst case."""
    out: dict[str, Any] = {}
    for eps in cfg.eps_eval:
        attacks = {
            f"autoattack-{cfg.autoattack}": robustreg.AutoAttack(eps=eps, version=cfg.autoattack, seed=cfg.seed),
            "fgsm": robustreg.FGSM(eps),
            "pgd10": robustreg.PGD(eps=eps, alpha=eps / 4, steps=10),
            "cw": robustreg.CW(eps, steps=20, alpha=eps / 8),
        }
        with contextlib.ExitStack() as stack:
            hook = stack.enter_context(skeleton.evaluation_bar(f"evaluation at ε = {eps:g}")) if progress else None
            acc = robustreg.robust_accuracy(model, test, attack=attacks, batch_size=500, progress=hook)
        out["clean"] = acc.clean
        out[f"eps={eps:g}"] = {**acc.per_attack, "all": acc.robust}
    return out


def norms(model: nn.Module) -> dict[str, float]:
    """‖θ‖₂ of every Linear/convolution weight (kernels as (Cout, Cin·k·k) matrices)."""
    return {n: spectral_norm(m.weight) for n, m in model.named_modules() if isinstance(m, CONSTRAINABLE)}


def train(method: str, cfg: MSAConfig, data: tuple[tuple[Tensor, Tensor], ...], out: Path) -> tuple[nn.Module, dict]:
    """Train and evaluate one method (a fresh SmallCNN, the same seed for every method) as a
    skeleton run under ``out/method`` (its options record ``methods`` as this one, so that
    ``--resume`` continues it whichever ``--methods`` are given); returns the bare model and the
    run's summary."""
    train_set, test = data
    run = skeleton.Run(dataclasses.replace(cfg, out=str(out / method), methods=method), f"msa_{cfg.dataset}_{method}")
    acc = run.accelerator
    torch.manual_seed(cfg.seed)
    # MSA's network keeps its temperature: its softmax and every attack on it see the trained logits
    kwargs = model_kwargs(cfg) | ({"logit_scale": cfg.msa_logit_scale} if method == "msa" else {})
    model = SmallCNN(**kwargs)
    # only PGD-10's model was trained against a threat model (recipes/evaluate.py attacks at its ε)
    run.describe("smallcnn", kwargs, threat_model={"norm": "linf", "eps": cfg.eps_train} if method == "pgd10" else None)
    if method == "msa":  # MSA is the optimiser: it writes the weights itself
        (model,) = run.prepare(model)
        msa = MSA(model, beta=cfg.msa_beta, alpha=cfg.msa_alpha, radius=cfg.radius, conv_norm=cfg.conv_norm)
    else:
        model, opt = run.prepare(model, torch.optim.Adam(model.parameters(), lr=cfg.lr))
        eps = cfg.eps_train
        pgd = robustreg.PGDAT(model, eps=eps, alpha=eps / 4, steps=10) if method == "pgd10" else None
    run.resume()
    per_epoch = max(1, len(train_set[0]) // min(cfg.batch_size, len(train_set[0])))
    total = cfg.epochs * per_epoch
    stop = run.stop(total)
    stream = run.batches(list(train_set), cfg.batch_size, stop=stop)
    test_dev = tuple(t.to(acc.device) for t in test)
    model.train()
    with run.progress(stop, f"{method} on {cfg.dataset}"):
        for step in range(run.start, stop):
            x, y = next(stream)
            with run.step_guard(step, model, parameters=method == "msa") as guard:
                if method == "msa":  # a non-finite loss or update: the weights are put back
                    loss = msa.step(x, y)
                    guard.ok(loss, [], values=list(model.parameters()))
                else:
                    loss = F.cross_entropy(model(x), y) if pgd is None else pgd(x, y)
                    opt.zero_grad(set_to_none=True)
                    acc.backward(loss)
                    if guard.ok(loss, model.parameters()):  # a non-finite step is skipped, not applied
                        opt.step()
            done = step + 1
            run.end_step(  # the final evaluation follows the loop (its clean accuracy included)
                done, stop, done / per_epoch, evaluate_at_stop=False,
                metrics=lambda loss=loss: {"loss": loss.detach()},
                evaluate=lambda: {"acc": skeleton.accuracy(acc.unwrap_model(model), test_dev)},
            )  # fmt: skip
    bare = acc.unwrap_model(model).eval()
    summary: dict[str, Any] = {"method": method, "dataset": cfg.dataset, "steps": stop, "planned_steps": total}
    summary["evaluation"] = {k: getattr(cfg, k) for k in ("eval_size", "eps_eval", "autoattack", "seed", "synthetic")}
    if run.main:
        previous = run.previous_evaluation(stop, summary["evaluation"])  # a finished run, resumed: not again
        if previous is not None:
            summary |= {k: v for k, v in previous.items() if k == "clean" or k.startswith("eps=")}
        else:
            summary |= evaluate(bare, test_dev, cfg, progress=cfg.progress)
        summary["spectral_norms"] = norms(bare)
    return bare, run.finish(model, summary=summary, title=f"{method}, {cfg.dataset}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = resolve(skeleton.parse(MSAConfig, argv, __doc__))
    out = Path(cfg.out or f"runs/msa_{cfg.dataset}")
    n_train = cfg.train_size or (512 if cfg.synthetic else 0)
    data = skeleton.load_images(cfg, cfg.dataset, n_train=n_train, n_test=cfg.eval_size)
    results: dict[str, Any] = {"config": skeleton.jsonable(dataclasses.asdict(cfg)), "torch": torch.__version__}
    results["methods"], models = {}, {}
    for method in cfg.methods.split(","):
        models[method], summary = train(method, cfg, data, out)
        results["methods"][method] = {"train_seconds": summary["wall_seconds"], **summary}
        results["complete"] = False  # written after every method: a stopped run keeps what it measured
        if skeleton.is_main():
            atomic_write_text(out / "results.json", json.dumps(skeleton.jsonable(results), indent=2))
    timing = {m: r["train_seconds"] for m, r in results["methods"].items()}
    if "msa" in timing:
        results["time_ratios"] = {f"msa / {m}": timing["msa"] / timing[m] for m in timing if m != "msa"}
    square = {m: models[m].classifier[4] for m in ("vanilla", "msa") if m in models}
    if square and skeleton.is_main():
        plot_eigenvalues(square, out / "eigenvalues.png", title=f"classifier.4 (200×200), {cfg.dataset}")
        results["eigenvalues_plot"] = str(out / "eigenvalues.png")
    results["complete"] = True
    if skeleton.is_main():
        atomic_write_text(out / "results.json", json.dumps(skeleton.jsonable(results), indent=2))
        report(results, out)
    return results


def report(results: dict[str, Any], out: Path) -> None:
    """Clean and worst-case accuracy at every radius and the training time, method by method."""
    from rich.console import Console
    from rich.table import Table

    methods = results["methods"]
    radii = [k for k in next(iter(methods.values())) if k.startswith("eps=")]
    table = Table(title=f"vanilla vs MSA vs PGD-10 ({out}; worst case over the attacks at each ε)")
    for col in ("method", "clean", *radii, "training time"):
        table.add_column(col)
    for method, r in methods.items():
        cells = [f"{100 * r['clean']:.1f} %", *(f"{100 * r[k]['all']:.1f} %" for k in radii)]
        table.add_row(method, *cells, f"{r['train_seconds']:.0f} s")
    console = Console()
    console.print(table)
    if "time_ratios" in results:
        console.print("time ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in results["time_ratios"].items()))
    console.print(f"all results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
