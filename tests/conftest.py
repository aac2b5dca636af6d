"""Small models and batches shared by the tests (CPU, a few milliseconds each)."""

from __future__ import annotations

import copy
import importlib
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from robustreg import ATTA


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


class _Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer_one = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 4) -> (B, 3)
        return self.head(torch.tanh(self.layer_one(x)))


class AliasedModel(nn.Module):
    """A 3-class classifier of (B, 4) inputs with aliases: one submodule registered under two names
    (``layer_one`` and ``inner.layer_one``), and one parameter shared by two modules
    (``tied.weight`` is ``other.weight``)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _Inner()
        self.layer_one = self.inner.layer_one  # the same module twice
        self.tied = nn.Linear(3, 3)
        self.other = nn.Linear(3, 3, bias=False)
        self.other.weight = self.tied.weight  # the same parameter in two modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.other(self.tied(self.inner(x)))


def assert_aliases_stay_trainable(model: AliasedModel, loss_of: object) -> None:
    """``loss_of(model)`` leaves every name of every parameter on the same ``nn.Parameter``, and an
    optimizer step on its loss still moves the aliased layer."""
    before = dict(model.named_parameters(remove_duplicate=False))
    assert "layer_one.weight" in before and "inner.layer_one.weight" in before
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = loss_of(model)
    after = dict(model.named_parameters(remove_duplicate=False))
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] and isinstance(after[k], nn.Parameter) for k in before)
    old = model.layer_one.weight.detach().clone()
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert model.layer_one.weight.grad is not None
    assert not torch.equal(model.layer_one.weight.detach(), old)  # the optimizer still trains it


def snapshot(model: nn.Module):
    return {
        "state": copy.deepcopy(model.state_dict()),
        "modes": [m.training for m in model.modules()],
        "tracking": [getattr(m, "track_running_stats", None) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    }


def assert_same(model: nn.Module, snap) -> None:
    now = snapshot(model)
    for k, v in snap["state"].items():
        torch.testing.assert_close(now["state"][k], v, msg=k)
    assert now["modes"] == snap["modes"]
    assert now["tracking"] == snap["tracking"]
    assert now["requires_grad"] == snap["requires_grad"]
    for a, b in zip(now["grad"], snap["grad"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountingLinear(nn.Module):
    """Two-class linear model counting its forward calls; its CE input gradient has a fixed sign."""

    def __init__(self, dim: int = 5) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x)


def linear_atta(**kw) -> tuple[ATTA, CountingLinear]:
    model = CountingLinear()
    return ATTA(model, 10, **{"eps": 1.0, "alpha": 0.1, "steps": 1, "random_start": False, "bounds": None} | kw), model
