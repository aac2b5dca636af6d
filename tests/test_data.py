"""Data files for :func:`robustreg.data.load_vision`: verified against torchvision's MD5s, never
downloaded, damaged files named with the fix, nothing written under the data directory, and the
one cache (a CIFAR-10 extraction under ``$TMPDIR``) keyed by content and made atomically.

Fake data directories are built in ``tmp_path``: MNIST from copies of the real archives, CIFAR-10
and SVHN from tiny generated files whose MD5s are patched into torchvision's tables."""

import gzip
import hashlib
import io
import os
import pickle
import shutil
import socket
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.datasets import mnist as tv_mnist
from torchvision.datasets.mnist import read_image_file, read_label_file

from robustreg.data import DataFileError, load_vision

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROBUSTREG_DATA", ROOT.parent / "shared" / "data"))
needs_mnist = pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason="MNIST files not on this machine")
IMAGES, LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every way torchvision (or anything else) could fetch a file raises, and is recorded."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"network or download attempted: {args}")

    for module in (torchvision.datasets.utils, tv_mnist, torchvision.datasets.cifar, torchvision.datasets.svhn):
        for fn in ("download_url", "download_and_extract_archive"):
            if hasattr(module, fn):
                monkeypatch.setattr(module, fn, refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield calls
    assert calls == []  # even when the code under test swallowed the exception


@pytest.fixture(autouse=True)
def private_tmpdir(tmp_path, monkeypatch):
    """``$TMPDIR`` of the code under test: an empty directory of this test's own."""
    tmp = tmp_path / "TMPDIR"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def tree(path: Path) -> dict[str, int]:
    """Every file under ``path`` with its size."""
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


def mnist_root(tmp_path: Path) -> Path:
    """A data directory holding copies of the official MNIST test-set archives."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (IMAGES, LABELS):
        shutil.copyfile(SHARED / "MNIST" / "raw" / f"{name}.gz", raw / f"{name}.gz")
    return tmp_path / "data"


def reference(tmp_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The MNIST test set as torchvision's own IDX reader parses it."""
    out = tmp_path / "reference"
    out.mkdir()
    for name in (IMAGES, LABELS):
        (out / name).write_bytes(gzip.decompress((SHARED / "MNIST" / "raw" / f"{name}.gz").read_bytes()))
    return read_image_file(str(out / IMAGES)), read_label_file(str(out / LABELS))


def official_md5(name: str) -> str:
    return dict(torchvision.datasets.MNIST.resources)[f"{name}.gz"]


@needs_mnist
def test_mnist_is_read_from_the_archives_exactly_as_torchvision_parses_it(tmp_path):
    root = mnist_root(tmp_path)
    before = tree(root)
    x, y = load_vision("mnist", root, train=False)
    images, labels = reference(tmp_path)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], images.float() / 255) and torch.equal(y, labels)
    assert tree(root) == before  # nothing extracted next to the archives


@needs_mnist
@pytest.mark.parametrize("damage", ["truncate", "flip-a-byte"])
def test_a_damaged_archive_is_named_with_its_md5_and_the_fix_and_nothing_is_downloaded(tmp_path, damage):
    root = mnist_root(tmp_path)
    archive = root / "MNIST" / "raw" / f"{IMAGES}.gz"
    data = bytearray(archive.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2 :]
    else:
        data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    before = tree(root)
    with pytest.raises(DataFileError) as err:
        load_vision("mnist", root, train=False)
    msg = str(err.value)
    assert str(archive) in msg and official_md5(IMAGES) in msg
    assert hashlib.md5(bytes(data)).hexdigest() in msg
    assert "copy it again from the official source" in msg and "never downloads" in msg
    assert tree(root) == before  # no download into it, no extraction


