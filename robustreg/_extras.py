"""The optional dependencies: the library itself imports only torch, torchvision (for the data
sets), einops and safetensors; the progress bars and plots need the ``recipes`` extra (as do the recipes)."""

from __future__ import annotations

RECIPES = "pip install 'robustreg[recipes]' (in a checkout: pip install -e '.[recipes]')"


def missing_extra(err: ModuleNotFoundError, what: str) -> ModuleNotFoundError:
    """The error for ``what`` when its optional dependency ``err.name`` is not installed."""
    return ModuleNotFoundError(f"{what} needs {err.name}, part of the recipes extra: {RECIPES}", name=err.name)
