"""Fashion-MNIST: the official split from the Debian files, padding, validation, checksums, clear errors."""

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from geta.data import fashion_mnist
from geta.data.fashion_mnist import DEBIAN_ROOT, SHA256, cache_root, load_fashion_mnist
from geta.errors import ConfigError, GetaError

SOURCE = next((f for f in (DEBIAN_ROOT, cache_root()) if all((f / name).is_file() for name in SHA256)), None)
pytestmark = pytest.mark.skipif(SOURCE is None, reason="Fashion-MNIST absent: apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def split():
    return load_fashion_mnist(download=False)


def test_official_split(split) -> None:
    assert split.train_x.shape == (60_000, 1, 28, 28) and split.test_x.shape == (10_000, 1, 28, 28)
    assert split.train_x.dtype == torch.float32 and split.train_y.dtype == torch.long
    assert split.train_x.min() == 0 and split.train_x.max() == 1
    assert split.train_y.bincount().tolist() == [6000] * 10 and split.test_y.bincount().tolist() == [1000] * 10
    assert split.train_y[:3].tolist() == [9, 0, 0]  # the first image of the official files is an ankle boot
    assert split.train_mask is None and split.train_inputs is split.train_x


def test_loading_is_deterministic(split) -> None:
    again = load_fashion_mnist(download=False)
    assert torch.equal(again.train_x, split.train_x) and torch.equal(again.test_y, split.test_y)


def test_padding_to_32_surrounds_the_image_with_zeros(split) -> None:
    padded = load_fashion_mnist(pad_to_32=True, download=False)
    assert padded.train_x.shape == (60_000, 1, 32, 32) and padded.test_x.shape == (10_000, 1, 32, 32)
    assert torch.equal(padded.test_x[:, :, 2:30, 2:30], split.test_x)
    assert padded.test_x.sum() == split.test_x.sum()


def test_validation_holds_out_training_images(split) -> None:
    a = load_fashion_mnist(validation=5000, seed=1, download=False)
    b = load_fashion_mnist(validation=5000, seed=1, download=False)
    assert a.train_x.shape[0] == 55_000 and a.test_x.shape[0] == 5000
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(load_fashion_mnist(validation=5000, seed=2, download=False).test_y, a.test_y)
    assert sorted(torch.cat([a.train_y, a.test_y]).tolist()) == sorted(split.train_y.tolist())
    with pytest.raises(ConfigError, match="validation"):
        load_fashion_mnist(validation=60_000, download=False)


def test_missing_files_give_an_actionable_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GETA_OFFLINE", "1")
    with pytest.raises(GetaError, match=r"Fashion-MNIST not found in .*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def _serve(folder: Path, monkeypatch) -> None:
    """Point the download URL at a local folder (file://), so that no test touches the network."""
    monkeypatch.setattr(fashion_mnist, "URL", folder.as_uri() + "/")


def test_download_verifies_and_keeps_the_files(tmp_path, monkeypatch) -> None:
    source = tmp_path / "server"
    shutil.copytree(SOURCE, source)
    _serve(source, monkeypatch)
    split = load_fashion_mnist(tmp_path / "data", download=True)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(SHA256)
    assert split.test_x.shape == (10_000, 1, 28, 28)


def test_a_corrupt_download_is_rejected_and_not_kept(tmp_path, monkeypatch) -> None:
    source = tmp_path / "server"
    shutil.copytree(SOURCE, source)
    (source / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not the labels"))
    _serve(source, monkeypatch)
    with pytest.raises(GetaError, match=r"t10k-labels-idx1-ubyte\.gz .*SHA-256 mismatch"):
        load_fashion_mnist(tmp_path / "data", download=True)
    assert not (tmp_path / "data" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list((tmp_path / "data").glob("*.part"))


def test_unreachable_server_gives_an_actionable_error(tmp_path, monkeypatch) -> None:
    _serve(tmp_path / "nowhere", monkeypatch)
    with pytest.raises(GetaError, match=r"download of .* failed .*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "data", download=True)
