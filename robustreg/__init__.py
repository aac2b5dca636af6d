"""robustreg: composable robustness and semi-supervised regularizers for PyTorch.

A regularizer is a loss object built once and called per batch::

    reg = robustreg.PGDAT(model, eps=8 / 255)
    loss = reg(x, y)
    loss.backward()
    optimizer.step()

See ``docs/contract.md`` for what every loss object guarantees.
"""

from . import bayes, charts, control, devices, diagnostics, func, interpret, models, ssl
from .adversarial import (
    ATTA,
    PGDAT,
    TRADES,
    YOPO,
    AdversarialLoss,
    Amata,
    AmataSchedule,
    EpsWarmup,
    FastAT,
    FreeAT,
    Record,
    amata_schedule,
    replay,
)
from .attacks import CW, CWL2, FGSM, PGD, cw_margin
from .autoattack import AutoAttack
from .diagnostics import CriterionC, criterion_c, fosc
from .evaluate import (
    Accuracy,
    MaskingReport,
    ProgressEvent,
    gradient_masking_report,
    recommended_attacks,
    robust_accuracy,
)
from .modes import inner_mode
from .perturb import BALLS, L2Ball, LinfBall, clamp_to_box, get_ball
from .ssl import TNAR, VAT, EntMin

__version__ = "0.1.0"

__all__ = [
    "ATTA",
    "BALLS",
    "CW",
    "CWL2",
    "FGSM",
    "PGD",
    "PGDAT",
    "TNAR",
    "TRADES",
    "VAT",
    "YOPO",
    "Accuracy",
    "AdversarialLoss",
    "Amata",
    "AmataSchedule",
    "AutoAttack",
    "CriterionC",
    "EntMin",
    "EpsWarmup",
    "FastAT",
    "FreeAT",
    "L2Ball",
    "LinfBall",
    "MaskingReport",
    "ProgressEvent",
    "Record",
    "amata_schedule",
    "bayes",
    "charts",
    "clamp_to_box",
    "control",
    "criterion_c",
    "cw_margin",
    "devices",
    "diagnostics",
    "fosc",
    "func",
    "get_ball",
    "gradient_masking_report",
    "inner_mode",
    "interpret",
    "models",
    "recommended_attacks",
    "replay",
    "robust_accuracy",
    "ssl",
]
