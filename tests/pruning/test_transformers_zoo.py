"""Groups and compact models on tiny random-config Hugging Face transformers models.

The *base* models are used (``BertModel``, ``ViTModel``, ``GPT2Model``, ``LlamaModel``, ...), not task
heads: their first output tensor is ``last_hidden_state``, which ``check_equivalence`` compares. (A base
GPT-2 has no LM head, so there is no wte/lm_head tie to worry about.) Every config is tiny and randomly
initialized (no hub access): 2 layers, hidden 32, 4 heads, FFN 64, vocabulary 64, 32x32 images.
Text models get an ``attention_mask`` with padding; decoders run with ``use_cache=False``. The models run
with transformers' default attention (SDPA); a few also run with ``attn_implementation="eager"``.

Three checks per model:

* ``test_equivalence``: the shared invariant (30% random groups zeroed, compact model computes the same);
* ``test_heads_and_ffn_removed``: attention heads and FFN units zeroed on purpose (random picks rarely
  include heads: there are 8 head groups among ~136), compact model compared on both input shapes;
* ``test_search_space``: attention heads and FFN hidden units are found as groups, and no group is
  degenerate (every group holds trainable weights and leaves something of each tensor it cuts).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from tests.pruning.equivalence import _parameters, _run, _tensors_removed, check_equivalence
from torch import nn

import geta

T = pytest.importorskip("transformers")

MODES = ["none", "weights+activations"]
VOCAB = 64


def _text(batch: int, length: int, *, decoder: bool = False) -> dict[str, object]:
    generator = torch.Generator().manual_seed(100 * batch + length)
    ids = torch.randint(0, VOCAB, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, -2:] = 0  # the last sequence is padded
    return {"input_ids": ids, "attention_mask": mask, **({"use_cache": False} if decoder else {})}


def _image(batch: int, side: int = 32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7 * batch + side)
    return {"pixel_values": torch.randn(batch, 3, side, side, generator=generator)}


_ENCODER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
_VISION = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
_DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=64, use_cache=False)
_GPT2 = dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=64, resid_pdrop=0.0,
             embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, bos_token_id=0, eos_token_id=0)


def _bert(**extra: object) -> nn.Module:
    return T.BertModel(T.BertConfig(**_ENCODER, **extra))


def _roberta() -> nn.Module:
    return T.RobertaModel(T.RobertaConfig(**_ENCODER, pad_token_id=1))


def _distilbert() -> nn.Module:
    return T.DistilBertModel(T.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                max_position_embeddings=64, dropout=0.0, attention_dropout=0.0))


def _swin() -> nn.Module:
    return T.SwinModel(T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                                    window_size=4, mlp_ratio=2.0, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0, drop_path_rate=0.0))


def _convnext() -> nn.Module:
    return T.ConvNextModel(T.ConvNextConfig(patch_size=4, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                            image_size=32, drop_path_rate=0.0))


def _resnet() -> nn.Module:
    return T.ResNetModel(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                        layer_type="bottleneck", downsample_in_first_stage=False))


def _mobilenet_v2() -> nn.Module:
    return T.MobileNetV2Model(T.MobileNetV2Config(image_size=32, depth_multiplier=0.25, min_depth=4, expand_ratio=2.0))


def _gpt2(**extra: object) -> nn.Module:
    return T.GPT2Model(T.GPT2Config(**_GPT2, **extra))


def _llama(**extra: object) -> nn.Module:
    return T.LlamaModel(T.LlamaConfig(**{**_DECODER, "num_key_value_heads": 4, **extra}))


def _qwen2() -> nn.Module:
    return T.Qwen2Model(T.Qwen2Config(**_DECODER, num_key_value_heads=2))  # GQA: 2 KV heads for 4 query heads


TEXT = (_text(2, 8), _text(3, 11))
DECODER_TEXT = (_text(2, 8, decoder=True), _text(3, 11, decoder=True))
IMAGES = (_image(2), _image(3))

# name: (factory, example inputs, other inputs (another batch size and, for text, length), expected
# (attention-head groups, FFN-unit groups); None where the count is not asserted)
ZOO: dict[str, tuple[Callable[[], nn.Module], dict, dict, tuple[int | None, int | None]]] = {
    "bert": (_bert, *TEXT, (8, 128)),
    "roberta": (_roberta, *TEXT, (8, 128)),
    "distilbert": (_distilbert, *TEXT, (8, 128)),
    "vit": (lambda: T.ViTModel(T.ViTConfig(**_VISION)), *IMAGES, (8, 128)),
    "deit": (lambda: T.DeiTModel(T.DeiTConfig(**_VISION)), *IMAGES, (8, 128)),
    "swin": (_swin, *IMAGES, (None, 96)),  # heads: see test_search_space
    "convnext": (_convnext, *IMAGES, (0, 96)),  # "FFN" = the inverted bottleneck's pwconv1 units
    "resnet": (_resnet, *IMAGES, (0, 0)),
    "mobilenetv2": (_mobilenet_v2, *IMAGES, (0, 0)),
    "gpt2": (_gpt2, *DECODER_TEXT, (8, 128)),
    "llama": (_llama, *DECODER_TEXT, (8, 128)),
    "qwen2": (_qwen2, *DECODER_TEXT, (4, 128)),  # a group = one KV head with its 2 query heads
    # the eager attention path (matmul + softmax instead of scaled_dot_product_attention)
    "bert-eager": (lambda: _bert(attn_implementation="eager"), *TEXT, (8, 128)),
    "gpt2-eager": (lambda: _gpt2(attn_implementation="eager"), *DECODER_TEXT, (8, 128)),
    "llama-eager-gqa": (lambda: _llama(num_key_value_heads=2, attn_implementation="eager"), *DECODER_TEXT, (4, 128)),
}

_QUERY = re.compile(r"(\.query|\.q_proj|\.q_lin)\.weight$")
_FFN_IN = re.compile(r"(\.intermediate\.dense|\.ffn\.lin1|\.fc1|\.up_proj|\.pwconv1)\.weight$")


def _trainable(group) -> list:
    """The group's slices of the model's own parameters (quantizer parameters excluded)."""
    return [s for s in group.slices if s.is_parameter and not s.is_quantizer]


@torch.no_grad()
def _zero(groups: list) -> None:
    for group in groups:
        for s in _trainable(group):
            s.tensor.index_fill_(s.dim, s.indices.to(s.tensor.device), 0.0)


def _is_zero(group) -> bool:
    return all(bool((s.tensor.detach().index_select(s.dim, s.indices) == 0).all()) for s in _trainable(group))


def _is_head(group) -> bool:
    """A group holding several output rows of a query projection (GPT-2: columns of the fused c_attn)."""
    return any(
        len(s.indices) > 1
        and ((_QUERY.search(s.name) and s.dim == 0) or (s.name.endswith("c_attn.weight") and s.dim == 1))
        for s in group.slices
    )


def _is_ffn(group) -> bool:
    """A group holding one hidden unit of a feed-forward block (GPT-2: a column of the Conv1D c_fc)."""
    return any((_FFN_IN.search(s.name) and s.dim == 0) or (s.name.endswith("c_fc.weight") and s.dim == 1)
               for s in group.slices)


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return ZOO[name][0]().eval()


@pytest.mark.parametrize("quantize", MODES)
@pytest.mark.parametrize("name", list(ZOO))
def test_equivalence(name: str, quantize: str) -> None:
    _, inputs, other, _ = ZOO[name]
    check_equivalence(_build(name), inputs, other, quantize)


def _compare(reference: nn.Module, compact: nn.Module, inputs: dict) -> None:
    expected, actual = _run(reference, inputs), _run(compact, inputs)
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= 1e-4 * scale, "compact model computes something else"


ATTENTION = [name for name, entry in ZOO.items() if entry[3][0] != 0]


@pytest.mark.parametrize("quantize", MODES)
@pytest.mark.parametrize("name", ATTENTION)
def test_heads_and_ffn_removed(name: str, quantize: str) -> None:
    """Every other attention-head group and every third FFN unit zeroed, then removed."""
    _, inputs, other, _ = ZOO[name]
    g = geta.GETA(_build(name), inputs, quantize=quantize)
    groups = list(g.groups)
    heads = [group for group in groups if _is_head(group)]
    ffn = [group for group in groups if _is_ffn(group)]
    assert heads, f"no attention-head groups; unprunable: {[(u.count, u.reasons) for u in g.unprunable()]}"
    chosen = heads[::2] + ffn[::3]
    _zero(chosen)
    g.model.eval()
    compact = g.construct_subnet().eval()
    _compare(g.model, compact, inputs)
    _compare(g.model, compact, other)
    assert _parameters(compact) == _parameters(g.model) - _tensors_removed(g, chosen)


@pytest.mark.parametrize("name", list(ZOO))
def test_search_space(name: str) -> None:
    _, inputs, _, (expected_heads, expected_ffn) = ZOO[name]
    g = geta.GETA(_build(name), inputs, quantize="none")
    groups = list(g.groups)
    assert groups
    # degenerate groups: only buffers (always "zero", so always removed), or a whole tensor dimension
    # (a size-1 broadcast dim such as a class token's batch dim: removing it leaves an empty tensor)
    assert not [group.describe() for group in groups if not _trainable(group)], "groups without weights"
    assert not [
        group.describe() for group in groups
        if any(s.is_parameter and len(s.indices) == s.tensor.shape[s.dim] for s in group.slices)
    ], "groups that remove a whole tensor dimension"
    assert not [group.describe() for group in groups if _is_zero(group)], "groups that are zero before any zeroing"
    heads = [group for group in groups if _is_head(group)]
    ffn = [group for group in groups if _is_ffn(group)]
    if expected_heads is not None:
        assert len(heads) == expected_heads, [(u.count, u.reasons) for u in g.unprunable()]
    if expected_ffn is not None:
        assert len(ffn) == expected_ffn
    if name == "qwen2" or name.endswith("gqa"):  # each KV head goes with its query heads
        for group in heads:
            width = {s.name.rsplit(".", 2)[-2]: len(s.indices) for s in group.slices if s.dim == 0}
            assert width["q_proj"] == 2 * width["k_proj"] == 2 * width["v_proj"]
    if name == "swin":  # a head found as a group must take its column of the relative position bias table
        for group in heads:
            assert any(s.name.endswith("relative_position_bias_table") and s.dim == 1 for s in group.slices), (
                f"head group without its relative position bias: {group.describe()}"
            )