@needs_mnist
def test_a_truncated_extracted_file_next_to_its_archive_is_never_read(tmp_path):
    """torchvision extracts once and then trusts any extracted file it finds; a half-written one
    stayed broken forever. Reading from the verified archive heals it."""
    root = mnist_root(tmp_path)
    full = gzip.decompress((root / "MNIST" / "raw" / f"{IMAGES}.gz").read_bytes())
    (root / "MNIST" / "raw" / IMAGES).write_bytes(full[: len(full) // 3])
    x, y = load_vision("mnist", root, train=False)
    images, labels = reference(tmp_path)
    assert torch.equal(x[:, 0], images.float() / 255) and torch.equal(y, labels)


@needs_mnist
def test_extracted_files_without_archives_are_checked_against_their_headers(tmp_path):
    root = mnist_root(tmp_path)
    raw = root / "MNIST" / "raw"
    for name in (IMAGES, LABELS):
        gz = raw / f"{name}.gz"
        (raw / name).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    x, y = load_vision("mnist", root, train=False)
    images, labels = reference(tmp_path)
    assert torch.equal(x[:, 0], images.float() / 255) and torch.equal(y, labels)

    extracted = raw / IMAGES
    extracted.write_bytes(extracted.read_bytes()[:-784])  # one image short
    with pytest.raises(DataFileError) as err:
        load_vision("mnist", root, train=False)
    msg = str(err.value)
    assert str(extracted) in msg and "header announces 7840016" in msg
    assert f"{IMAGES}.gz" in msg and official_md5(IMAGES) in msg and "Delete it" in msg

    extracted.write_bytes(b"<html>not found</html>")
    with pytest.raises(DataFileError, match="not start with the header of an IDX file"):
        load_vision("mnist", root, train=False)


@needs_mnist
def test_a_read_only_directory_is_read_in_place_and_nothing_is_written_anywhere(tmp_path, private_tmpdir):
    root = mnist_root(tmp_path)
    before = tree(root)
    paths = sorted(root.rglob("*"), reverse=True)  # files before their directories
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
    root.chmod(0o555)
    try:
        x, y = load_vision("mnist", root, train=False)
    finally:
        for p in [root, *paths]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert tree(root) == before and list(private_tmpdir.iterdir()) == []  # no copy under $TMPDIR either


def test_missing_files_say_what_to_place_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST/raw/\{train,t10k\}"):
        load_vision("mnist", tmp_path / "nowhere", train=True)
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_vision("mnist", tmp_path, train=True)
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python\.tar\.gz"):
        load_vision("cifar10", tmp_path, train=True)
    with pytest.raises(FileNotFoundError, match=r"train_32x32\.mat"):
        load_vision("svhn", tmp_path, train=True)


# --- CIFAR-10: tiny generated batches, their MD5s patched into torchvision's tables ----------


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fake_cifar(monkeypatch, root: Path, seed: int) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write ``root/cifar-10-python.tar.gz`` (two images per training batch, three in the test
    batch) and make torchvision's CIFAR10 expect exactly these files. Returns the batches."""
    cls = torchvision.datasets.CIFAR10
    rng = np.random.default_rng(seed)
    src = root / f"src{seed}" / cls.base_folder
    src.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = 3 if name == "test_batch" else 2
        batches[name] = (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist())
        (src / name).write_bytes(pickle.dumps({"data": batches[name][0], "labels": batches[name][1]}))
    (src / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    archive = root / cls.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=cls.base_folder)
    shutil.rmtree(src.parent)
    monkeypatch.setattr(cls, "tgz_md5", md5(archive))
    monkeypatch.setattr(cls, "train_list", [[f"data_batch_{i}", None] for i in range(1, 6)])
    monkeypatch.setattr(cls, "test_list", [["test_batch", None]])
    monkeypatch.setattr(cls, "meta", {"filename": "batches.meta", "key": "label_names", "md5": None})
    with tarfile.open(archive) as tar:  # the members' MD5s, as torchvision records the official ones
        sums = {Path(m.name).name: hashlib.md5(tar.extractfile(m).read()).hexdigest() for m in tar if m.isfile()}
    for entry in cls.train_list + cls.test_list:
        entry[1] = sums[entry[0]]
    cls.meta["md5"] = sums["batches.meta"]
    return batches


def expected(batches, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    x = torch.from_numpy(np.concatenate([batches[n][0] for n in names])).view(-1, 3, 32, 32).float() / 255
    return x, torch.tensor([label for n in names for label in batches[n][1]])


def assert_loads(root: Path, batches) -> None:
    for train in (True, False):
        x, y = load_vision("cifar10", root, train=train)
        ref_x, ref_y = expected(batches, train)
        assert torch.equal(x, ref_x) and torch.equal(y, ref_y)


def cache_dirs(private_tmpdir: Path) -> list[str]:
    """The cache directories (and any leftovers) under ``$TMPDIR``."""
    return sorted(p.name for p in (private_tmpdir / f"robustreg-data-{os.getuid()}").iterdir())


def test_cifar_archive_is_extracted_once_to_a_cache_keyed_by_its_md5(tmp_path, monkeypatch, private_tmpdir):
    root = tmp_path / "data"
    batches = fake_cifar(monkeypatch, root, seed=1)
    before = tree(root)
    assert_loads(root, batches)
    key = f"CIFAR10-{md5(root / 'cifar-10-python.tar.gz')}"
    assert cache_dirs(private_tmpdir) == [key]  # no partial extraction left beside it
    assert tree(root) == before

    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(tarfile, "open", no_extraction)
    assert_loads(root, batches)  # the complete cache is reused


def test_cifar_cache_follows_the_source_and_a_half_or_damaged_one_is_rebuilt(tmp_path, monkeypatch, private_tmpdir):
    root = tmp_path / "data"
    first = fake_cifar(monkeypatch, root, seed=1)
    assert_loads(root, first)
    old_key = cache_dirs(private_tmpdir)[0]

    (root / "cifar-10-python.tar.gz").unlink()
    second = fake_cifar(monkeypatch, root, seed=2)  # the source changes: a new key, never the old data
    assert_loads(root, second)
    new_key = f"CIFAR10-{md5(root / 'cifar-10-python.tar.gz')}"
    assert new_key != old_key and cache_dirs(private_tmpdir) == sorted([old_key, new_key])

    cached = private_tmpdir / f"robustreg-data-{os.getuid()}" / new_key / "cifar-10-batches-py"
    (cached / "data_batch_3").write_bytes((cached / "data_batch_3").read_bytes()[:100])  # truncated
    (cached / "test_batch").unlink()  # and half-finished
    assert_loads(root, second)
    assert cache_dirs(private_tmpdir) == sorted([old_key, new_key])


def test_processes_racing_to_extract_use_the_first_complete_extraction(tmp_path, monkeypatch, private_tmpdir):
    root = tmp_path / "data"
    batches = fake_cifar(monkeypatch, root, seed=3)
    real_replace, raced = os.replace, []

    def another_process_wins(src, dst):
        if Path(dst).name.startswith("CIFAR10-") and not raced:  # it renames its copy into place first
            raced.append(dst)
            shutil.copytree(src, dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", another_process_wins)
    assert_loads(root, batches)
    assert raced and cache_dirs(private_tmpdir) == [Path(raced[0]).name]  # our own copy cleaned up


def test_a_damaged_cifar_archive_or_folder_is_named_with_its_md5(tmp_path, monkeypatch, private_tmpdir, caplog):
    root = tmp_path / "data"
    batches = fake_cifar(monkeypatch, root, seed=4)
    archive = root / "cifar-10-python.tar.gz"
    good = archive.read_bytes()
    archive.write_bytes(good[:-100])
    with pytest.raises(DataFileError) as err:
        load_vision("cifar10", root, train=True)
    assert str(archive) in str(err.value) and torchvision.datasets.CIFAR10.tgz_md5 in str(err.value)
    assert not (private_tmpdir / f"robustreg-data-{os.getuid()}").exists()

    # an extracted folder with a damaged batch and no archive: named, with the batch's MD5
    with tarfile.open(fileobj=io.BytesIO(good)) as tar:
        tar.extractall(root, filter="data")
    archive.unlink()
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:-1])
    with pytest.raises(DataFileError) as err:
        load_vision("cifar10", root, train=False)
    assert str(batch) in str(err.value) and dict(torchvision.datasets.CIFAR10.train_list)["data_batch_2"] in str(
        err.value
    )
    batch.unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_2 is missing.*never downloads"):
        load_vision("cifar10", root, train=False)

    # a damaged folder beside a good archive: the archive is used, with a warning
    batch.write_bytes(b"junk")
    archive.write_bytes(good)
    assert_loads(root, batches)
    assert "data_batch_2" in caplog.text and "reading the verified" in caplog.text


def test_a_good_extracted_cifar_folder_is_read_in_place(tmp_path, monkeypatch, private_tmpdir):
    root = tmp_path / "data"
    batches = fake_cifar(monkeypatch, root, seed=5)
    with tarfile.open(root / "cifar-10-python.tar.gz") as tar:
        tar.extractall(root, filter="data")
    (root / "cifar-10-python.tar.gz").unlink()
    assert_loads(root, batches)
    assert list(private_tmpdir.iterdir()) == []


def test_svhn_is_verified_before_torchvision_reads_it(tmp_path, monkeypatch):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8), np.array([[10], [1], [2], [3]])
    path = tmp_path / "test_32x32.mat"
    scipy_io.savemat(path, {"X": images, "y": labels})
    split_list = dict(torchvision.datasets.SVHN.split_list)
    split_list["test"] = [split_list["test"][0], "test_32x32.mat", md5(path)]
    monkeypatch.setattr(torchvision.datasets.SVHN, "split_list", split_list)
    x, y = load_vision("svhn", tmp_path, train=False)
    assert torch.equal(x, torch.from_numpy(images).permute(3, 2, 0, 1).float() / 255)  # torchvision's layout
    assert y.tolist() == [0, 1, 2, 3]  # SVHN's label 10 is digit 0
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataFileError, match=split_list["test"][2]):
        load_vision("svhn", tmp_path, train=False)
