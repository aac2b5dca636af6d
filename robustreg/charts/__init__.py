"""Charts of data manifolds for :class:`robustreg.TNAR`: any object with batched
``encode(x) -> z`` and ``decode(z) -> x`` is one (:class:`robustreg.ssl.Chart`)."""

from .learned import VAE, AutoEncoder, load_chart, train_chart
from .oracle import LinearChart, RingsChart

__all__ = ["VAE", "AutoEncoder", "LinearChart", "RingsChart", "load_chart", "train_chart"]
