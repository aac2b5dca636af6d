"""Vanilla training vs Lyapunov-stable MSA training vs PGD-10 adversarial training.

The MSA paper's comparison ("Adversarially Robust Neural Networks via Optimal Control"):
the same network (SmallCNN) trained for the same number of epochs three ways,

- ``vanilla``: cross-entropy with Adam (``--lr``);
- ``msa``: :class:`robustreg.control.MSA` with every Linear/convolution layer held at
  ‖θ‖₂ ≤ 1 (kernel read as a matrix), proximal weight β (a step of 1/(2β) before the
  projection). The constrained network's logits are small (each layer is at most
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

Writes ``results.json``, ``eigenvalues.png`` and every trained model (``<method>/model``: safetensors
+ JSON, which ``recipes/evaluate.py`` evaluates further) to ``--out`` (default
``runs/msa_<dataset>``). Runs on the CPU (``--threads``); one process: MSA's layer-wise updates are
not data-parallel. Options and data loading come from the recipes' shared skeleton.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import skeleton
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robustreg
from robustreg import cli
from robustreg.checkpoint import atomic_write_text, save_model
from robustreg.control import MSA, plot_eigenvalues
from robustreg.data import VISION
from robustreg.models import SmallCNN

log = logging.getLogger("msa_stability")
METHODS = ("vanilla", "msa", "pgd10")


opt = skeleton.opt


@dataclass
class Config:
    """Every option, with its default; ``--help`` lists them."""

    dataset: str = opt("mnist", "data set", choices=tuple(VISION))
    data_dir: str = opt("../shared/data", "root of the torchvision data sets (nothing is downloaded)")
    synthetic: bool = opt(False, "random tensors of the data set's shape (smoke tests)")
    methods: str = opt("vanilla,msa,pgd10", f"comma-separated, from {', '.join(METHODS)}")
    epochs: int = opt(3, "training epochs of every method")
    train_size: int = opt(20000, "first N training images (0: all)")
    test_size: int = opt(1000, "first N test images for the evaluation")
    batch_size: int = opt(128, "batch size")
    lr: float = opt(1e-3, "Adam learning rate of vanilla and PGD-10 training")
    beta: float = opt(5.0, "MSA proximal weight β (step 1/(2β) = 0.1)")
    alpha: float = opt(0.0, "MSA weight penalty")
    radius: float = opt(1.0, "spectral-norm bound of the MSA layers (the paper: 1)")
    msa_logit_scale: float = opt(10.0, "MSA's loss is CE(scale · logits, y)")
    conv_norm: str = opt("matrix", "MSA's convolution norm", choices=("matrix", "operator"))
    eps_train: float = opt(0.3, "PGD-10 adversarial training radius (ℓ∞)")
    eps_eval: list[float] = opt([0.1, 0.2, 0.3], "ℓ∞ radii of the evaluation")  # noqa: RUF009
    autoattack: str = opt("apgd", "AutoAttack version of the evaluation", choices=("apgd", "standard"))
    seed: int = opt(0, "seeds the model and the data order")
    threads: int = opt(0, "torch threads (0: auto, the cores this process may use; docs/recipes.md)")
    max_steps: int = opt(0, "stop each method's training after this many steps (0: --epochs of them)")
    max_nonfinite: int = opt(5, "stop after this many non-finite steps in a row (each is skipped)")
    progress: bool = opt(True, "rich progress bar (--no-progress for logs)")
    out: str = opt("", "output directory (empty: runs/msa_<dataset>)")


def parse(argv: list[str] | None = None) -> Config:
    cfg = skeleton.parse(Config, argv, __doc__)
    unknown = set(cfg.methods.split(",")) - set(METHODS)
    if unknown:
        raise SystemExit(f"error: --methods: unknown {sorted(unknown)}; choose from {METHODS}")
    if not robustreg.autoattack.available():  # before training, not after it
        raise SystemExit(f"error: the evaluation runs AutoAttack (pyautoattack): {robustreg.autoattack.INSTALL}")
    return cfg


def load(cfg: Config) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    n_train = cfg.train_size or (512 if cfg.synthetic else 0)
    return skeleton.load_images(cfg, cfg.dataset, n_train=n_train, n_test=cfg.test_size)


def train_one(
    method: str, cfg: Config, train: tuple[Tensor, Tensor], progress: object = None
) -> tuple[nn.Module, float, list[float]]:
    """Train a fresh SmallCNN (same seed for every method); returns it, the training wall time
    (data shuffling included, evaluation excluded) and the mean loss of every epoch."""
    torch.manual_seed(cfg.seed)
    channels, size, _ = VISION[cfg.dataset][1]
    model = SmallCNN(in_channels=channels, image_size=size).train()
    if method == "msa":
        scale = cfg.msa_logit_scale
        msa = MSA(
            model, beta=cfg.beta, alpha=cfg.alpha, radius=cfg.radius, conv_norm=cfg.conv_norm,
            loss_fn=lambda logits, y: F.cross_entropy(scale * logits, y),
        )  # fmt: skip
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        objective = (
            robustreg.PGDAT(model, eps=cfg.eps_train, alpha=cfg.eps_train / 4, steps=10)
            if method == "pgd10"
            else (lambda x, y: F.cross_entropy(model(x), y))
        )
    x_all, y_all = train
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    in_row = step = 0
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x_all), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            if cfg.max_steps and step == cfg.max_steps:
                break
            idx = order[i : i + cfg.batch_size]
            x, y = x_all[idx], y_all[idx]
            step += 1
            # a non-finite step is skipped: nothing of it applied, running statistics included
            if method == "msa":  # MSA.step updates the weights itself: they are put back if it went wrong
                saved = {k: v.clone() for k, v in model.state_dict().items()}
                loss = msa.step(x, y)
                fine = _finite([loss, *model.parameters()])
            else:
                saved = {k: v.clone() for k, v in model.named_buffers()}
                opt.zero_grad(set_to_none=True)
                loss = objective(x, y)
                loss.backward()
                fine = _finite([loss.detach(), *(p.grad for p in model.parameters() if p.grad is not None)])
                if fine:
                    opt.step()
            if not fine:
                model.load_state_dict(saved, strict=False)
                in_row += 1
                log.warning("%s step %d: non-finite loss or update, skipped (%d in a row)", method, step, in_row)
                if in_row >= cfg.max_nonfinite:
                    raise SystemExit(
                        f"error: {method}: {in_row} non-finite steps in a row (the last at step {step}); nothing of "
                        "them was applied. Lower the learning rate (--lr, or --beta for MSA) or check the data."
                    )
                continue
            in_row = 0
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            if progress is not None:
                bar, task = progress
                bar.update(task, completed=step, loss=f"loss {total / count:.4f}")
        if not count:  # --max-steps reached
            break
        losses.append(total / count)
        log.info(
            "%s epoch %d/%d: loss %.4f (%.0f s)", method, epoch + 1, cfg.epochs, losses[-1], time.perf_counter() - start
        )
    return model.eval(), time.perf_counter() - start, losses


def total_steps(cfg: Config, n_train: int) -> int:
    """Training steps of one method: ``--epochs`` passes of ``ceil(n / batch)`` steps, or ``--max-steps``."""
    full = cfg.epochs * -(-n_train // cfg.batch_size)
    return min(full, cfg.max_steps) if cfg.max_steps else full


def _finite(tensors: list[Tensor]) -> bool:
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def evaluate(
    model: nn.Module,
    test: tuple[Tensor, Tensor],
    eps_list: list[float],
    autoattack: str,
    seed: int,
    progress: bool = False,
) -> dict:
    """Clean accuracy and accuracy under AutoAttack ``autoattack``, FGSM, PGD-10 (α = ε/4) and
    CW-ℓ∞ (20 steps) at each ε; ``all`` is their per-sample worst case."""
    out: dict = {}
    for eps in eps_list:
        attacks = {
            f"autoattack-{autoattack}": robustreg.AutoAttack(eps=eps, version=autoattack, seed=seed),
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
    from robustreg.control import CONSTRAINABLE, spectral_norm

    return {n: spectral_norm(m.weight) for n, m in model.named_modules() if isinstance(m, CONSTRAINABLE)}


def summary(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("spectral_norms", "epoch_losses")}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse(argv)
    skeleton.setup_logging(True)
    torch.set_num_threads(cfg.threads or skeleton.auto_threads(small_model=False))
    out = Path(cfg.out or f"runs/msa_{cfg.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    train, test = load(cfg)
    log.info("data: %d training, %d test images of %s", len(train[0]), len(test[0]), cfg.dataset)
    results: dict = {"config": dataclasses.asdict(cfg), "torch": torch.__version__, "methods": {}}
    models = {}
    for method in cfg.methods.split(","):
        with _bar(cfg, method, len(train[0])) as progress:
            model, seconds, losses = train_one(method, cfg, train, progress)
        models[method] = model
        results["methods"][method] = {
            "train_seconds": seconds,
            "epoch_losses": losses,
            **evaluate(model, test, cfg.eps_eval, cfg.autoattack, cfg.seed, progress=cfg.progress),
            "spectral_norms": norms(model),
        }
        log.info(
            "%s: %s", method, json.dumps({k: v for k, v in results["methods"][method].items() if k != "spectral_norms"})
        )
        kwargs = {"num_classes": 10, "in_channels": VISION[cfg.dataset][1][0], "image_size": VISION[cfg.dataset][1][1]}
        threat = {"norm": "linf", "eps": cfg.eps_train} if method == "pgd10" else None  # the one trained against one
        run_cfg = {**dataclasses.asdict(cfg), "method": method, "threat_model": threat}
        save_model(model, out / method / "model", arch="smallcnn", kwargs=kwargs, config=run_cfg)
        results["complete"] = False  # written after every method: a stopped run keeps what it measured
        atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    timing = {m: r["train_seconds"] for m, r in results["methods"].items()}
    if "msa" in timing:
        results["time_ratios"] = {f"msa / {m}": timing["msa"] / timing[m] for m in timing if m != "msa"}
    square = {m: models[m].classifier[4] for m in ("vanilla", "msa") if m in models}
    if square:
        plot_eigenvalues(square, out / "eigenvalues.png", title=f"classifier.4 (200×200), {cfg.dataset}")
        results["eigenvalues_plot"] = str(out / "eigenvalues.png")
    results["complete"] = True
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    log.info("wrote %s", out / "results.json")
    table = {m: summary(r) for m, r in results["methods"].items()}
    print(json.dumps({**table, "time_ratios": results.get("time_ratios")}, indent=1))
    return results


@contextmanager
def _bar(cfg: Config, method: str, n_train: int) -> Iterator[tuple | None]:
    """A rich bar over the training steps of one method (none with --no-progress)."""
    if not cfg.progress:
        yield None
        return
    with cli.progress_bar("{task.fields[loss]}") as bar:
        yield bar, bar.add_task(f"{method}: steps", total=total_steps(cfg, n_train), loss="")


if __name__ == "__main__":
    main()
