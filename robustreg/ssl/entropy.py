"""Conditional-entropy minimisation (Grandvalet and Bengio, NeurIPS 2004), VAT's companion."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class EntMin:
    """``reg(x)`` (or ``reg(x, logits=...)``) returns the mean entropy ``−Σ_c p_c log p_c`` of the
    model's predictions on the batch; its gradient flows through the predictions (VAT+EntMin
    adds it to the VAT loss). The forward runs in the mode the user left the model in."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model

    def __call__(self, x: Tensor | None = None, *, logits: Tensor | None = None) -> Tensor:
        if logits is None:
            if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] == 0:
                raise ValueError("x must be a non-empty batch tensor (B, ...), or pass logits=")
            logits = self.model(x)
        if logits.dim() != 2:
            raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
        logp = F.log_softmax(logits, dim=1)
        return -(logp.exp() * logp).sum(1).mean()
