"""Semi-supervised smoothness regularizers: VAT, TNAR (tangent and normal) and entropy minimisation."""

from .base import VAT_METHODS, SSLRecord
from .entropy import EntMin
from .tnar import TANGENT_MODES, TNAR, Chart
from .vat import VAT

__all__ = ["TANGENT_MODES", "TNAR", "VAT", "VAT_METHODS", "Chart", "EntMin", "SSLRecord"]
