"""Semi-supervised smoothness regularizers: VAT and entropy minimisation."""

from .entropy import EntMin
from .vat import VAT, VAT_METHODS, SSLRecord

__all__ = ["VAT", "VAT_METHODS", "EntMin", "SSLRecord"]
