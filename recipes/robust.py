"""Adversarial training: PGD-AT, Fast-AT, Free-AT, TRADES, YOPO, YOPO-TRADES, ATTA and Amata (over
PGD, YOPO, Free, Fast or ATTA) on MNIST, FashionMNIST, CIFAR-10, SVHN or two rings with nuisance
dimensions; robust accuracy during training (PGD-40, steps of 2.5ε/40 that cross the ball) and
after it (AutoAttack's APGD-CE + APGD-T by default, ``--final-autoattack standard`` for the full
AutoAttack, beside PGD-k and CW-ℓ∞; the authors' ``pyautoattack``, the ``eval`` extra).

Defaults follow the papers (``None`` in ``--help`` means the data set's default):

- MNIST / FashionMNIST: SmallCNN, ε = 0.3, PGD-40 of α = 0.01 inside training (Madry et al.), SGD
  (momentum 0.9) at lr 0.01 for 100 epochs (TRADES' MNIST setting);
- CIFAR-10 / SVHN: PreAct-ResNet-18, ε = 8/255, PGD-10 of α = 2/255, SGD at lr 0.1 (SVHN 0.01)
  with weight decay 5e-4 for 100 epochs;
- the learning rate drops 10× at 75% and 90% of training (TRADES);
- two rings (generated, 2 + 48 nuisance dimensions, no files, as ``python recipes/demo.py``): an
  MLP, ε = 0.25 unbounded, PGD-7 of ε/4, Adam at 3e-3, 20 epochs of 4000 points, ε growing
  linearly over the first 5 epochs (``--eps-warmup``; without it, training at the full ε from the
  start collapses to a constant classifier on most seeds).

Method knobs:

- ``pgd``: ``--attack-steps``, ``--attack-alpha``; ``fast``: α = 1.25ε (Wong et al.); ``trades``: ``--trades-beta``
  (6; the TRADES paper uses 1 on MNIST);
- ``free``: each batch replayed ``--replays`` (8) times with δ carried over (Shafahi et al.);
  ``--epochs`` counts passes over the data, of which the paper runs epochs/m;
- ``yopo`` / ``yopo-trades``: YOPO-m-n with ``--yopo-m`` (5) full passes of ``--yopo-n``
  first-layer steps (10 on the MNISTs, 3 otherwise: the paper's YOPO-5-10 and YOPO-5-3). The
  paper's learning rate is for the sum of the m gradients; ours averages them, so lr is
  multiplied by m;
- ``atta``: ATTA-k, k = ``--attack-steps`` (1), from each sample's stored perturbation; under several
  processes the stores are gathered after every step, so every process keeps every sample's δ;
- ``amata-<engine>``: Amata anneals K from ``--k-min`` to ``--k-max`` over the epochs with
  α = τ/K (τ = ``--tau``: 0.4 on the MNISTs, 10·2/255 on CIFAR-10 / SVHN); over Fast-AT it
  anneals the start.

    python recipes/robust.py --dataset two-rings --method trades            # no files, ~15 s
    python recipes/robust.py --dataset mnist --method yopo --epochs 40 --data-dir ../shared/data
    accelerate launch recipes/robust.py --dataset cifar10 --method amata-pgd

Writes ``run.json``, ``metrics.jsonl``, ``curves.png`` (clean and PGD-40 accuracy vs wall time and
epoch), ``summary.json`` (final clean, AutoAttack, PGD-k and CW accuracy and their per-sample
worst case ``robust_acc``), ``model/`` and ``checkpoints/`` under ``--out``;
``recipes/evaluate.py`` evaluates the model further (AutoAttack standard by default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import skeleton
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robustreg
from robustreg.checkpoint import ARCHITECTURES

DATASETS = ("mnist", "fashionmnist", "cifar10", "svhn", "two-rings")
ENGINES = ("pgd", "fast", "free", "trades", "yopo", "yopo-trades", "atta")
METHODS = ("natural", *ENGINES, "amata-pgd", "amata-yopo", "amata-free", "amata-fast", "amata-atta")
_TABLE: dict[str, dict[str, Any]] = {
    "mnist": dict(arch="smallcnn", attack_alpha=0.01, attack_steps=40, lr=0.01, weight_decay=0.0, epochs=100,
                  batch_size=128, k_min=10, k_max=40, tau=0.4, optimizer="sgd", yopo_n=10),
    "cifar10": dict(arch="preact_resnet18", attack_alpha=2 / 255, attack_steps=10, lr=0.1, weight_decay=5e-4,
                    epochs=100, batch_size=128, k_min=2, k_max=10, tau=10 * 2 / 255, optimizer="sgd"),
    "two-rings": dict(arch="mlp", attack_alpha=0.0625, attack_steps=7, lr=3e-3, weight_decay=0.0, epochs=20,
                      batch_size=128, k_min=2, k_max=10, tau=0.5, optimizer="adam", eps_warmup=5),
}  # fmt: skip
_TABLE["fashionmnist"], _TABLE["svhn"] = _TABLE["mnist"], {**_TABLE["cifar10"], "lr": 0.01}
#: per data set, what ``resolve`` fills into the options left at None (``--help`` lists it); ε is the
#: data set's preset threat radius (``skeleton.PRESETS``)
DEFAULTS = {name: {"eps": skeleton.PRESETS[name].eps, **_TABLE[name]} for name in DATASETS}


@dataclass
class RobustConfig(skeleton.RunConfig):
    out: str = skeleton.opt("", "output directory (empty: runs/robust_<dataset>_<method>)")
    dataset: str = skeleton.opt("mnist", "data set", choices=DATASETS)
    method: str = skeleton.opt("pgd", "training method", choices=METHODS)
    arch: str | None = skeleton.opt(None, f"network: {', '.join(ARCHITECTURES)}")
    epochs: int | None = skeleton.opt(None, "epochs (TRADES' 100 on images)")
    batch_size: int | None = skeleton.opt(None, "global batch")
    optimizer: str | None = skeleton.opt(None, "sgd (with --momentum) or adam", choices=("sgd", "adam"))
    lr: float | None = skeleton.opt(None, "learning rate (YOPO's is multiplied by m: see above)")
    momentum: float = skeleton.opt(0.9, "SGD momentum")
    weight_decay: float | None = skeleton.opt(None, "weight decay")
    eps: float | None = skeleton.opt(None, "ℓ∞ radius of training and evaluation")
    attack_alpha: float | None = skeleton.opt(None, "attack step size inside training", renamed_from="alpha")
    attack_steps: int | None = skeleton.opt(None, "attack steps inside training (atta: 1)", renamed_from="steps")
    eps_warmup: int | None = skeleton.opt(
        None, "epochs over which the training ε grows linearly to --eps", fallback="0"
    )
    random_start: bool = skeleton.opt(True, "training attacks start at random (PGD, TRADES, YOPO, Fast, Free, ATTA)")
    trades_beta: float = skeleton.opt(
        6.0, "TRADES' and YOPO-TRADES' β (TRADES paper: 6 on CIFAR-10, 1 on MNIST)", renamed_from="beta"
    )
    replays: int = skeleton.opt(8, "Free-AT: replays per batch, m (Free-AT paper: 8)")
    yopo_m: int = skeleton.opt(5, "YOPO: full passes per batch, m")
    yopo_n: int | None = skeleton.opt(
        None, "YOPO: first-layer steps per pass, n (YOPO paper: 10 MNIST, 3 CIFAR-10)", fallback="3"
    )
    atta_reset: int = skeleton.opt(0, "ATTA: forget the stored perturbations every N epochs (0: never)")
    k_min: int | None = skeleton.opt(None, "Amata: K at the start")
    k_max: int | None = skeleton.opt(None, "Amata: K at the end")
    tau: float | None = skeleton.opt(None, "Amata: τ = K·α, the total step length")
    eval_size: int = skeleton.opt(1000, "test examples of the periodic and final evaluation (0: all)")
    eval_pgd: list[int] = skeleton.opt([40], "PGD steps beside AutoAttack at the end (α = max(ε/4, 2.5ε/k))")  # noqa: RUF009
    final_autoattack: str = skeleton.opt(
        "apgd", "AutoAttack version of the final evaluation (apgd: APGD-CE + APGD-T)", choices=("apgd", "standard")
    )
    train_size: int = skeleton.opt(0, "first N training examples (0: all)")


def load_data(cfg: RobustConfig) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    if cfg.dataset == "two-rings":
        return skeleton.rings_split(cfg.seed, cfg.train_size or 4000, cfg.eval_size or 1000)
    train, test = skeleton.load_images(cfg, cfg.dataset, n_train=cfg.train_size, n_test=cfg.eval_size)
    return train, test


def model_kwargs(cfg: RobustConfig, x: Tensor) -> dict[str, Any]:
    if cfg.arch == "mlp":
        return {"in_features": x[0].numel(), "num_classes": 2, "hidden": [64, 64]}
    if cfg.arch == "smallcnn":
        return {"in_channels": x.shape[1], "image_size": x.shape[2]}
    return {"in_channels": x.shape[1]}


def make_reg(cfg: RobustConfig, model: nn.Module, n_train: int, first: nn.Module) -> Any:
    """The loss object of ``cfg.method`` (None: natural training); ``first`` is YOPO's first layer."""
    bounds = skeleton.PRESETS[cfg.dataset].bounds
    engine = cfg.method.removeprefix("amata-")
    kw = {"eps": cfg.eps, "bounds": bounds, "random_start": cfg.random_start}
    if engine == "natural":
        return None
    if engine == "pgd":
        reg = robustreg.PGDAT(model, alpha=cfg.attack_alpha, steps=cfg.attack_steps, **kw)
    elif engine == "fast":
        reg = robustreg.FastAT(model, **kw)
    elif engine == "free":
        reg = robustreg.FreeAT(model, alpha=cfg.eps, **kw)
    elif engine == "trades":
        reg = robustreg.TRADES(model, alpha=cfg.attack_alpha, steps=cfg.attack_steps, beta=cfg.trades_beta, **kw)
    elif engine in ("yopo", "yopo-trades"):
        objective = "trades" if engine == "yopo-trades" else "ce"
        reg = robustreg.YOPO(
            model, cfg.yopo_m, cfg.yopo_n, alpha=cfg.attack_alpha, first_layer=first, objective=objective,
            beta=cfg.trades_beta, **kw,
        )  # fmt: skip
    else:  # atta
        reg = robustreg.ATTA(
            model, n_train, alpha=cfg.attack_alpha, steps=cfg.attack_steps if cfg.attack_steps is not None else 1,
            reset_every=cfg.atta_reset or None, **kw,
        )  # fmt: skip
    if cfg.method.startswith("amata-"):
        if engine == "fast":
            return robustreg.Amata(reg, total=cfg.epochs)
        return robustreg.Amata(reg, k_min=cfg.k_min, k_max=cfg.k_max, tau=cfg.tau, total=cfg.epochs)
    return reg


