"""Trained weights as ``safetensors`` plus a small JSON of architecture and configuration.

A saved model is a directory holding

- ``model.safetensors``: the ``state_dict`` (tensors only; loading it runs no code), and
- ``model.json``: ``{"format": "robustreg-model", "version": 1, "arch": <name>, "kwargs": {...},
  "config": {...}, "metrics": {...}}``, where ``arch`` names an entry of :data:`ARCHITECTURES`
  and ``kwargs`` are its constructor's arguments (JSON values only).

so :func:`load_model` rebuilds the network from the registry and fills in the weights without
unpickling anything. Every recipe writes its final model this way and
``recipes/evaluate.py`` reads it back. A model with a NaN or infinite weight or buffer is refused.

Training state that is not a model (optimizer and scheduler states, RNG states, a loss object's
``state_dict``) is written by :func:`save_tree` as ``<name>.safetensors`` (every tensor) plus
``<name>.json`` (the structure, with tagged tuples, integer-keyed dicts, ``Counter``, numpy
arrays and non-finite floats), and read back by :func:`load_tree`: again nothing is unpickled, so a
tampered file can fail to load but never run code. :func:`write_manifest` records every file's
size and SHA-256 in ``manifest.json``; :func:`verify_manifest` says what, if anything, no longer
matches (the recipes' checkpoints use both: see ``docs/recipes.md``).

Example:
    >>> path = save_model(model, "runs/mnist", arch="smallcnn")
    >>> model, meta = load_model("runs/mnist")
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import models
from .charts.registry import CHARTS, load_chart_file

FORMAT, VERSION = "robustreg-model", 1

#: name -> constructor; a saved model's ``arch`` must be one of these. Charts register under
#: their ``kind`` (``vae``, ``ae``, ``mlp-ae``, ``lgan``).
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "smallcnn": models.SmallCNN,
    "mlp": models.MLP,
    "conv_large": models.ConvLarge,
    "preact_resnet18": models.preact_resnet18,
    "wide_resnet34_10": models.wide_resnet34_10,
    "bal_cnn": models.BALCNN,
}


def posterior_ensemble(member_arch: str, member_kwargs: dict[str, Any], members: int) -> nn.Module:
    """A :class:`robustreg.bayes.PosteriorEnsemble` of ``members`` networks ``member_arch(**member_kwargs)``
    (an entry of :data:`ARCHITECTURES`): how a saved BAL or BNN posterior is rebuilt."""
    from .bayes import PosteriorEnsemble

    if member_arch not in ARCHITECTURES:
        raise ValueError(f"member_arch must be one of {sorted(ARCHITECTURES)}, got {member_arch!r}")
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ValueError(f"members must be an int >= 1, got {members!r}")
    return PosteriorEnsemble([ARCHITECTURES[member_arch](**member_kwargs) for _ in range(members)])


#: classifiers made of other registered ones (rebuilt from their members' entries)
ENSEMBLES: dict[str, Callable[..., nn.Module]] = {"posterior_ensemble": posterior_ensemble}


def _registry() -> dict[str, Callable[..., nn.Module]]:
    return {**ARCHITECTURES, **ENSEMBLES, **CHARTS}


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
    check_finite(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = directory / ".model.safetensors.tmp"  # each file replaced whole, never left half-written
    save_file(state, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, directory / "model.safetensors")
    atomic_write_text(directory / "model.json", text)
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
    atomic_write_text(path, text)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a kill leaves the old
    file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    from ``directory/model.safetensors`` (a recipe's checkpoint)."""
    from safetensors.torch import load_file

    meta = read_meta(directory, meta_file)
    model = _registry()[meta["arch"]](**meta["kwargs"])
    state = load_file(str(Path(directory) / "model.safetensors"), device=str(map_location))
    model.load_state_dict(state)
    return model.eval(), meta


