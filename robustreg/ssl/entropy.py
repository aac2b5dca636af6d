"""Conditional-entropy minimisation (Grandvalet and Bengio, NeurIPS 2004), VAT's companion."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ..modes import unwrap
from ..record import Record


class EntMin:
    """``reg(x)`` (or ``reg(logits=...)``) returns the mean entropy ``−Σ_c p_c log p_c`` of the
    model's predictions on the batch; its gradient flows through the predictions (VAT+EntMin
    adds it to the VAT loss). The forward runs in the mode the user left the model in. EntMin
    takes no labels: ``reg(x, y)`` raises ``TypeError``. ``reg.last.metrics``: ``entropy``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = _checks.module("model", model)
        self._num_classes: int | None = None
        self.last: Record | None = None

    def __call__(self, x: Tensor | None = None, *labels: object, logits: Tensor | None = None) -> Tensor:
        """The mean prediction entropy. Checked first, changing nothing on failure: no second
        positional argument (EntMin takes no labels: ``TypeError``); ``logits``, when given, a
        floating ``(B, C)`` tensor (x, if also given, must match its batch; the model is not run);
        otherwise x a non-empty finite floating batch of the model's dtype, and the model's output
        ``(B, C)`` logits (probed once on one sample in eval mode without gradients, then cached)."""
        _checks.no_labels("EntMin", labels, reuse="reg(logits=model(x))")
        if logits is None:
            if x is None:
                raise TypeError("pass x (a batch) or logits= (the model's output on it)")
            x = _checks.check_x(x, None)
            self._num_classes = _checks.classes_of(unwrap(self.model), x, self._num_classes)
            logits = self.model(x)
        else:
            batch = None
            if x is not None:
                batch = _checks.check_x(x, None).shape[0]
            _checks.check_logits(logits, batch)
        logp = F.log_softmax(logits, dim=1)
        entropy = -(logp.exp() * logp).sum(1).mean()
        self.last = Record(metrics={"entropy": entropy.detach()})
        return entropy
