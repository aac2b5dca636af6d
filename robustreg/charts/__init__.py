"""Charts of data manifolds for :class:`robustreg.TNAR`: any object with batched
``encode(x) -> z`` and ``decode(z) -> x`` is one (:class:`robustreg.ssl.Chart`), as is a local
chart with ``at(x) -> (z, decode)`` (:class:`LocalizedGAN`)."""

from ..checkpoint import load_chart
from .learned import VAE, AutoEncoder, MLPAutoEncoder, train_chart
from .lgan import LocalizedGAN, lgan_optimizers, lgan_step, train_lgan
from .oracle import LinearChart, RingsChart
from .registry import CHARTS

__all__ = [
    "CHARTS",
    "VAE",
    "AutoEncoder",
    "LinearChart",
    "LocalizedGAN",
    "MLPAutoEncoder",
    "RingsChart",
    "lgan_optimizers",
    "lgan_step",
    "load_chart",
    "train_chart",
    "train_lgan",
]
