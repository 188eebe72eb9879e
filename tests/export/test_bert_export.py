"""Saving and exporting a compact Hugging Face BERT classifier (the module tree of the minilm-bbc recipe):
the config travels as JSON, transformers' classes are allowed by fixed name, and both the packed file
and the ONNX graph reproduce the compact model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from compact_models import compact
from safetensors import safe_open
from safetensors.torch import save_file

import geta
from geta.export.onnx import inference_session
from geta.models.minilm import MiniLMClassifier

transformers = pytest.importorskip("transformers")


def _tiny_bert(attn_implementation: str) -> MiniLMClassifier:
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = attn_implementation
    torch.manual_seed(0)
    return MiniLMClassifier(transformers.BertModel(config, add_pooling_layer=False), classes=3).eval()


def _inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (batch, 10), generator=generator)
    lengths = torch.randint(3, 11, (batch,), generator=generator)
    mask = (torch.arange(10) < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.fixture(scope="module", params=["weights", "weights+activations"])
def compact_bert(request: pytest.FixtureRequest) -> torch.nn.Module:
    return compact(_tiny_bert("sdpa"), _inputs(2, 0), request.param, per_channel=True)


def test_round_trip_gives_identical_outputs_and_one_shared_config(
    compact_bert: torch.nn.Module, tmp_path: Path
) -> None:
    loaded = geta.load(geta.save(compact_bert, tmp_path / "bert.safetensors")).eval()
    x = _inputs(5, 1)
    with torch.no_grad():
        assert torch.equal(loaded(x), compact_bert(x))
    encoder = loaded.encoder
    assert type(encoder) is transformers.BertModel
    assert encoder.encoder.layer[1].attention.self.config is encoder.config
    assert encoder.config._attn_implementation == "sdpa"
    assert encoder.config.to_dict() == compact_bert.encoder.config.to_dict()
    heads = [layer.attention.self.query.weight.shape[0] for layer in encoder.encoder.layer]
    assert heads == [layer.attention.self.query.weight.shape[0] for layer in compact_bert.encoder.encoder.layer]


def test_loads_into_a_given_dense_model(compact_bert: torch.nn.Module, tmp_path: Path) -> None:
    dense = _tiny_bert("sdpa")
    loaded = geta.load(geta.save(compact_bert, tmp_path / "bert.safetensors"), model=dense)
    x = _inputs(5, 1)
    with torch.no_grad():
        assert loaded is dense and torch.equal(loaded(x), compact_bert(x))


def test_eager_attention_is_kept(tmp_path: Path) -> None:
    model = compact(_tiny_bert("eager"), _inputs(2, 0), "weights", per_channel=False)
    loaded = geta.load(geta.save(model, tmp_path / "bert.safetensors")).eval()
    assert loaded.encoder.config._attn_implementation == "eager"
    x = _inputs(3, 2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_onnx_matches_torch(compact_bert: torch.nn.Module, tmp_path: Path) -> None:
    path = geta.export_onnx(compact_bert, _inputs(2, 0), tmp_path / "bert.onnx")
    x = _inputs(6, 3)  # another batch size, other padding
    (out,) = inference_session(path).run(None, {name: value.numpy() for name, value in x.items()})
    with torch.no_grad():
        ref = compact_bert(x).numpy()
    scale = np.abs(ref).max()
    assert np.abs(out - ref).max() <= 0.05 * scale
    assert np.abs(out - ref).mean() <= 0.005 * scale


def _rewrite_header(source: Path, target: Path, edit) -> Path:
    with safe_open(str(source), framework="pt") as file:
        header = json.loads(file.metadata()["geta"])
        tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (safe_open is not iterable)
    edit(header)
    save_file(tensors, str(target), metadata={"geta": json.dumps(header)})
    return target


def _config_entry(header: dict) -> dict:
    return header["architecture"]["children"]["encoder"]["attributes"]["config"]["config"]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda header: _config_entry(header).update(type="builtins.object"), "not allow-listed"),
    (lambda header: _config_entry(header).update(type="transformers.models.gpt2.configuration_gpt2.GPT2Config"),
     "not allow-listed"),
    (lambda header: _config_entry(header).update(values=[1, 2]), "config values"),
    (lambda header: header["architecture"]["children"]["encoder"].update(type="transformers.pipelines.Pipeline"),
     "not allow-listed"),
])
def test_tampered_config_or_class_raises_a_clear_error(compact_bert: torch.nn.Module, edit, message: str,
                                                       tmp_path: Path) -> None:
    saved = geta.save(compact_bert, tmp_path / "bert.safetensors")
    with pytest.raises(geta.SavedModelError, match=message):
        geta.load(_rewrite_header(saved, tmp_path / "tampered.safetensors", edit))
