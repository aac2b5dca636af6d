"""Adversarial-training loss objects: PGD-AT, Fast-AT, Free-AT, TRADES, YOPO, ATTA, and Amata's
annealing of any of them, and the ε warm-up."""

from ..record import Record
from .amata import Amata, AmataSchedule, amata_schedule
from .atta import ATTA
from .base import AdversarialLoss
from .fast import FastAT
from .free import FreeAT, replay
from .pgd import PGDAT
from .trades import TRADES
from .warmup import EpsWarmup
from .yopo import YOPO

__all__ = [
    "ATTA",
    "PGDAT",
    "TRADES",
    "YOPO",
    "AdversarialLoss",
    "Amata",
    "AmataSchedule",
    "EpsWarmup",
    "FastAT",
    "FreeAT",
    "Record",
    "amata_schedule",
    "replay",
]
