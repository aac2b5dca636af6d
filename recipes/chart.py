"""Chart pretraining for TAR / NAR / TNAR: a VAE, a convolutional autoencoder, a Localized GAN or
a fully connected (optionally circular) autoencoder, fitted to the training images (all of them,
no labels) of FashionMNIST, MNIST, SVHN, CIFAR-10, or to the two-rings points.

- ``vae``: the ELBO of :class:`robustreg.charts.VAE` (Kingma & Welling 2014); its decoder at the
  posterior mean is the chart. Default latent 20, width 16 (our FashionMNIST chart).
- ``ae``: :class:`robustreg.charts.AutoEncoder`, squared reconstruction error.
- ``lgan``: :class:`robustreg.charts.LocalizedGAN` (Qi et al. 2018): GAN loss + λ_loc·locality +
  λ_orth·orthonormality, Adam 2e-4, β = (0.5, 0.999); latent 10, width 32.
- ``mlp-ae``: :class:`robustreg.charts.MLPAutoEncoder`, for vector data (two rings: one circular
  latent, so the chart has no seam).

    python recipes/chart.py --dataset fashionmnist --kind vae --data-dir ../shared/data
    accelerate launch recipes/chart.py --dataset cifar10 --kind lgan --epochs 20
    python recipes/semisupervised.py --dataset fashionmnist --chart-path runs/chart_fashionmnist_vae/model

Writes ``<out>/model/`` (safetensors + JSON, loadable by ``robustreg.checkpoint.load_model`` and
``recipes/semisupervised.py --chart-path``), ``metrics.jsonl`` (training losses, and the
reconstruction error on 256 held-out test images every ``--eval-every`` steps and at the end),
``summary.json``, ``reconstructions.png`` and checkpoints. Under several processes each takes a
share of every batch and the gradients are averaged before each Adam step. Charts train in
float32 with one Adam step a batch (no ``--mixed-precision``, no ``--grad-accum``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import skeleton
import torch
from torch import Tensor, nn

import robustreg
from robustreg.charts import (
    VAE,
    AutoEncoder,
    LocalizedGAN,
    MLPAutoEncoder,
    lgan_optimizers,
    lgan_step,
    train_chart,
    train_lgan,
)
from robustreg.data import rings_ssl

KINDS = ("vae", "ae", "lgan", "mlp-ae")
#: what a chart of each kind gets when --latent, --width or --lr is not given (``--help`` lists it)
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "vae": {"latent": 20, "width": 16, "lr": 1e-3},
    "ae": {"latent": 20, "width": 16, "lr": 1e-3},
    "lgan": {"latent": 10, "width": 32, "lr": 2e-4},
    "mlp-ae": {"latent": 1, "width": 128, "lr": 1e-3},
}
DATASETS = ("fashionmnist", "mnist", "svhn", "cifar10", "two-rings")
LGAN_DEFAULTS = {"lr": 2e-4, "sigma": 1.0, "locality": 10.0, "orthonormality": 10.0, "jacobian_batch": 16}


@dataclass
class ChartConfig(skeleton.RunConfig):
    out: str = skeleton.opt("", "output directory (empty: runs/chart_<dataset>_<kind>)")
    dataset: str = skeleton.opt("fashionmnist", "data set (training split, labels unused)", choices=DATASETS)
    kind: str = skeleton.opt("vae", "chart", choices=KINDS)
    latent: int | None = skeleton.opt(None, "latent dimension")
    width: int | None = skeleton.opt(None, "channels of the first conv (vae, ae, lgan) or hidden units (mlp-ae)")
    epochs: int = skeleton.opt(10, "passes over the training set")
    batch_size: int = skeleton.opt(64, "global batch")
    lr: float | None = skeleton.opt(None, "Adam's learning rate")
    circular: bool = skeleton.opt(True, "mlp-ae: angle latents (a closed curve without a seam)")
    sigma: float = skeleton.opt(1.0, "lgan: σ of z ~ N(0, σ²I)")
    locality: float = skeleton.opt(10.0, "lgan: λ_loc of ‖G(x, 0) − x‖²")
    orthonormality: float = skeleton.opt(10.0, "lgan: λ_orth of ‖JᵀJ − I‖²_F")
    jacobian_batch: int = skeleton.opt(16, "lgan: samples of each batch whose Jacobian enters λ_orth (0: all)")
    train_size: int = skeleton.opt(0, "first N training images (0: all)")


def build(
    kind: str, shape: tuple[int, ...], latent: int | None = None, width: int | None = None, **kw: Any
) -> nn.Module:
    """A fresh chart of ``kind`` for samples of ``shape``, with our defaults."""
    latent, width = latent or KIND_DEFAULTS[kind]["latent"], width or KIND_DEFAULTS[kind]["width"]
    if kind == "vae":
        return VAE(shape, latent=latent, width=width)
    if kind == "ae":
        return AutoEncoder(shape, latent=latent, width=width)
    if kind == "lgan":
        return LocalizedGAN(shape, latent=latent, width=width)
    return MLPAutoEncoder(shape, latent, hidden=width, circular=kw.get("circular", True))


def fit(kind: str, data: Tensor, *, epochs: int, seed: int) -> nn.Module:
    """A chart of ``kind`` trained on ``data`` in this process, with the library's loops (used by
    ``recipes/semisupervised.py`` when it is given no chart)."""
    torch.manual_seed(seed)
    chart = build(kind, tuple(data.shape[1:]))
    if kind == "lgan":
        train_lgan(chart, data, epochs=epochs, seed=seed, batch_size=64, **LGAN_DEFAULTS)
    else:
        train_chart(chart, data, epochs=epochs, seed=seed)
    return chart.eval()


def main(argv: list[str] | None = None, **defaults: Any) -> dict[str, Any]:
    cfg = skeleton.parse(ChartConfig, argv, __doc__, by_dataset=KIND_DEFAULTS, by_label="--kind", **defaults)
    if cfg.dataset == "two-rings":
        if cfg.kind != "mlp-ae":
            raise SystemExit("error: two-rings points are vectors: use --kind mlp-ae")
        images = rings_ssl(3000, seed=cfg.seed).x_unlabeled  # (3000, 2)
        held = rings_ssl(256, seed=cfg.seed + 1).x_unlabeled  # other points of the same rings
    else:
        (images, _), (held, _) = skeleton.load_images(cfg, cfg.dataset, n_train=cfg.train_size, n_test=256)
    if cfg.mixed_precision != "no" or cfg.grad_accum != 1:
        raise SystemExit("error: charts train in float32, one Adam step a batch: no --mixed-precision or --grad-accum")
    run = skeleton.Run(cfg, f"chart_{cfg.dataset}_{cfg.kind}", small_model=cfg.dataset == "two-rings")
    acc = run.accelerator
    torch.manual_seed(cfg.seed)
    chart = build(cfg.kind, tuple(images.shape[1:]), cfg.latent, cfg.width, circular=cfg.circular).to(acc.device)
    run.describe(cfg.kind, chart.config)
    lr = cfg.lr or KIND_DEFAULTS[cfg.kind]["lr"]
    if cfg.kind == "lgan":
        opts = dict(zip(("opt_g", "opt_d"), lgan_optimizers(chart, lr), strict=True))
    else:
        opts = {"opt": torch.optim.Adam(chart.parameters(), lr=lr)}
    # the chart is not wrapped in DDP (the LGAN steps G and D separately): gradients are averaged here
    run.resume({"chart": chart, **opts})

    guard: skeleton.StepGuard | None = None

    def sync(params: list[Tensor]) -> None:
        if acc.num_processes > 1:
            for p in params:
                if p.grad is not None:
                    p.grad = acc.reduce(p.grad, "mean")
        if guard is not None:  # a non-finite update of D or of G is dropped (its gradients set to None)
            guard.ok(None, params)

    per_epoch = max(1, len(images) // min(cfg.batch_size, len(images)))
    steps = run.stop(cfg.epochs * per_epoch)  # no schedule here: a capped run is the run
    stream = run.batches([images], cfg.batch_size, stop=steps)
    chart.train()
    with run.progress(steps, f"{cfg.kind} chart on {cfg.dataset}"):
        for step in range(run.start, steps):
            (x,) = next(stream)
            with run.step_guard(step, chart) as guard:
                if cfg.kind == "lgan":
                    z = cfg.sigma * torch.randn(len(x), chart.latent, device=x.device, dtype=x.dtype)  # (B, latent)
                    values = lgan_step(
                        chart, x, z, opts["opt_g"], opts["opt_d"], cfg.locality, cfg.orthonormality,
                        cfg.jacobian_batch or None, sync=sync,
                    )  # fmt: skip
                else:
                    loss = chart.loss(x)
                    opts["opt"].zero_grad(set_to_none=True)
                    loss.backward()
                    sync(list(chart.parameters()))
                    if guard.ok(loss, chart.parameters()):
                        opts["opt"].step()
                    values = {"loss": loss.detach()}
            guard = None
            done = step + 1
            run.end_step(  # the final evaluation follows the loop
                done, steps, done / per_epoch, evaluate_at_stop=False,
                metrics=lambda values=values: values,
                evaluate=lambda: recon_errors(chart, held.to(acc.device))[0],
            )  # fmt: skip
    summary: dict[str, Any] = {"kind": cfg.kind, "dataset": cfg.dataset, "steps": steps}
    if run.main:
        held = held.to(acc.device)
        errors, recon = recon_errors(chart, held)
        run.log(steps, steps / per_epoch, kind="eval", **errors)
        summary |= errors
        if held.dim() == 4:
            from robustreg import plots

            rows = [("x", held[:8]), ("on the chart", recon[:8].clamp(0, 1)), ("r_difference", recon[:8] - held[:8])]
            plots.image_rows(rows, run.out / "reconstructions.png", f"{cfg.kind} chart on {cfg.dataset}")
            summary["reconstructions_plot"] = str(run.out / "reconstructions.png")
    return run.finish(chart, summary=summary, title=f"{cfg.kind} chart, {cfg.dataset}")


def recon_errors(chart: nn.Module, x: Tensor) -> tuple[dict[str, float], Tensor]:
    """Mean ``‖x̂ − x‖₂`` (``recon_error``) and its ratio to the mean ``‖x‖₂`` on held-out ``x``, and x̂."""
    with robustreg.inner_mode(chart, "eval"), torch.no_grad():
        recon = reconstruct(chart, x)
    error = float((recon - x).flatten(1).norm(dim=1).mean())
    return {"recon_error": error, "relative_recon_error": error / float(x.flatten(1).norm(dim=1).mean())}, recon


def reconstruct(chart: nn.Module, x: Tensor) -> Tensor:
    """x's point on the chart: ``decode(encode(x))``, or ``G(x, 0)`` for a local chart."""
    if hasattr(chart, "at"):
        z, decode = chart.at(x)
        return decode(z)
    return chart.decode(chart.encode(x))


if __name__ == "__main__":
    main()
