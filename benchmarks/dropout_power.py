"""Does VAT's power step still find the direction of largest curvature when dropout is on? Measured
on the FashionMNIST classifiers of ``benchmarks/fashion_ssl.py``.

    python benchmarks/dropout_power.py --runs vat@do0.5,tnar@do0.5,vat@it8k --seeds 0,1,2

For a classifier in eval mode and an image x, the KL's Hessian in the input at r = 0 is exact and of
rank at most C − 1:

    H = Jᵀ (diag(p) − p pᵀ) J,   J = ∂logits/∂x,   p = softmax(logits(x)),

so its top eigenpair (λ_max, u_max) comes from the C × C matrix ``Lᵀ J Jᵀ L`` (F = diag(p) − ppᵀ = LLᵀ,
L = diag(√p)(I − √p√pᵀ))
and any direction's curvature is ``dᵀHd = (Jd)ᵀ F (Jd)``, with no power iteration. Against them,
the unit directions VAT perturbs along (``reg.last.r_adv`` of ``robustreg.VAT(eps=1)``, one power
step, as the protocol trains):

- ``fd-eval`` / ``hvp-eval``: dropout off (finite differences at ξ = 1e-6, or the exact product);
- ``fd-dropout`` / ``hvp-dropout``: the model in train mode with dropout ``--dropout``, every pass
  with its own mask (as VAT trains with dropout, and as the official code does);
- ``random``: the start of the power iteration (a Gaussian direction).

Reported per direction over the first ``--n`` test images: ``dᵀHd / λ_max`` (1: the top
eigenvector's curvature) and ``|cos(d, u_max)|``, each as mean and median over the images; pooled
over the images, ``Σ dᵀHd / Σ λ_max`` (weighted by curvature: the images where the KL can change
at all) and ``Σ KL(p(x) ‖ p(x + ε d)) / Σ KL(p(x) ‖ p(x + ε u_max))`` at the run's own ε (its
``eps_vat``; what VAT's term penalises, to all orders); and λ_max's mean. The curvature is that
of the eval-mode network, the one evaluated. Results: ``<results>/dropout_power.json``
(atomically after every classifier, ``"partial": true`` until the last). ``--synthetic``: random
tensors and a briefly trained classifier (a smoke run of the code path).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jacrev, vmap

import robustreg
from robustreg import cli
from robustreg.models import SmallCNN

from fashion_ssl import RESULTS, add_data_dir, load
from reporting import progress_bar, write_json
from tangent_flips import classifier_jobs, train_oracle

DIRECTIONS = ("random", "fd-eval", "hvp-eval", "fd-dropout", "hvp-dropout")


@torch.no_grad()  # jacrev, a function transform, differentiates all the same
def top_eigenpairs(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per image, with ``model`` in eval mode: λ_max and the unit u_max of ``H = JᵀFJ``, the logit
    Jacobian J ``(B, C, D)`` and ``F = diag(p) − ppᵀ`` ``(B, C, C)``; λ_max and F in float64 (F of a
    confident prediction is tiny and cancels in float32)."""
    flat = x.flatten(1)  # (B, D)

    def logits(v: Tensor) -> Tensor:
        return model(v.view(1, *x.shape[1:]))[0]

    jac = vmap(jacrev(logits))(flat)  # (B, C, D)
    p = torch.softmax(model(x).double(), dim=1)  # (B, C); the small algebra in float64
    fisher = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (B, C, C)
    s = p.sqrt()
    factor = torch.diag_embed(s) - p[:, :, None] * s[:, None, :]  # L = diag(√p)(I − √p√pᵀ): F = LLᵀ
    gram = jac.double() @ jac.double().transpose(1, 2)  # (B, C, C)
    lam, w = torch.linalg.eigh(factor.transpose(1, 2) @ gram @ factor)  # LᵀJJᵀL: the nonzero spectrum of H
    lam_max, w_max = lam[:, -1].clamp_min(0), w[:, :, -1]  # (B,), (B, C)
    u = (jac.transpose(1, 2).double() @ (factor @ w_max[:, :, None]))[:, :, 0]  # JᵀLw, of norm √λ
    u = (u / lam_max.clamp_min(1e-300).sqrt()[:, None]).to(x.dtype)
    return lam_max, u.view_as(x), jac, fisher


def curvature(jac: Tensor, fisher: Tensor, d: Tensor) -> Tensor:
    """``dᵀHd = (Jd)ᵀ F (Jd)`` per image, d of unit norm per image."""
    a = (jac.double() @ d.flatten(1).double()[:, :, None])[:, :, 0]  # (B, C)
    return (a[:, None, :] @ fisher @ a[:, :, None]).flatten()


def unit(v: Tensor) -> Tensor:
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * (v.dim() - 1))


def vat_direction(model: nn.Module, x: Tensor, method: str, dropout: bool) -> Tensor:
    """VAT's unit perturbation direction (one power step, ``eps=1``), in train mode when ``dropout``
    (each pass its own mask), else in eval mode."""
    reg = robustreg.VAT(model, eps=1.0, method=method)
    model.train(dropout)
    try:
        reg(x)
    finally:
        model.eval()
    return unit(reg.last.r_adv)


