"""Trained weights as ``safetensors`` plus a small JSON of architecture and configuration.

A saved model is a directory holding

- ``model.safetensors``: the ``state_dict`` (tensors only; loading it runs no code), and
- ``model.json``: ``{"format": "robustreg-model", "version": 1, "arch": <name>, "kwargs": {...},
  "config": {...}, "metrics": {...}}``, where ``arch`` names an entry of :data:`ARCHITECTURES`
  and ``kwargs`` are its constructor's arguments (JSON values only).

so :func:`load_model` rebuilds the network from the registry and fills in the weights without
unpickling anything. Every recipe writes its final model this way and
``recipes/evaluate.py`` reads it back.

Example:
    >>> save_model(model, "runs/mnist", arch="smallcnn", kwargs={"drop": 0.5})  # doctest: +SKIP
    >>> model, meta = load_model("runs/mnist")                                 # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import models
from .charts.learned import _KINDS as _CHART_KINDS

FORMAT, VERSION = "robustreg-model", 1

#: name -> constructor; a saved model's ``arch`` must be one of these. Charts register under
#: their ``kind`` (``vae``, ``ae``, ``mlp-ae``, ``lgan``).
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "smallcnn": models.SmallCNN,
    "mlp": models.MLP,
    "conv_large": models.ConvLarge,
    "preact_resnet18": models.preact_resnet18,
    "wide_resnet34_10": models.wide_resnet34_10,
}


def _registry() -> dict[str, Callable[..., nn.Module]]:
    return {**ARCHITECTURES, **_CHART_KINDS}


def save_model(
    model: nn.Module,
    directory: str | Path,
    *,
    arch: str | None = None,
    kwargs: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` to ``directory`` (created if needed).

    ``arch``/``kwargs`` default to the model's own ``kind``/``config`` (the charts carry both);
    ``config`` (the run's options) and ``metrics`` are stored for the record. ``kwargs``,
    ``config`` and ``metrics`` must be JSON-serialisable. Returns the directory."""
    from safetensors.torch import save_file

    arch = arch if arch is not None else getattr(model, "kind", None)
    kwargs = kwargs if kwargs is not None else getattr(model, "config", {})
    text = _meta_text(arch, kwargs, config, metrics)  # checked before anything is written
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": FORMAT})
    (directory / "model.json").write_text(text)
    return directory


def write_meta(
    path: str | Path,
    *,
    arch: str,
    kwargs: dict[str, Any],
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write the JSON half of a saved model to ``path`` alone (a recipe writes ``run.json`` this way
    when it starts, so that its checkpoints' weights can be loaded before it finishes)."""
    text = _meta_text(arch, kwargs, config, metrics)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _meta_text(arch: object, kwargs: dict[str, Any], config: dict | None, metrics: dict | None) -> str:
    """``model.json``'s text; raises on an unknown ``arch`` or a non-JSON value."""
    if arch not in _registry():
        raise ValueError(f"arch must be one of {sorted(_registry())}, got {arch!r}")
    meta = {"format": FORMAT, "version": VERSION, "arch": arch, "kwargs": kwargs, "config": config or {}}
    return json.dumps({**meta, "metrics": metrics or {}}, indent=2)


def read_meta(directory: str | Path, meta_file: str | Path | None = None) -> dict[str, Any]:
    """The ``model.json`` of a saved model (or ``meta_file``), checked."""
    path = Path(meta_file) if meta_file is not None else Path(directory) / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a saved model is a directory with model.json and model.safetensors")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT or meta.get("arch") not in _registry():
        raise ValueError(f"{path} is not a robustreg model file (format {FORMAT!r}, arch in {sorted(_registry())})")
    return meta


def load_model(
    directory: str | Path, map_location: str | torch.device = "cpu", *, meta_file: str | Path | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model`: returns ``(model in eval mode, meta)``.

    ``meta_file`` takes the architecture from another JSON (a recipe's ``run.json``) and the weights
    from ``directory/model.safetensors`` (an ``accelerator.save_state`` checkpoint)."""
    from safetensors.torch import load_file

    meta = read_meta(directory, meta_file)
    model = _registry()[meta["arch"]](**meta["kwargs"])
    state = load_file(str(Path(directory) / "model.safetensors"), device=str(map_location))
    model.load_state_dict(state)
    return model.eval(), meta
