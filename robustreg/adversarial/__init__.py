"""Adversarial-training loss objects: PGD-AT, Fast-AT, Free-AT, TRADES, YOPO."""

from .base import AdversarialLoss, Record
from .fast import FastAT
from .free import FreeAT, replay
from .pgd import PGDAT
from .trades import TRADES
from .yopo import YOPO

__all__ = ["PGDAT", "TRADES", "YOPO", "AdversarialLoss", "FastAT", "FreeAT", "Record", "replay"]