@torch.no_grad()
def kl_at(model: nn.Module, x: Tensor, d: Tensor, eps: float) -> Tensor:
    """``KL(p(x) ‖ p(x + εd))`` per image, eval mode."""
    log_p = F.log_softmax(model(x), dim=1)
    log_q = F.log_softmax(model(x + eps * d), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def measure(model: nn.Module, x: Tensor, eps: float, batch: int, seed: int) -> dict:
    """The statistics of every direction of ``DIRECTIONS`` over the images ``x``."""
    torch.manual_seed(seed)
    model.eval()
    parts: dict[str, list[Tensor]] = {"lambda": [], "kl_top": []}
    for name in DIRECTIONS:
        parts |= {f"{name}/curv": [], f"{name}/cos": [], f"{name}/kl": []}
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        lam, u, jac, fisher = top_eigenpairs(model, xb)
        parts["lambda"].append(lam)
        parts["kl_top"].append(kl_at(model, xb, u, eps).double())
        for name in DIRECTIONS:
            if name == "random":
                d = unit(torch.randn_like(xb))
            else:
                kind, mode = name.split("-")
                d = vat_direction(model, xb, "finite_difference" if kind == "fd" else "hvp", mode == "dropout")
            parts[f"{name}/curv"].append(curvature(jac, fisher, d))
            parts[f"{name}/cos"].append((d.flatten(1) * u.flatten(1)).sum(1).abs())
            parts[f"{name}/kl"].append(kl_at(model, xb, d, eps).double())
    cat = {k: torch.cat(v) for k, v in parts.items()}
    lam, kl_top = cat["lambda"], cat["kl_top"]
    out = {"lambda_max_mean": float(lam.mean())}
    for name in DIRECTIONS:
        ratio = (cat[f"{name}/curv"] / lam.clamp_min(1e-300)).tolist()
        cos = cat[f"{name}/cos"].tolist()
        out[name] = {
            "ratio": {"mean": statistics.fmean(ratio), "median": statistics.median(ratio)},
            "cos": {"mean": statistics.fmean(cos), "median": statistics.median(cos)},
            "pooled_ratio": float(cat[f"{name}/curv"].sum() / lam.sum()),
            "pooled_kl_ratio": float(cat[f"{name}/kl"].sum() / kl_top.sum()),
        }
    return out


def run_eps(path: Path) -> float:
    """VAT's ε of the run whose JSON is ``path`` (its ``config.eps_vat``); a missing, truncated or
    edited JSON stops with its path."""
    try:
        eps = float(json.loads(path.read_text())["config"]["eps_vat"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"error: no VAT ε in {path} ({type(err).__name__}: {err})") from None
    if not 0 < eps < float("inf"):
        raise SystemExit(f"error: {path}: eps_vat must be a finite number > 0, got {eps}")
    return eps


def run(args: argparse.Namespace) -> dict:
    jobs, weights, missing = classifier_jobs(args)
    x, y, x_test, _ = load(args)
    xt = x_test[: args.n]
    report = {"n": len(xt), "dropout": args.dropout, "partial": True, "missing": missing, "results": {}}
    with progress_bar() as bar:
        task = bar.add_task("classifiers", total=len(jobs))
        for seed, name in jobs:
            if args.synthetic:
                model, eps = train_oracle(x[:256], y[:256], 1, seed), 2.0
                model.classifier[3].p = args.dropout  # train_oracle builds SmallCNN(): set the dropout measured
            else:
                model = SmallCNN(drop=args.dropout)
                model.load_state_dict(torch.load(weights[seed, name], weights_only=True))
                eps = run_eps(weights[seed, name].with_name(f"{name}.json"))
            row = measure(model, xt, eps, args.batch, seed) | {"eps": eps}
            report["results"][f"{name}, seed {seed}"] = row
            write_json(args.out, report)
            bar.advance(task)
    report["partial"] = False
    write_json(args.out, report)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=cli.summary(__doc__), formatter_class=cli.HelpFormatter)
    p.add_argument("--runs", default="vat@do0.5,tnar@do0.5,vat@it8k", help="comma list of the protocol's runs")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    p.add_argument("--n", type=int, default=500, help="test images")
    p.add_argument("--batch", type=int, default=100, help="images per pass")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout of the *-dropout directions' passes")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--synthetic", action="store_true", help="random tensors and a briefly trained classifier")
    add_data_dir(p)
    p.add_argument("--results", type=Path, default=RESULTS, help="fashion_ssl.py's results (classifiers)")
    p.add_argument("--out", type=Path, default=None, help="report (default: <results>/dropout_power.json)")
    args = p.parse_args(argv)
    args.runs = [r for r in args.runs.split(",") if r]
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        p.error("--seeds must be integers, comma-separated")
    if not args.runs or not args.seeds:
        p.error("--runs and --seeds: give at least one each")
    for name in ("n", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.dropout < 1:
        p.error(f"--dropout must be in (0, 1), got {args.dropout}")
    args.out = args.out or args.results / "dropout_power.json"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    for name, row in report["results"].items():
        print(f"{name}: mean λ_max {row['lambda_max_mean']:.3g}, ε = {row['eps']}")
        for d in DIRECTIONS:
            s = row[d]
            print(
                f"  {d:12s} dᵀHd/λ_max {s['ratio']['mean']:.3f} (median {s['ratio']['median']:.3f}, pooled "
                f"{s['pooled_ratio']:.3f}), |cos(d, u_max)| {s['cos']['mean']:.3f}, "
                f"ΣKL/ΣKL(u_max) at ε {s['pooled_kl_ratio']:.3f}"
            )
    print(f"{report['n']} test images; dropout {report['dropout']} in the *-dropout directions' passes")


if __name__ == "__main__":
    main()
