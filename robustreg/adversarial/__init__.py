"""Adversarial-training loss objects: PGD-AT, Fast-AT, Free-AT, TRADES."""

from .base import AdversarialLoss, Record
from .fast import FastAT
from .free import FreeAT, replay
from .pgd import PGDAT
from .trades import TRADES

__all__ = ["PGDAT", "TRADES", "AdversarialLoss", "FastAT", "FreeAT", "Record", "replay"]
