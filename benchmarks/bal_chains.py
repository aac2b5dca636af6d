"""How different the S_θ weight chains of the BAL and BNN ensembles of a ``recipes/bal.py`` run are.

    python benchmarks/bal_chains.py runs/bal_mnist --dataset mnist --data-dir ../shared/data

For each ensemble (``bnn``, ``bal``, ``bal-S<k>``; ``--models`` to choose) of the run directory: the
mean distance of a chain's weights from the ERM weights every chain started at, the mean distance
between two chains (both relative to ‖θ_ERM‖), how often two chains disagree on the first
``--images`` test images, and each chain's accuracy there beside the ensemble's. An ensemble of
copies of one point estimate would have 0 disagreement and the ensemble's accuracy equal to its
chains'; the posterior average can only help robustness where the chains differ. (The weight
distances are dominated by elements whose gradient is near zero, such as a dead unit's weights, which
take SGAdaLD's largest noise: see docs/methods/bal.md. Disagreement is the figure that matters.)
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector

from robustreg import cli
from robustreg.checkpoint import load_model
from robustreg.data import load_vision

from reporting import write_json


def flat(model: nn.Module) -> Tensor:
    return parameters_to_vector(model.parameters()).detach()


def chains_report(ensemble: nn.Module, start: Tensor, x: Tensor, y: Tensor) -> dict[str, Any]:
    """The figures of the module docstring for one ensemble (``ensemble.members``: its chains)."""
    members = list(ensemble.members)
    weights = [flat(m) for m in members]
    with torch.no_grad():
        preds = [m(x).argmax(1) for m in members]
        ensemble_acc = float((ensemble(x).argmax(1) == y).float().mean())
    pairs = list(itertools.combinations(range(len(members)), 2))
    scale = float(start.norm())
    return {
        "chains": len(members),
        "from_erm": statistics.fmean(float((w - start).norm()) / scale for w in weights),
        "between_chains": statistics.fmean(float((weights[i] - weights[j]).norm()) / scale for i, j in pairs)
        if pairs
        else 0.0,
        "disagreement": statistics.fmean(float((preds[i] != preds[j]).float().mean()) for i, j in pairs)
        if pairs
        else 0.0,
        "chain_accuracy": [float((p == y).float().mean()) for p in preds],
        "ensemble_accuracy": ensemble_acc,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument("run", type=Path, help="the recipe's --out directory (holds erm/model and each ensemble's model)")
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashionmnist"), help="the run's data set")
    p.add_argument("--data-dir", default="../shared/data", help="root of the torchvision data sets")
    p.add_argument("--models", default="", help="comma list of ensembles (empty: bnn, bal and bal-S<k> found)")
    p.add_argument("--images", type=int, default=1000, help="first N test images")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    args = p.parse_args(argv)
    if args.images < 1:
        p.error(f"--images must be >= 1, got {args.images}")
    if not args.run.is_dir():
        p.error(f"run: {args.run} is not a directory (the recipe's --out)")
    torch.set_num_threads(args.threads)
    found = [d.name for d in args.run.iterdir() if d.name in ("bnn", "bal") or d.name.startswith("bal-S")]
    names = args.models.split(",") if args.models else sorted(found, key=lambda n: (n == "bnn", len(n), n))
    missing = [n for n in ["erm", *names] if not (args.run / n / "model").is_dir()]
    if missing:
        p.error(f"no saved model under {args.run} for {', '.join(missing)} (is the run finished?)")
    start = flat(load_model(args.run / "erm" / "model")[0])
    x, y = load_vision(args.dataset, args.data_dir, train=False)
    x, y = x[: args.images], y[: args.images]
    report: dict[str, Any] = {"run": str(args.run), "dataset": args.dataset, "images": len(x), "models": {}}
    for name in names:
        ensemble = load_model(args.run / name / "model")[0].eval()
        r = report["models"][name] = chains_report(ensemble, start, x, y)
        acc = r["chain_accuracy"]
        print(
            f"{name:8s} S_θ={r['chains']:2d}  ‖θ_s − θ_ERM‖ {r['from_erm']:.3f}  ‖θ_s − θ_t‖ {r['between_chains']:.3f}"
            f" (× ‖θ_ERM‖)  disagreement {100 * r['disagreement']:.2f}%  chains {100 * min(acc):.1f}–"
            f"{100 * max(acc):.1f}%  ensemble {100 * r['ensemble_accuracy']:.1f}%"
        )
        if args.out:
            write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