def load_chart(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A chart, in eval mode: a directory written by :func:`save_model` (what ``recipes/chart.py``
    writes), or a file in the deprecated single-file format of ``chart.save(path)`` (read with a
    ``DeprecationWarning``). Raises ``ValueError`` for a saved classifier and ``FileNotFoundError``
    for a missing path."""
    path = Path(path)
    if path.is_dir():
        chart, meta = load_model(path, map_location)
        if meta["arch"] not in CHARTS:
            raise ValueError(f"{path} holds a {meta['arch']} classifier, not a chart ({', '.join(CHARTS)})")
        return chart
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a saved chart is a directory (model.json + model.safetensors)")
    warnings.warn(
        f"{path}: the single-file chart format is deprecated; re-save it with "
        "robustreg.checkpoint.save_model(chart, directory)", DeprecationWarning, stacklevel=2,
    )  # fmt: skip
    return load_chart_file(path, map_location)


def check_finite(model: nn.Module) -> None:
    """Raise ``ValueError`` naming the parameters and buffers of ``model`` that hold NaN or inf
    (such a model is never saved: it would replace a good one)."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        raise ValueError(f"the model has non-finite values in {', '.join(bad[:8])}{' …' if len(bad) > 8 else ''}")


# -- training state: a tree of tensors and JSON values, no pickle ------------------------------------

_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__", "__counter__", "__float__")


def save_tree(tree: Any, directory: str | Path, name: str) -> list[Path]:
    """Write ``tree`` (nested dicts, lists and tuples of tensors, numpy arrays, numbers, strings,
    ``None``) to ``directory/name.safetensors`` and ``directory/name.json``; returns both paths.

    Tensors are saved from the CPU (a copy each, so views and shared storage are fine). Any other
    type raises ``TypeError`` naming where it sits in the tree, before anything is written."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(tree, tensors, "tree")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.safetensors", directory / f"{name}.json"]
    save_file(tensors, str(paths[0]), metadata={"format": "robustreg-tree"})
    paths[1].write_text(json.dumps({"format": "robustreg-tree", "version": 1, "tree": encoded}))
    return paths


def load_tree(directory: str | Path, name: str, map_location: str | torch.device = "cpu") -> Any:
    """Read what :func:`save_tree` wrote. Raises ``ValueError`` on a file that is not such a tree
    (no pickle is involved: a tampered file fails to load, it never runs code)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = json.loads((directory / f"{name}.json").read_text())
    if not isinstance(meta, dict) or meta.get("format") != "robustreg-tree":
        raise ValueError(f"{directory / name}.json is not a robustreg state file")
    tensors = load_file(str(directory / f"{name}.safetensors"), device=str(map_location))
    return _decode(meta["tree"], tensors)


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    import numpy as np

    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"{where}: numpy arrays of Python objects cannot be saved")
        key = str(len(tensors))
        tensors[key] = torch.frombuffer(bytearray(value.tobytes()), dtype=torch.uint8)
        return {"__ndarray__": key, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, Counter):
        return {"__counter__": [[_encode(k, tensors, where), int(v)] for k, v in value.items()]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in value):
            return {k: _encode(v, tensors, f"{where}[{k!r}]") for k, v in value.items()}
        return {
            "__dict__": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")] for k, v in value.items()]
        }
    if isinstance(value, tuple):  # torch.Size too
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: cannot save a {type(value).__name__} (tensors, numbers, strings, lists, dicts only)")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    import numpy as np

    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    tag = next((t for t in _TAGS if t in value), None)
    if tag is None:
        return {k: _decode(v, tensors) for k, v in value.items()}
    body = value[tag]
    if tag == "__tensor__":
        return tensors[body]
    if tag == "__ndarray__":
        dtype = np.dtype(value["dtype"])
        if dtype.hasobject:
            raise ValueError("a state file asks for a numpy array of Python objects")
        return np.frombuffer(tensors[body].numpy().tobytes(), dtype=dtype).reshape(value["shape"]).copy()
    if tag == "__tuple__":
        return tuple(_decode(v, tensors) for v in body)
    if tag == "__counter__":
        return Counter({_decode(k, tensors): int(v) for k, v in body})
    if tag == "__float__":
        return float(body)  # 'nan', 'inf' or '-inf'
    return {_decode(k, tensors): _decode(v, tensors) for k, v in body}


# -- manifests: what a directory held when it was written ---------------------------------------------

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | Path, **info: Any) -> Path:
    """Record the size and SHA-256 of every file under ``directory`` (and ``info``) in
    ``directory/manifest.json``, flushed to disk. Write it last: a directory whose manifest is
    missing was not finished."""
    directory = Path(directory)
    files = {
        str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    for p in directory.rglob("*"):
        if p.is_file() and p.name != MANIFEST:
            _fsync(p)
    path = directory / MANIFEST
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"format": "robustreg-manifest", "version": 1, **info, "files": files}, indent=1))
    _fsync(tmp)
    os.replace(tmp, path)
    return path


def verify_manifest(directory: str | Path) -> tuple[dict[str, Any] | None, str]:
    """``(manifest, "")`` when every file ``directory/manifest.json`` lists is there with its size
    and SHA-256; otherwise ``(None, reason)``. Files the manifest does not list (an
    ``evaluation.json`` written later) are ignored: nothing reads them back as state."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("format") != "robustreg-manifest" or not isinstance(files, dict):
            return None, "manifest.json is not a robustreg manifest"
    except FileNotFoundError:
        return None, "no manifest.json (the write did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"manifest.json is unreadable ({err})"
    for rel, want in files.items():
        path = directory / rel
        if not path.is_file():
            return None, f"{rel} is missing"
        if path.stat().st_size != want.get("bytes"):
            return None, f"{rel} has {path.stat().st_size} bytes, the manifest says {want.get('bytes')}"
        if _sha256(path) != want.get("sha256"):
            return None, f"{rel} does not match its SHA-256 in the manifest"
    return manifest, ""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
