"""Shipped data sets: checksums, provenance, and clear errors for bad data."""
import hashlib
import io
import shutil
import urllib.error

import numpy as np
import pytest

from rws import data
from rws.errors import UserError


@pytest.mark.parametrize("name", [n for n, i in data.REGISTRY.items() if i.url is None])
def test_shipped_set_loads_with_registered_shape(name):
    info = data.REGISTRY[name]
    splits = data.load(name)
    assert tuple(len(splits[s]) for s in data.SPLITS) == info.sizes
    assert all(splits[s].shape[1] == info.dim for s in data.SPLITS)


def test_binarized_mnist_is_the_larochelle_murray_binarization():
    """MD5 of the first 10 rows of each split as uint8 (10, 1, 28, 28), the values that
    Fuel's tests assert for this data set."""
    expected = {"train": "0922fefc9a9d097e3b086b89107fafce",
                "valid": "65e8099613162b3110a7618037011617",
                "test": "0fa539ed8cb008880a61be77f744f06a"}
    splits = data.load("binarized_mnist")
    for split, md5 in expected.items():
        rows = np.ascontiguousarray(splits[split][:10].numpy().reshape(10, 1, 28, 28))
        assert hashlib.md5(rows.tobytes()).hexdigest() == md5


def test_unknown_name():
    with pytest.raises(UserError, match="unknown data set 'mnist'.*binarized_mnist"):
        data.load("mnist")


def test_checksum_mismatch(tmp_path, monkeypatch):
    bad = tmp_path / "dna.npz"
    shutil.copy(data._shipped_path("dna"), bad)
    with open(bad, "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    monkeypatch.setattr(data, "_shipped_path", lambda name: bad)
    with pytest.raises(UserError, match="corrupt: sha256"):
        data.load("dna")


def test_missing_shipped_file(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_shipped_path", lambda name: tmp_path / "gone.npz")
    with pytest.raises(UserError, match="missing.*reinstall"):
        data.load("dna")


@pytest.mark.parametrize("train,message", [
    (np.array([[0, 1, 2]], dtype=np.uint8), "not exactly 0 or 1"),
    (np.array([[0.0, np.nan, 1.0]]), "NaN"),
    (np.array([0, 1, 1], dtype=np.uint8), "2-D"),
])
def test_bad_values_are_refused(tmp_path, train, message):
    path = tmp_path / "mine.npz"
    ok = np.zeros((2, 3), dtype=np.uint8)
    np.savez(path, train=train, valid=ok, test=ok)
    with pytest.raises(UserError, match=message):
        data.get(str(path))


def test_wrong_dimension_is_refused(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, train=np.zeros((2, 3), np.uint8), valid=np.zeros((2, 4), np.uint8),
             test=np.zeros((2, 3), np.uint8))
    with pytest.raises(UserError, match="expected 3 columns, got 4"):
        data.get(str(path))


def test_own_file_loads(tmp_path):
    path = tmp_path / "mine.npz"
    ok = np.eye(3, dtype=np.uint8)
    np.savez(path, train=ok, valid=ok, test=ok)
    assert data.get(str(path))["valid"].shape == (3, 3)


def test_unshipped_set_offline_gives_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("RWS_DATA_DIR", str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match=f"not shipped and could not be downloaded.*{tmp_path}"):
        data.load("rcv1")


def test_unshipped_set_downloads_converts_and_pins_a_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("RWS_DATA_DIR", str(tmp_path))
    rows = {"train": "0 1 1\n1 0 0\n", "valid": "1 1 1\n", "test": "0 0 0\n0 1 0\n"}

    def serve(url, timeout):
        split = url.rsplit("_", 1)[1].split(".")[0]
        return io.BytesIO(rows[split].encode())

    monkeypatch.setattr(data.urllib.request, "urlopen", serve)
    monkeypatch.setitem(data.REGISTRY, "web", data.DatasetInfo(
        "web", 3, (2, 1, 2), None, "test", url="http://example.invalid/web_{split}.amat"))
    splits = data.load("web")
    assert splits["test"].tolist() == [[0, 0, 0], [0, 1, 0]]
    pinned = (tmp_path / "web.sha256").read_text().strip()
    assert pinned == data.sha256_of(tmp_path / "web.npz")
    (tmp_path / "web.npz").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        data.load("web")
