"""robustreg: composable robustness and semi-supervised regularizers for PyTorch.

A regularizer is a loss object built once and called per batch::

    reg = robustreg.PGDAT(model, eps=8 / 255)
    loss = reg(x, y)
    loss.backward()
    optimizer.step()

See ``docs/contract.md`` for what every loss object guarantees.
"""

from . import models
from .adversarial import PGDAT, TRADES, YOPO, AdversarialLoss, FastAT, FreeAT, Record, replay
from .attacks import CW, FGSM, PGD, cw_margin
from .evaluate import Accuracy, MaskingReport, gradient_masking_report, robust_accuracy
from .modes import inner_mode
from .perturb import BALLS, L2Ball, LinfBall, clamp_to_box, get_ball

__version__ = "0.1.0"

__all__ = [
    "BALLS",
    "CW",
    "FGSM",
    "PGD",
    "PGDAT",
    "TRADES",
    "YOPO",
    "Accuracy",
    "AdversarialLoss",
    "FastAT",
    "FreeAT",
    "L2Ball",
    "LinfBall",
    "MaskingReport",
    "Record",
    "clamp_to_box",
    "cw_margin",
    "get_ball",
    "gradient_masking_report",
    "inner_mode",
    "models",
    "replay",
    "robust_accuracy",
]