PERIODIC_STEPS = 40  # the periodic evaluation: never weaker than PGD-40 with k·α ≥ 2ε


def periodic_attacks(cfg: RobustConfig) -> dict[str, Any]:
    """PGD-40 with α = 2.5ε/40 (k·α = 2.5ε: the steps cross the ball), for the curves."""
    bounds = skeleton.PRESETS[cfg.dataset].bounds
    return {f"pgd{PERIODIC_STEPS}": robustreg.PGD(eps=cfg.eps, steps=PERIODIC_STEPS, bounds=bounds)}


def final_attacks(cfg: RobustConfig) -> dict[str, Any]:
    """AutoAttack ``--final-autoattack`` (seeded by ``--seed``), PGD-k for k in ``--eval-pgd`` and
    CW-ℓ∞ (30 steps): :func:`skeleton.attack_suite`, which ``recipes/evaluate.py`` runs too."""
    bounds = skeleton.PRESETS[cfg.dataset].bounds
    return skeleton.attack_suite(
        cfg.eps, bounds=bounds, autoattack=cfg.final_autoattack, pgd_steps=cfg.eval_pgd, seed=cfg.seed
    )


def evaluate(
    model: nn.Module, test: tuple[Tensor, Tensor], atks: dict[str, Any], progress: Any = None
) -> dict[str, float]:
    acc = robustreg.robust_accuracy(model, test, attack=atks, batch_size=250, progress=progress)
    return {"clean_acc": acc.clean, **{f"{k}_acc": v for k, v in acc.per_attack.items()}, "robust_acc": acc.robust}


