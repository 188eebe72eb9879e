"""Labelled texts split into train and test, and their tokenization into a Split of token ids."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from geta.data.split import Split

Tokenizer = Callable[[list[str]], dict[str, Tensor]]
"""Texts to padded ``{"input_ids": (N, L), "attention_mask": (N, L)}`` tensors."""


@dataclass(frozen=True)
class TextData:
    """Raw texts with integer labels (indices into ``classes``), split into train and test."""

    train_texts: list[str]
    train_y: Tensor
    test_texts: list[str]
    test_y: Tensor
    classes: tuple[str, ...]


def tokenize_split(data: TextData, tokenizer: Tokenizer) -> Split:
    """``data`` tokenized: a Split whose inputs are ``{"input_ids", "attention_mask"}`` dicts."""
    train, test = tokenizer(data.train_texts), tokenizer(data.test_texts)
    return Split(
        train["input_ids"], data.train_y, test["input_ids"], data.test_y,
        train_mask=train["attention_mask"], test_mask=test["attention_mask"],
    )
