"""Semi-supervised smoothness regularizers: VAT, TNAR (tangent and normal) and entropy minimisation."""

from .entropy import EntMin
from .tnar import TANGENT_MODES, TNAR, Chart
from .vat import VAT, VAT_METHODS, SSLRecord

__all__ = ["TANGENT_MODES", "TNAR", "VAT", "VAT_METHODS", "Chart", "EntMin", "SSLRecord"]