def resolve(cfg: RobustConfig) -> RobustConfig:
    d = DEFAULTS[cfg.dataset]
    cfg = dataclasses.replace(cfg, eps_warmup=d.get("eps_warmup", 0) if cfg.eps_warmup is None else cfg.eps_warmup)
    cfg = dataclasses.replace(cfg, yopo_n=d.get("yopo_n", 3) if cfg.yopo_n is None else cfg.yopo_n)
    keys = (
        "optimizer",
        "arch",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "eps",
        "attack_alpha",
        "attack_steps",
        "k_min",
        "k_max",
        "tau",
    )
    cfg = dataclasses.replace(cfg, **{k: d[k] for k in keys if getattr(cfg, k) is None and k != "attack_steps"})
    if cfg.attack_steps is None and cfg.method not in ("atta", "amata-atta"):
        cfg = dataclasses.replace(cfg, attack_steps=d["attack_steps"])
    if cfg.arch not in ARCHITECTURES:
        raise SystemExit(f"error: --arch must be one of {', '.join(ARCHITECTURES)}, got {cfg.arch!r}")
    if cfg.dataset == "two-rings" and cfg.arch != "mlp":
        raise SystemExit("error: two-rings data are vectors: --arch mlp")
    for name in ("epochs", "batch_size", "replays", "yopo_m", "yopo_n"):
        if getattr(cfg, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.eval_pgd or min(cfg.eval_pgd) < 1:
        raise SystemExit(f"error: --eval-pgd steps must be >= 1, got {cfg.eval_pgd}")
    if not robustreg.autoattack.available():  # before training, not after it
        raise SystemExit(
            "error: the final evaluation runs AutoAttack, which needs the authors' package pyautoattack: "
            + robustreg.autoattack.INSTALL
        )
    return cfg


def make_optimizer(cfg: RobustConfig, model: nn.Module, total: int) -> tuple[Any, Any]:
    """SGD (``--momentum``) or Adam, the learning rate dropping 10× at 75% and 90% of ``total`` steps.
    YOPO's learning rate is multiplied by m: the paper sums the m gradients, YOPO averages them."""
    lr = cfg.lr * (cfg.yopo_m if cfg.method.removeprefix("amata-").startswith("yopo") else 1)
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.75 * total), int(0.9 * total)], 0.1)


