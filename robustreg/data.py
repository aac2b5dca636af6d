"""Data sets: generated ones that need no files (the default job runs on a fresh machine), and
torchvision image sets loaded from local files as tensors.

Data files are checked, never fetched: :func:`load_vision` compares every file with the MD5 that
torchvision records for the official file (``MNIST.resources``, ``CIFAR10.tgz_md5`` and its
``train_list``/``test_list``/``meta``, ``SVHN.split_list``) before anything reads it, calls
torchvision with ``download=False`` only, and reports a damaged file by name, with the MD5 it
should have and the fix. MNIST-style sets are read straight from the verified ``.gz`` archives, so
nothing is extracted, nothing is written under a (possibly read-only) data directory and a
truncated extracted file left next to an archive is never read. The one thing ever written is
the extraction of a CIFAR-10 archive, under ``$TMPDIR``, keyed by the archive's MD5 and renamed
into place only when complete.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import _checks

log = logging.getLogger(__name__)


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

_NEVER = "this library never downloads data"


class DataFileError(OSError):
    """A data file is present but damaged: its MD5 is not the official one, or it is shorter or
    longer than its header says. The message names the file, what was expected and the fix."""


def load_vision(name: str, root: str | Path, *, train: bool) -> tuple[Tensor, Tensor]:
    """A torchvision image data set as tensors: images ``(N, C, H, W)`` in [0, 1] (float32)
    and labels ``(N,)`` (int64), from the files under ``root`` in torchvision's layout.

    Nothing is downloaded and nothing is written under ``root``. Every file is checked against
    the MD5 torchvision records for the official file before it is read; a missing file raises
    ``FileNotFoundError`` saying what to place where, a damaged one :class:`robustreg.data.DataFileError`.
    MNIST-style sets are read straight from their ``.gz`` archives (an extracted file next to an
    archive is ignored). A CIFAR-10 archive without a good extracted ``cifar-10-batches-py/`` is
    extracted once to ``$TMPDIR/robustreg-data-<uid>/CIFAR10-<md5>/``."""
    import torchvision

    if name not in VISION:
        raise ValueError(f"name must be one of {sorted(VISION)}, got {name!r}")
    cls_name, _, files = VISION[name]
    root = Path(root)
    cls = getattr(torchvision.datasets, cls_name)
    missing = f"{cls_name} is not available under {root}: place {files} there (torchvision's layout); {_NEVER}"
    if not root.is_dir():
        raise FileNotFoundError(missing)
    if name in ("mnist", "fashionmnist"):
        images, labels = _read_mnist(cls, root, train=train, missing=missing)
        return images.float().div(255).unsqueeze(1), labels  # (N, 28, 28) -> (N, 1, 28, 28)
    if name == "cifar10":
        ds = cls(_cifar_root(cls, root, missing=missing), train=train, download=False)
        data = torch.as_tensor(ds.data).permute(0, 3, 1, 2)  # (N, 32, 32, 3) -> (N, 3, 32, 32)
        labels = ds.targets
    else:  # svhn
        split = "train" if train else "test"
        _, filename, md5 = cls.split_list[split]
        if not (root / filename).is_file():
            raise FileNotFoundError(missing)
        _verify(root / filename, md5)
        ds = cls(root, split=split, download=False)
        data, labels = torch.as_tensor(ds.data), ds.labels  # (N, 3, 32, 32)
    return data.float().div(255).contiguous(), torch.as_tensor(labels).long()


def _verify(path: Path, md5: str) -> None:
    """Raise :class:`robustreg.data.DataFileError` unless ``path`` has the MD5 torchvision records for
    the official file. (Hashing is not cached: it costs ~0.1 s for MNIST's training images, and a cache keyed by size
    and mtime could miss a same-size edit made within one clock tick.)"""
    from torchvision.datasets.utils import calculate_md5

    got = calculate_md5(path)
    if got != md5:
        raise DataFileError(
            f"{path} is corrupt or truncated: its MD5 is {got} ({path.stat().st_size} bytes), the official "
            f"file's is {md5} (as recorded by torchvision). Delete it and copy it again from the official "
            f"source; {_NEVER}"
        )


def _read_mnist(cls: type, root: Path, *, train: bool, missing: str) -> tuple[Tensor, Tensor]:
    """Images ``(N, 28, 28)`` (uint8) and labels ``(N,)`` (int64) of an MNIST-style set, read from the
    verified ``.gz`` archives in ``root/<cls>/raw/`` (or, when an archive is absent, from the file
    extracted from it, whose length is checked against its header: extracted files have no official
    MD5). torchvision is not called: with the archives present it would extract them next to
    themselves and trust whatever extracted file it finds there, even a truncated one."""
    raw = root / cls.__name__ / "raw"
    md5 = dict(cls.resources)  # archive name -> MD5 of the official file
    prefix = "train" if train else "t10k"
    images, labels = (_read_idx(raw, f"{prefix}-{kind}-ubyte", md5, missing) for kind in ("images-idx3", "labels-idx1"))
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataFileError(
            f"{raw}: the {prefix} images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match; "
            f"replace both with the official files; {_NEVER}"
        )
    return images, labels.long()


def _read_idx(raw: Path, name: str, md5: dict[str, str], missing: str) -> Tensor:
    """The uint8 array in the IDX file ``raw/name``, from its verified ``.gz`` archive when present.

    IDX (LeCun's MNIST format): bytes 0, 0, 8 (uint8), the number of dimensions d, then d
    big-endian uint32 sizes and the ``∏ sizes`` bytes of the array."""
    archive, extracted = raw / f"{name}.gz", raw / name
    if archive.is_file():
        _verify(archive, md5[archive.name])
        path, data = archive, gzip.decompress(archive.read_bytes())
    elif extracted.is_file():
        path, data = extracted, extracted.read_bytes()
    else:
        raise FileNotFoundError(missing)
    ndim = data[3] if len(data) >= 4 and data[:3] == b"\x00\x00\x08" else 0  # 0: not IDX of uint8
    head = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:head]) if ndim and len(data) >= head else None  # (N, ...) sizes
    if dims is None or head + math.prod(dims) != len(data):
        what = (
            f"holds {len(data)} bytes where its header announces {head + math.prod(dims)}"
            if dims
            else "does not start with the header of an IDX file of uint8 data"
        )
        raise DataFileError(
            f"{path} is truncated or damaged: it {what}. Delete it and place the official {archive.name} "
            f"(MD5 {md5[archive.name]}) in {raw}; {_NEVER}"
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)[head:].view(dims)  # bytearray: a writable copy


def _cifar_root(cls: type, root: Path, *, missing: str) -> Path:
    """A root whose ``cifar-10-batches-py/`` has torchvision's MD5s: ``root`` when its own extracted
    folder has them, else the cache of the verified archive ``root/cifar-10-python.tar.gz``."""
    folder, archive = root / cls.base_folder, root / cls.filename
    members = {name: md5 for name, md5 in cls.train_list + cls.test_list} | {cls.meta["filename"]: cls.meta["md5"]}
    problem = _folder_problem(folder, members)
    if problem is None:
        return root
    if not archive.is_file():
        if isinstance(problem, DataFileError):
            raise problem
        raise FileNotFoundError(f"{problem}. {missing}" if folder.is_dir() else missing)
    _verify(archive, cls.tgz_md5)
    if folder.is_dir():
        log.warning("%s; reading the verified %s instead", problem, archive)
    return _extract_once(archive, f"{cls.__name__}-{cls.tgz_md5}", lambda r: _folder_problem(r / folder.name, members))


def _folder_problem(folder: Path, md5: dict[str, str]) -> OSError | None:
    """Why ``folder`` does not hold the files named in ``md5`` with those MD5s (``None``: it does)."""
    for name, expected in md5.items():
        if not (folder / name).is_file():
            return FileNotFoundError(f"{folder / name} is missing")
        try:
            _verify(folder / name, expected)
        except DataFileError as err:
            return err
    return None


def _extract_once(archive: Path, key: str, problem: Callable[[Path], OSError | None]) -> Path:
    """The verified ``archive`` extracted to ``$TMPDIR/robustreg-data-<uid>/<key>/``, where ``key``
    holds the archive's official MD5: the content decides the directory, so a changed source can
    never meet an old extraction. The extraction is made in a private temporary directory and
    renamed into place, so a half-finished one is never seen; of processes racing to make it, the
    first rename wins and the others use its result. An existing extraction is used only when
    ``problem`` finds nothing wrong with it; a damaged one is renamed aside, deleted and rebuilt."""
    cache = Path(tempfile.gettempdir()) / f"robustreg-data-{os.getuid()}"
    final = cache / key
    if final.is_dir():
        if (damage := problem(final)) is None:
            return final
        log.warning("%s; extracting %s again", damage, archive)
        trash = Path(tempfile.mkdtemp(dir=cache, prefix=f".{key}-damaged-"))
        with contextlib.suppress(FileNotFoundError):  # another process may have moved it first
            os.replace(final, trash / key)
        shutil.rmtree(trash, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache, prefix=f".{key}-partial-"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(work, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        try:
            os.replace(work, final)  # atomic; fails when another process has put its extraction there first
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if (err := problem(final)) is not None:
        raise DataFileError(f"{archive} has the official MD5 but its extraction does not: {err}")
    return final


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
