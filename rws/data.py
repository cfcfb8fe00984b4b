"""Data set registry: name -> (train, valid, test) binary uint8 tensors.

Eight standard binary density-estimation sets ship inside the package
(`rws/datasets/*.npz`, copied with their provenance from Larochelle & Murray 2011
and Marlin et al. 2010). Each file is verified against its sha256 before use and
every value must be exactly 0 or 1.

Two sets of Larochelle & Murray (2011), rcv1 and web, are not shipped. They are
downloaded on first use into the cache directory (``$RWS_DATA_DIR`` or
``~/.cache/rws-bench``) from the original ``.amat`` files; without network the
loader says so and where to put the file by hand.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from rws.errors import UserError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    dim: int
    sizes: tuple[int, int, int]  # train, valid, test
    sha256: str | None           # of the .npz file; None: recorded on first download
    source: str
    url: str | None = None       # for sets that are downloaded, not shipped


REGISTRY: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo("binarized_mnist", 784, (50000, 10000, 10000),
                    "350243cb824d66d022e0c3e87cac231231668817ff03f5f6d7b6533017d56b4b",
                    "Larochelle & Murray 2011 fixed binarization of MNIST"),
        DatasetInfo("caltech101_silhouettes_28", 784, (4100, 2264, 2307),
                    "5c8c4be76a74bb0a78e7be8f7c1814d2e282d75988cac5f1de1a627c64b63405",
                    "Marlin et al. 2010, split 1 (column-major images)"),
        DatasetInfo("adult", 123, (5000, 1414, 26147),
                    "eda9dfefb016a7a09e51beb2e562dfe1a34132a4c4bf77a9b5b0e4e3c2365c28",
                    "UCI, Larochelle & Murray 2011"),
        DatasetInfo("connect4", 126, (16000, 4000, 47557),
                    "e4c5647c88fc48df118808d58f1a0f1e01a46f69e7823ff90a87d2592574ca16",
                    "UCI, Larochelle & Murray 2011"),
        DatasetInfo("dna", 180, (1400, 600, 1186),
                    "89bc50fadfa1b9e1411e181e551591fd7e97b041f2061bb03f8a10b7834100f3",
                    "UCI, Larochelle & Murray 2011"),
        DatasetInfo("mushrooms", 112, (2000, 500, 5624),
                    "f99ab91a07c02ba27beeca427aaa04cfda9b5984d7d5c9bf82426ec2293656b4",
                    "UCI, Larochelle & Murray 2011"),
        DatasetInfo("nips", 500, (400, 100, 1240),
                    "b09f28cc86e08ef3b331249588b4949cfe87e6df4916adbfd57c52fe5848fe27",
                    "UCI, Larochelle & Murray 2011"),
        DatasetInfo("ocr_letters", 128, (32152, 10000, 10000),
                    "a4012ee68d2511bdc43db1a47b0370f6a3ec9ac2cf720014115afd1e78c91a61",
                    "UCI, Larochelle & Murray 2011"),
        DatasetInfo("rcv1", 150, (40000, 10000, 150000), None,
                    "UCI, Larochelle & Murray 2011 (downloaded, not shipped)",
                    url="http://www.cs.toronto.edu/~larocheh/public/datasets/rcv1/rcv1_{split}.amat"),
        DatasetInfo("web", 300, (14000, 3188, 32561), None,
                    "UCI, Larochelle & Murray 2011 (downloaded, not shipped)",
                    url="http://www.cs.toronto.edu/~larocheh/public/datasets/web/web_{split}.amat"),
    ]
}


def cache_dir() -> Path:
    return Path(os.environ.get("RWS_DATA_DIR", Path.home() / ".cache" / "rws-bench"))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lookup(name: str) -> DatasetInfo:
    """The registry entry of ``name``, or a UserError listing the known names."""
    if name not in REGISTRY:
        raise UserError(f"unknown data set '{name}'; choose one of: {', '.join(REGISTRY)} "
                        "(see `rws datasets`)")
    return REGISTRY[name]


def _shipped_path(name: str) -> Path:
    return Path(str(resources.files("rws") / "datasets" / f"{name}.npz"))


def _download(info: DatasetInfo, dest: Path) -> None:
    """Fetch the three .amat splits, convert them to one .npz, record its sha256."""
    arrays = {}
    for split in SPLITS:
        url = info.url.format(split=split)
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                text = r.read().decode()
        except (urllib.error.URLError, OSError) as e:
            raise UserError(
                f"data set '{info.name}' is not shipped and could not be downloaded from {url} "
                f"({e}); without network, put {info.name}.npz (uint8 arrays train/valid/test) "
                f"into {dest.parent} or set RWS_DATA_DIR") from None
        arrays[split] = np.loadtxt(text.splitlines(), dtype=np.float64, ndmin=2).astype(np.uint8)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, suffix=".npz", delete=False) as f:
        np.savez_compressed(f, **arrays)
    os.replace(f.name, dest)
    # No published checksum exists for these conversions: pin the first download's.
    dest.with_suffix(".sha256").write_text(sha256_of(dest) + "\n")


def _path_and_checksum(info: DatasetInfo) -> tuple[Path, str | None]:
    if info.url is None:
        path = _shipped_path(info.name)
        if not path.exists():
            raise UserError(f"shipped data file for '{info.name}' is missing ({path}); "
                            "reinstall the package (pip install --force-reinstall rws-bench)")
        return path, info.sha256
    path = cache_dir() / f"{info.name}.npz"
    if not path.exists():
        _download(info, path)
    pinned = path.with_suffix(".sha256")
    return path, pinned.read_text().strip() if pinned.exists() else None


def check_binary(array: np.ndarray, what: str, dim: int | None = None) -> None:
    """Raise a UserError unless `array` is a 2-D array of exact 0/1 values."""
    if array.ndim != 2:
        raise UserError(f"{what}: expected a 2-D array [N, D], got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise UserError(f"{what}: expected {dim} columns, got {array.shape[1]}; "
                        "the data does not match the model's input size")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UserError(f"{what}: contains NaN or infinite values; binarize the data first")
    bad = (array != 0) & (array != 1)
    if bad.any():
        raise UserError(f"{what}: {int(bad.sum())} values are not exactly 0 or 1 "
                        f"(e.g. {array[bad][0]!r}); binarize the data first")


def load(name: str) -> dict[str, torch.Tensor]:
    """Return {'train','valid','test'} -> uint8 tensors [N, D] after checking sha256 and 0/1."""
    info = lookup(name)
    path, expected = _path_and_checksum(info)
    if expected is not None:
        actual = sha256_of(path)
        if actual != expected:
            raise UserError(f"data file {path} is corrupt: sha256 {actual[:12]}... does not match "
                            f"{expected[:12]}...; reinstall the package or delete the file to "
                            "download it again")
    try:
        with np.load(path) as npz:
            arrays = {s: npz[s] for s in SPLITS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"data file {path} cannot be read ({e}); reinstall or re-download it") from None
    out = {}
    for split in SPLITS:
        check_binary(arrays[split], f"{name}/{split}", info.dim)
        out[split] = torch.from_numpy(np.ascontiguousarray(arrays[split], dtype=np.uint8))
    return out


def load_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a user's own .npz with uint8/0-1 arrays train/valid/test (no checksum)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file {path} does not exist")
    try:
        with np.load(path) as npz:
            missing = [s for s in SPLITS if s not in npz]
            if missing:
                raise UserError(f"data file {path} lacks the arrays {missing}; "
                                "it needs train, valid and test")
            arrays = {s: npz[s] for s in SPLITS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"data file {path} cannot be read ({e}); it may be truncated or not "
                        "an .npz file") from None
    for s, name in (("train", "training"), ("valid", "validation"), ("test", "test")):
        if arrays[s].ndim >= 1 and arrays[s].shape[0] == 0:
            raise UserError(f"data file {path}: the {name} split is empty; give it at least "
                            "one data point")
    dim = arrays["train"].shape[-1] if arrays["train"].ndim == 2 else None
    for s in SPLITS:
        check_binary(arrays[s], f"{path.name}/{s}", dim)
    return {s: torch.from_numpy(np.ascontiguousarray(arrays[s], dtype=np.uint8)) for s in SPLITS}


def get(name_or_path: str) -> dict[str, torch.Tensor]:
    """A registered name, or a path to an .npz file of the same layout."""
    if name_or_path.endswith(".npz") and name_or_path not in REGISTRY:
        return load_file(name_or_path)
    return load(name_or_path)
