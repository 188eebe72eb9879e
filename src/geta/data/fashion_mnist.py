"""Fashion-MNIST (Zalando): 70,000 28x28 grayscale images of 10 kinds of clothing, the official 60k/10k split.

The four gzipped IDX files are read from ``root``, from the Debian package ``dataset-fashion-mnist``
(/usr/share/datasets/fashion-mnist) or from ~/.cache/geta/fashion-mnist. If none has them, they are
downloaded once from the official URLs into the cache (or ``root``); set GETA_OFFLINE=1 or pass
``download=False`` to forbid that. Every load checks the SHA-256 of the decompressed files, which
identify the official data: Debian recompresses the archives, so the gzip files' own checksums (the
MD5s in the Fashion-MNIST README) differ between the two sources while their contents do not.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geta.data.split import Split
from geta.errors import ConfigError, GetaError

URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# SHA-256 of each decompressed file: computed from the Debian files, whose contents equal the
# official archives (README MD5s 8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...).
SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
TRAIN_SIZE = 60_000


def cache_root() -> Path:
    """Where downloaded files go: $XDG_CACHE_HOME/geta/fashion-mnist, by default ~/.cache/geta/fashion-mnist."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "geta" / "fashion-mnist"


def load_fashion_mnist(
    root: str | Path | None = None,
    *,
    pad_to_32: bool = False,
    validation: int = 0,
    seed: int = 0,
    download: bool | None = None,
) -> Split:
    """Fashion-MNIST as a Split: images float32 in [0, 1], (N, 1, 28, 28) or zero-padded to (N, 1, 32, 32).

    With ``validation=0`` the split is the official one (60,000 train, 10,000 test). With
    ``validation=n`` the official test set is left out: ``n`` training images chosen by ``seed``
    form the test part and the other 60,000 - n the train part. ``download`` defaults to True
    unless the environment sets GETA_OFFLINE=1.
    """
    if not 0 <= validation < TRAIN_SIZE:
        raise ConfigError(f"validation={validation} must be in [0, {TRAIN_SIZE}): the size of the held-out part")
    folder = find_fashion_mnist(root, download=download)
    images = {part: _images(folder / f"{part}-images-idx3-ubyte.gz") for part in ("train", "t10k")}
    labels = {part: _labels(folder / f"{part}-labels-idx1-ubyte.gz") for part in ("train", "t10k")}
    if pad_to_32:
        images = {part: torch.nn.functional.pad(x, (2, 2, 2, 2)) for part, x in images.items()}
    if validation == 0:
        return Split(images["train"], labels["train"], images["t10k"], labels["t10k"])
    order = torch.randperm(TRAIN_SIZE, generator=torch.Generator().manual_seed(seed))
    held, kept = order[:validation], order[validation:]
    return Split(images["train"][kept], labels["train"][kept], images["train"][held], labels["train"][held])


def find_fashion_mnist(root: str | Path | None = None, *, download: bool | None = None) -> Path:
    """The folder holding the four Fashion-MNIST files (``root``, else the Debian package's, else the
    cache), downloading them into the cache first where they are missing and ``download`` allows it
    (default: unless the environment sets GETA_OFFLINE=1); raises GetaError naming what to do."""
    if download is None:
        download = os.environ.get("GETA_OFFLINE", "") in ("", "0")
    candidates = [Path(root)] if root is not None else [DEBIAN_ROOT, cache_root()]
    for folder in candidates:
        if all((folder / name).is_file() for name in SHA256):
            return folder
    target = candidates[-1]
    searched = " or ".join(str(folder) for folder in candidates)
    if not download:
        raise GetaError(
            f"Fashion-MNIST not found in {searched}: apt-get install dataset-fashion-mnist, "
            "or pass root=... (a folder with the four .gz files), or allow downloads (unset GETA_OFFLINE)"
        )
    for name in SHA256:
        if not (target / name).is_file():
            _download(name, target)
    return target


def _download(name: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=folder, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(URL + name, timeout=60) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        _verified_bytes(Path(partial), name, source=f"the download of {URL + name}")
        os.replace(partial, folder / name)
    except (urllib.error.URLError, OSError) as error:
        raise GetaError(
            f"Fashion-MNIST download of {URL + name} failed ({error}): apt-get install dataset-fashion-mnist, "
            f"or put the four .gz files in {folder} or pass root=..."
        ) from error
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _verified_bytes(path: Path, name: str, source: str | None = None) -> bytes:
    """The decompressed contents of ``path`` (named ``source`` in errors), checked against the official SHA-256."""
    source = source or str(path)
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as error:
        raise GetaError(f"{source} is not a readable gzip file ({error}): delete it and load again") from error
    if hashlib.sha256(data).hexdigest() != SHA256[name]:
        raise GetaError(
            f"{source} is not the official Fashion-MNIST {name} (SHA-256 mismatch): delete it and load again"
        )
    return data


def _idx(path: Path, dims: int) -> np.ndarray:
    """The uint8 array of an IDX file: magic 0x0000 08 <dims>, then ``dims`` big-endian sizes, then the bytes."""
    data = _verified_bytes(path, path.name)
    header = np.frombuffer(data, dtype=">u4", count=1 + dims)
    if header[0] != 0x0800 + dims:
        raise GetaError(f"{path} is not a {dims}-dimensional uint8 IDX file")
    return np.frombuffer(data, dtype=np.uint8, offset=4 * (1 + dims)).reshape(tuple(int(n) for n in header[1:]))


def _images(path: Path) -> Tensor:
    pixels = torch.from_numpy(_idx(path, 3).copy())
    return pixels.unsqueeze(1).to(torch.float32) / 255.0


def _labels(path: Path) -> Tensor:
    return torch.from_numpy(_idx(path, 1).astype(np.int64))
