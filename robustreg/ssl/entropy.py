"""Conditional-entropy minimisation (Grandvalet and Bengio, NeurIPS 2004), VAT's companion."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..modes import unwrap


class EntMin:
    """``reg(x)`` (or ``reg(x, logits=...)``) returns the mean entropy ``−Σ_c p_c log p_c`` of the
    model's predictions on the batch; its gradient flows through the predictions (VAT+EntMin
    adds it to the VAT loss). The forward runs in the mode the user left the model in."""

    def __init__(self, model: nn.Module) -> None:
        self.model = _checks.module("model", model)
        self._num_classes: int | None = None

    def __call__(self, x: Tensor | None = None, *, logits: Tensor | None = None) -> Tensor:
        """The mean prediction entropy. Checked first, changing nothing on failure: ``logits``,
        when given, a finite floating ``(B, C)`` tensor (x, if also given, must match its batch);
        otherwise x a non-empty finite floating batch, and the model's output ``(B, C)`` logits
        (probed once on one sample in eval mode without gradients, then cached)."""
        if logits is None:
            if x is None:
                raise TypeError("pass x (a batch) or logits= (the model's output on it)")
            x = _checks.check_x(x, None)
            if self._num_classes is None:
                self._num_classes = _checks.num_classes(unwrap(self.model), x)
            logits = self.model(x)
        else:
            batch = None
            if x is not None:
                batch = _checks.check_x(x, None).shape[0]
            _checks.check_logits(logits, batch)
        logp = F.log_softmax(logits, dim=1)
        return -(logp.exp() * logp).sum(1).mean()
