"""Charts of data manifolds for :class:`robustreg.TNAR`: any object with batched
``encode(x) -> z`` and ``decode(z) -> x`` is one (:class:`robustreg.ssl.Chart`)."""

from .oracle import LinearChart, RingsChart

__all__ = ["LinearChart", "RingsChart"]