def replays(cfg: RobustConfig, reg: Any) -> int:
    """How many times a step trains on its batch: Free-AT's m (``--replays``; Amata's K over
    Free-AT), 1 otherwise."""
    if cfg.method.removeprefix("amata-") != "free":
        return 1
    return reg.replays if isinstance(reg, robustreg.Amata) else cfg.replays


def train_metrics(loss: Tensor, reg: Any, lr: float) -> dict[str, Any]:
    """The logged training metrics: learning rate, loss, the loss's parts and the adversaries'
    accuracy (``*_loss``, ``*_acc`` of ``reg.last``) and Amata's K and α."""
    metrics: dict[str, Any] = {"lr": lr, "loss": loss.detach()}
    if reg is not None and reg.last is not None:
        last = reg.last.metrics
        metrics |= {k: v for k, v in last.items() if k.endswith(("_loss", "_acc")) and isinstance(v, Tensor)}
        metrics |= {k: float(last[k]) for k in ("K", "alpha") if k in last}
    return metrics


def main(argv: list[str] | None = None, **defaults: Any) -> dict[str, Any]:
    cfg = resolve(skeleton.parse(RobustConfig, argv, __doc__, by_dataset=DEFAULTS, **defaults))
    train, test = load_data(cfg)
    run = skeleton.Run(cfg, f"robust_{cfg.dataset}_{cfg.method}", small_model=cfg.dataset == "two-rings")
    acc = run.accelerator
    torch.manual_seed(cfg.seed)
    kwargs = model_kwargs(cfg, train[0])
    model = ARCHITECTURES[cfg.arch](**kwargs)
    run.describe(cfg.arch, kwargs, threat_model={"norm": "linf", "eps": cfg.eps})
    per_epoch = max(1, len(train[0]) // min(cfg.batch_size, len(train[0])))
    total = cfg.epochs * per_epoch
    model, opt, sched = run.prepare(model, *make_optimizer(cfg, model, total))
    reg = make_reg(cfg, model, len(train[0]), acc.unwrap_model(model).layer_one)
    inner = reg.engine if isinstance(reg, robustreg.Amata) else reg
    # Amata's clock, ATTA's stored perturbations, Free-AT's carried δ
    run.resume({name: obj for name, obj in (("reg", reg), ("engine", inner)) if hasattr(obj, "state_dict")})
    # ε (and a fixed α) grow linearly over the first --eps-warmup epochs; then the engine's epoch clock
    warmup = robustreg.EpsWarmup(reg, cfg.eps_warmup) if reg is not None and cfg.eps_warmup else None
    clocks = [c for c in (warmup, reg) if hasattr(c, "set_epoch")]
    stop = run.stop(total)
    stream = run.batches([*train, torch.arange(len(train[0]))], cfg.batch_size, stop=stop)
    test_dev = tuple(t.to(acc.device) for t in test)
    periodic = periodic_attacks(cfg)
    model.train()
    with run.progress(stop, f"{cfg.method} on {cfg.dataset}"):
        for step in range(run.start, stop):
            if step % per_epoch == 0 or step == run.start:
                for clock in clocks:
                    clock.set_epoch(step // per_epoch)
            x, y, idx = next(stream)
            for _ in range(replays(cfg, reg)):
                with acc.accumulate(model), run.step_guard(step, model) as guard:
                    loss = F.cross_entropy(model(x), y) if reg is None else reg(x, y, idx)
                    opt.zero_grad(set_to_none=True)
                    acc.backward(loss)
                    if guard.ok(loss, model.parameters()):  # a non-finite step is skipped, not applied
                        opt.step()
            sched.step()
            if isinstance(inner, robustreg.ATTA) and acc.num_processes > 1:  # every process keeps every δ
                rows = idx.to(inner.memory.device)
                inner.remember(acc.gather(idx), acc.gather(inner.memory[rows].to(x.device)))
            done = step + 1
            run.end_step(
                done, stop, done / per_epoch,
                metrics=lambda loss=loss: train_metrics(loss, reg, sched.get_last_lr()[0]),
                evaluate=lambda: evaluate(acc.unwrap_model(model), test_dev, periodic),
            )  # fmt: skip
    summary: dict[str, Any] = {"method": cfg.method, "dataset": cfg.dataset, "epochs": cfg.epochs, "eps": cfg.eps}
    summary |= {"steps": stop, "planned_steps": total}
    if run.main:
        with run.eval_progress("final evaluation (attack runs)") as hook:
            summary |= evaluate(acc.unwrap_model(model), test_dev, final_attacks(cfg), hook)
    title = f"{cfg.method}, {cfg.dataset}, ε = {cfg.eps:.4g}"
    return run.finish(model, summary=summary, title=title)


if __name__ == "__main__":
    main()
