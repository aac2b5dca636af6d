"""Data sets: generated ones that need no files (the default job runs on a fresh machine), and
torchvision image sets loaded from local files as tensors."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from . import _checks


def two_rings(
    n: int,
    *,
    nuisance: int = 48,
    radii: tuple[float, float] = (1.0, 2.0),
    noise: float = 0.1,
    nuisance_std: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Two concentric rings in the plane, padded with label-independent Gaussian features.

    Class k lies at radius ``radii[k] + noise·N(0, 1)`` and a uniform angle in its first two
    coordinates; the other ``nuisance`` coordinates are ``nuisance_std·N(0, 1)`` for both
    classes. A classifier needs only the first two; a naturally trained one also puts weight
    on the nuisance coordinates, which an ℓ∞ adversary exploits in every one of them at once,
    so natural training is accurate but not robust, and adversarial training learns to ignore
    them.

    Returns ``x`` of shape ``(n, 2 + nuisance)`` (float32) and labels ``y`` in {0, 1}.
    """
    _checks.count("n", n, minimum=1)
    _checks.count("nuisance", nuisance)
    _checks.nonneg_float("noise", noise)
    _checks.nonneg_float("nuisance_std", nuisance_std)
    y = torch.randint(0, 2, (n,), generator=generator)
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    radius = torch.tensor(radii, dtype=torch.float32)[y] + noise * torch.randn(n, generator=generator)
    ring = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)  # (n, 2)
    extra = nuisance_std * torch.randn(n, nuisance, generator=generator)  # (n, nuisance)
    return torch.cat([ring, extra], dim=1), y


# name -> (torchvision class name, shape of one image, files torchvision expects under root)
VISION = {
    "mnist": ("MNIST", (1, 28, 28), "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"),
    "fashionmnist": ("FashionMNIST", (1, 28, 28), "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"),
    "cifar10": ("CIFAR10", (3, 32, 32), "cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/)"),
    "svhn": ("SVHN", (3, 32, 32), "train_32x32.mat and test_32x32.mat"),
}


def load_vision(name: str, root: str | Path, *, train: bool) -> tuple[Tensor, Tensor]:
    """A torchvision image data set as tensors: images ``(N, C, H, W)`` in [0, 1] (float32)
    and labels ``(N,)`` (int64). Nothing is downloaded: the files must be under ``root`` in
    torchvision's layout (MNIST-style files under a read-only ``root`` are copied once to
    ``$TMPDIR/robustreg-data-<uid>/<hash of the directory>/``, since torchvision extracts archives next to them); when
    they are missing, ``FileNotFoundError`` says which files to place where."""
    import torchvision

    if name not in VISION:
        raise ValueError(f"name must be one of {sorted(VISION)}, got {name!r}")
    cls_name, _, files = VISION[name]
    root = Path(root)
    cls = getattr(torchvision.datasets, cls_name)
    split = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
    try:
        ds = _open(cls, root, split)
    except (RuntimeError, OSError) as err:  # torchvision: "Dataset not found ..." / download failure
        raise FileNotFoundError(
            f"{cls_name} is not available under {root}: place {files} there (torchvision's layout); "
            "this library never downloads data"
        ) from err
    if name in ("mnist", "fashionmnist"):
        x = ds.data.float().div(255).unsqueeze(1)  # (N, 1, 28, 28)
        return x, ds.targets.long()
    data = torch.as_tensor(ds.data)
    if name == "cifar10":
        data = data.permute(0, 3, 1, 2)  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    y = torch.as_tensor(ds.targets if name == "cifar10" else ds.labels).long()
    return data.float().div(255).contiguous(), y


def _open(cls, root: Path, split: dict):
    """Open with ``download=True`` for MNIST-style sets (it only verifies and extracts files that are
    present; the network is never reached when they are); copy a read-only root first."""
    if not root.is_dir():
        raise FileNotFoundError(root)
    if cls.__name__ in ("MNIST", "FashionMNIST"):
        raw = root / cls.__name__ / "raw"
        if not raw.is_dir() or not any(raw.iterdir()):
            raise FileNotFoundError(raw)
        # torchvision extracts next to the archives: work on a copy of a read-only directory
        # (by its mode bits too: root may write where the owner meant nobody to)
        if not os.access(raw, os.W_OK) or not raw.stat().st_mode & 0o222:
            key = hashlib.sha1(str(raw.resolve()).encode()).hexdigest()[:12]  # one copy per source directory
            copy = Path(tempfile.gettempdir()) / f"robustreg-data-{os.getuid()}" / key / cls.__name__ / "raw"
            if not copy.is_dir():
                shutil.copytree(raw, copy)
            root = copy.parents[1]
        return cls(root, download=True, **split)
    return cls(root, download=False, **split)


def synthetic_vision(name: str, n: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Random images of ``name``'s shape in [0, 1] and uniform labels: for smoke tests of the code
    paths of data sets that are not on the machine (CIFAR-10, SVHN)."""
    if name not in VISION:
        raise ValueError(f"name must be one of {sorted(VISION)}, got {name!r}")
    _checks.count("n", n, minimum=1)
    shape = VISION[name][1]
    return torch.rand(n, *shape, generator=generator), torch.randint(0, 10, (n,), generator=generator)
