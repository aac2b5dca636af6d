"""Small models and batches shared by the tests (CPU, a few milliseconds each)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from torch import nn


class TinyConvBN(nn.Module):
    """A 4-D image classifier with BatchNorm and dropout, to exercise the BN policies."""

    def __init__(self, channels: int = 1, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(4 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 8, 8) -> (B, classes)
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def tiny_mlp(dim: int = 6, classes: int = 3) -> nn.Module:
    """A tabular MLP on (B, D) inputs, with BatchNorm1d."""
    return nn.Sequential(nn.Linear(dim, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, classes))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def conv_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = TinyConvBN()
    x = torch.rand(6, 1, 8, 8)
    y = torch.randint(0, 5, (6,))
    return model, x, y


@pytest.fixture
def recipe_module(monkeypatch):
    """Import a recipe module in-process (its directory on sys.path); Accelerate's state is reset after."""
    from accelerate.state import AcceleratorState

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "recipes"))

    def load(name: str):
        return importlib.import_module(name)

    yield load
    AcceleratorState._reset_state(True)
