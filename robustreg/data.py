"""Data sets: generated ones that need no files (the default job runs on a fresh machine), and
torchvision image sets loaded from local files as tensors."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
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


def label_split(y: Tensor, per_class: int, *, seed: int) -> tuple[Tensor, Tensor]:
    """A reproducible semi-supervised split: ``per_class`` labeled indices of every class, drawn
    by ``seed``, and all the other indices as unlabeled. Returns ``(labeled, unlabeled)`` index
    tensors (sorted); record them with the run to reproduce it exactly."""
    _checks.count("per_class", per_class, minimum=1)
    if not isinstance(y, Tensor) or y.dim() != 1:
        raise ValueError("y must be a 1-D tensor of labels")
    gen = torch.Generator().manual_seed(seed)
    labeled = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} samples, fewer than per_class={per_class}")
        labeled.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    labeled = torch.cat(labeled).sort().values
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[labeled] = False
    return labeled, torch.nonzero(mask).flatten()


def cycle_batches(
    labeled: tuple[Tensor, Tensor], unlabeled: Tensor, *, batch_labeled: int, batch_unlabeled: int, seed: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """An endless stream of ``(x_labeled, y_labeled, x_unlabeled)`` batches: each set reshuffled
    (by ``seed``) every time it is exhausted, so the small labeled set cycles against the
    unlabeled stream. Take as many steps as you train for (``itertools.islice``)."""
    _checks.count("batch_labeled", batch_labeled, minimum=1)
    _checks.count("batch_unlabeled", batch_unlabeled, minimum=1)
    gen = torch.Generator().manual_seed(seed)
    x_l, y_l = labeled

    def indices(n: int, size: int) -> Iterator[Tensor]:
        while True:
            order = torch.randperm(n, generator=gen)
            for i in range(0, n - min(size, n) + 1, min(size, n)):
                yield order[i : i + min(size, n)]

    for il, iu in zip(indices(len(x_l), batch_labeled), indices(len(unlabeled), batch_unlabeled), strict=False):
        yield x_l[il], y_l[il], unlabeled[iu]


@dataclass(frozen=True)
class RingsSSL:
    """The semi-supervised two-rings problem: labeled and unlabeled points (with the unlabeled
    points' labels, for evaluation only), and the embedding of the plane into ``R^dim``."""

    x_labeled: Tensor
    y_labeled: Tensor
    x_unlabeled: Tensor
    y_unlabeled: Tensor
    embedding: Tensor  # (dim, 2), orthonormal columns
    radii: tuple[float, float]


def rings_ssl(
    n_unlabeled: int = 3000,
    *,
    labeled_per_class: int = 3,
    radii: tuple[float, float] = (1.0, 1.5),
    dim: int = 2,
    off_manifold: float = 0.0,
    seed: int = 0,
) -> RingsSSL:
    """Two concentric rings (class k at radius ``radii[k]``, uniform angles) with
    ``labeled_per_class`` labeled points per class and ``n_unlabeled`` unlabeled ones, the
    plane embedded in ``R^dim`` by a random orthonormal map (``dim ≥ 2``) and
    ``off_manifold·N(0, I)`` noise added in every direction (0: points exactly on the rings).
    Its oracle chart is :class:`robustreg.charts.RingsChart`."""
    _checks.count("n_unlabeled", n_unlabeled, minimum=1)
    _checks.count("labeled_per_class", labeled_per_class, minimum=1)
    _checks.count("dim", dim, minimum=2)
    _checks.nonneg_float("off_manifold", off_manifold)
    gen = torch.Generator().manual_seed(seed)
    n = n_unlabeled + 2 * labeled_per_class
    y = torch.cat(
        [torch.arange(2).repeat_interleave(labeled_per_class), torch.randint(0, 2, (n_unlabeled,), generator=gen)]
    )
    angle = 2 * math.pi * torch.rand(n, generator=gen)
    radius = torch.tensor(radii, dtype=torch.float32)[y]
    plane = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)  # (n, 2)
    embedding = torch.linalg.qr(torch.randn(dim, 2, generator=gen)).Q if dim > 2 else torch.eye(2)
    x = plane @ embedding.t() + off_manifold * torch.randn(n, dim, generator=gen)
    k = 2 * labeled_per_class
    return RingsSSL(x[:k], y[:k], x[k:], y[k:], embedding, tuple(float(r) for r in radii))
