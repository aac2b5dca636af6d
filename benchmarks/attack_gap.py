"""Which attack breaks which points: every attack of ``--attacks`` run on its own against a saved
model, on the same test images, and per-sample bookkeeping of what each one finds. Use it when
two evaluations of one model disagree (robustreg's PGD above AutoAttack, say) to see whether the
attack's schedule, its restarts or its loss makes the difference.

The attacks (all within the same ``--norm`` ball of radius ``--eps``, in [0, 1]):

- ``pgd40``: PGD on the cross-entropy, 40 steps of α = ε/4, random start (``recipes/evaluate.py``'s PGD-40);
- ``pgd200``: the same with 200 steps of α = ε/40 (a finer schedule);
- ``pgd40x10``: ``pgd40`` with 10 restarts (more starts);
- ``cw40``: PGD on the CW margin, 40 steps of α = ε/4;
- ``cwl2``, ``cwl2-1000`` (``--norm l2`` only): the Carlini–Wagner ℓ2 attack (:class:`robustreg.CWL2`)
  within ε, at its defaults (100 Adam steps of 0.1 per value of c, 9 values), and with the paper's
  Adam step 0.01 and 1000 steps;
- ``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``: the components of AutoAttack standard, each alone,
  from the authors' ``pyautoattack`` (APGD on the cross-entropy, targeted APGD on the DLR margin,
  targeted FAB, the gradient-free Square attack);
- ``autoattack``: AutoAttack standard itself.

The report gives, per attack, the robust accuracy and its time; the robust accuracy of the union
of all attacks (a point counts as broken if any attack breaks it); for each attack, the points it
alone breaks; how many of ``pgd40``'s survivors each attack breaks; and the statistics of the
model's clean logits on the correctly classified images (median range max − min, median margin
top-1 − top-2, median softmax probability of the label), which show whether the cross-entropy is
saturated (p_y near 1: its gradient vanishes) or nearly flat (p_y near 1/C: it is almost linear
in the logits and pushes every wrong class up at once). It is written after every attack.

    python benchmarks/attack_gap.py runs/msa_fashionmnist/msa/model --eps 0.1 --eval-size 200 \\
        --out benchmarks/results/msa_stability/fashionmnist_autoattack/attack_gap_msa_linf_0.1.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import robustreg
from robustreg import autoattack, cli
from robustreg.checkpoint import load_model
from robustreg.data import load_vision

from reporting import loadavg, progress_bar, write_json

ATTACKS = ("pgd40", "pgd200", "pgd40x10", "cw40", "cwl2", "cwl2-1000", "apgd-ce", "apgd-t", "fab-t", "square",
           "autoattack")  # fmt: skip
OWN = ("pgd40", "pgd200", "pgd40x10", "cw40", "cwl2", "cwl2-1000")  # robustreg's: no pyautoattack needed
DATASETS = ("mnist", "fashionmnist", "cifar10", "svhn")


def make_attack(name: str, eps: float, norm: str) -> Any:
    """The attack ``name`` of the module docstring at radius ``eps`` in ``norm``."""
    if name == "pgd40":
        return robustreg.PGD(eps=eps, alpha=eps / 4, steps=40, norm=norm)
    if name == "pgd200":
        return robustreg.PGD(eps=eps, alpha=eps / 40, steps=200, norm=norm)
    if name == "pgd40x10":
        return robustreg.PGD(eps=eps, alpha=eps / 4, steps=40, norm=norm, restarts=10)
    if name == "cw40":
        return robustreg.PGD(eps=eps, alpha=eps / 4, steps=40, norm=norm, loss="cw")
    if name == "cwl2":
        return robustreg.CWL2(eps=eps)
    if name == "cwl2-1000":
        return robustreg.CWL2(eps=eps, steps=1000, lr=0.01)
    if name == "autoattack":
        return robustreg.AutoAttack(eps=eps, norm=norm, version="standard")
    return robustreg.AutoAttack(eps=eps, norm=norm, version="custom", attacks=(name,))


@torch.no_grad()
def correct(model: nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> Tensor:
    return torch.cat([model(x[i : i + batch]).argmax(1) == y[i : i + batch] for i in range(0, len(x), batch)])


@torch.no_grad()
def logit_stats(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """Medians over the correctly classified images of the clean logits' range, the top-1 − top-2
    margin and the softmax probability of the label."""
    z = torch.cat([model(x[i : i + 500]) for i in range(0, len(x), 500)])
    ok = z.argmax(1) == y
    if not bool(ok.any()):
        return {}
    z, y = z[ok], y[ok]
    top2 = z.topk(2, dim=1).values
    p_y = torch.softmax(z, 1).gather(1, y[:, None]).squeeze(1)
    return {
        "logit_range_median": float((z.amax(1) - z.amin(1)).median()),
        "margin_median": float((top2[:, 0] - top2[:, 1]).median()),
        "p_label_median": float(p_y.median()),
        "uniform_p": 1.0 / z.shape[1],
    }


def test_images(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """The first ``--eval-size`` test images of the model's data set (random tensors of the model's
    input shape with ``--synthetic``)."""
    if args.synthetic:
        kw = meta.get("kwargs", {})
        shape = (kw.get("in_channels", 1), kw.get("image_size", 28), kw.get("image_size", 28))
        gen = torch.Generator().manual_seed(0)
        return torch.rand(args.eval_size, *shape, generator=gen), torch.randint(
            0, kw.get("num_classes", 10), (args.eval_size,), generator=gen
        )
    dataset = args.dataset or meta.get("config", {}).get("dataset")
    if dataset not in DATASETS:
        raise SystemExit(f"error: the model does not name its data set: pass --dataset (one of {', '.join(DATASETS)})")
    x, y = load_vision(dataset, args.data_dir, train=False)
    return x[: args.eval_size], y[: args.eval_size]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument("model", type=Path, help="a saved model's directory (model.json + model.safetensors)")
    p.add_argument("--eps", type=float, required=True, help="radius of the threat model, in [0, 1] pixel units")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf", help="threat model")
    p.add_argument(
        "--attacks", default=None,
        help=f"comma list drawn from {', '.join(ATTACKS)} (default: all of them that apply to --norm; cwl2 and "
        "cwl2-1000 with l2 only)",
    )  # fmt: skip
    p.add_argument("--eval-size", type=int, default=200, help="first N test images")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="data set (none: the model's own)")
    p.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("ROBUSTREG_DATA", "../shared/data")),
        help="root of the torchvision data sets ($ROBUSTREG_DATA, else ../shared/data)",
    )  # fmt: skip
    p.add_argument("--synthetic", action="store_true", help="random tensors of the model's input shape")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="the JSON report (also written after every attack)")
    args = p.parse_args(argv)
    if args.attacks is None:
        args.attacks = ",".join(a for a in ATTACKS if args.norm == "l2" or not a.startswith("cwl2"))
    args.attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in args.attacks if a not in ATTACKS]
    if unknown or not args.attacks or len(set(args.attacks)) != len(args.attacks):
        p.error(f"--attacks must be distinct names from {', '.join(ATTACKS)}, got {','.join(args.attacks)!r}")
    if not args.eps > 0:
        p.error(f"--eps must be > 0, got {args.eps}")
    if args.eval_size < 1 or args.threads < 1:
        p.error("--eval-size and --threads must be >= 1")
    if "pgd40" not in args.attacks:
        args.attacks.insert(0, "pgd40")  # the reference of the survivors' table
    if args.norm != "l2" and {"cwl2", "cwl2-1000"} & set(args.attacks):
        p.error("--attacks cwl2 and cwl2-1000 need --norm l2 (Carlini–Wagner ℓ2)")
    if any(a not in OWN for a in args.attacks) and not autoattack.available():
        p.error(f"the AutoAttack components need the authors' package: {autoattack.INSTALL}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        model, meta = load_model(args.model)
        x, y = test_images(args, meta)
        clean = correct(model, x, y)
        report: dict[str, Any] = {
            "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                       "torch": torch.__version__, "loadavg_start": loadavg()},
            "n": len(y), "clean_acc": round(float(clean.float().mean()), 6), "logits": logit_stats(model, x, y),
            "attacks": {}, "partial": True,
        }  # fmt: skip
        robust: dict[str, Tensor] = {}
        with progress_bar() as bar:
            task = bar.add_task(f"attacks on {len(y)} images", total=len(args.attacks))
            for name in args.attacks:
                start = time.perf_counter()
                x_adv = make_attack(name, args.eps, args.norm)(model, x, y)
                robust[name] = correct(model, x_adv, y) & clean
                report["attacks"][name] = {
                    "robust_acc": round(float(robust[name].float().mean()), 6),
                    "seconds": round(time.perf_counter() - start, 2),
                }
                report |= summarise(robust, clean)
                report["config"]["loadavg_end"] = loadavg()
                report["partial"] = name != args.attacks[-1]
                if args.out:
                    write_json(args.out, report)
                bar.update(task, advance=1)
    finally:
        torch.set_num_threads(threads_before)
    print({k: v["robust_acc"] for k, v in report["attacks"].items()} | {"union": report["union_robust_acc"]})
    return report


def summarise(robust: dict[str, Tensor], clean: Tensor) -> dict[str, Any]:
    """The union's robust accuracy, the points each attack alone breaks, and how many of pgd40's
    survivors each attack breaks (counts of images)."""
    union = torch.stack(list(robust.values())).all(0)
    alone = {
        name: int((clean & ~ok & torch.stack([o for n, o in robust.items() if n != name]).all(0)).sum())
        if len(robust) > 1 else int((clean & ~ok).sum())
        for name, ok in robust.items()
    }  # fmt: skip
    return {
        "union_robust_acc": round(float(union.float().mean()), 6),
        "broken_by_it_alone": alone,
        "pgd40_survivors_broken": {name: int((robust["pgd40"] & ~ok).sum()) for name, ok in robust.items()},
    }


if __name__ == "__main__":
    main()
