"""nn.MultiheadAttention heads: found as groups, removed into a CompactMultiheadAttention."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.pruning.equivalence import _parameters, _run, _tensors_removed
from tests.zoo import AttentionVariants, TorchEncoder, attention_variants_inputs
from torch import nn
from torch.nn.utils import parametrize

import geta
from geta.pruning.attention import CompactMultiheadAttention, make_compact
from geta.quant.prepare import original_parameter

MODES = ["none", "weights", "weights+activations"]


def _tokens(batch: int, length: int) -> tuple[torch.Tensor]:
    return (torch.randint(0, 30, (batch, length)),)


MODELS = {
    "torch-encoder": (TorchEncoder, _tokens(2, 6), _tokens(3, 9)),
    "attention-variants": (AttentionVariants, attention_variants_inputs(2, 5, 7), attention_variants_inputs(3, 4, 6)),
}


def _attention_modules(model: nn.Module) -> list[nn.MultiheadAttention]:
    return [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]


def _query_weight(module: nn.MultiheadAttention) -> torch.Tensor:
    weight = original_parameter(module, "in_proj_weight")
    return weight if weight is not None else original_parameter(module, "q_proj_weight")


def _heads(g: geta.GETA, module: nn.MultiheadAttention) -> list[int]:
    """Indices of the groups that take rows of ``module``'s query projection."""
    query = _query_weight(module)
    return [i for i, group in enumerate(g.groups)
            if any(s.tensor is query and s.dim == 0 for s in group.slices)]


@pytest.mark.parametrize("quantize", MODES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_heads_are_groups(name: str, quantize: str) -> None:
    factory, inputs, _ = MODELS[name]
    g = geta.GETA(factory().eval(), inputs, quantize=quantize)
    for module in _attention_modules(g.model):
        heads = _heads(g, module)
        assert len(heads) == module.num_heads, [(u.count, u.reasons) for u in g.unprunable()]
        out_weight = original_parameter(module.out_proj, "weight")
        for index in heads:
            widths = {(id(s.tensor), s.dim): len(s.indices) for s in g.groups[index].slices}
            # the q, k and v rows of one head, and its columns of the output projection
            assert widths[(id(_query_weight(module)), 0)] == module.head_dim * (3 if module._qkv_same_embed_dim else 1)
            assert widths[(id(out_weight), 1)] == module.head_dim
            if not module._qkv_same_embed_dim:
                for name_ in ("k_proj_weight", "v_proj_weight"):
                    assert widths[(id(original_parameter(module, name_)), 0)] == module.head_dim


@pytest.mark.parametrize("quantize", MODES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_removed_heads_give_compact_attention(name: str, quantize: str) -> None:
    """Every head but one of each attention module zeroed and removed; quantizers stay on the weights."""
    factory, inputs, other = MODELS[name]
    torch.manual_seed(0)
    g = geta.GETA(factory().eval(), inputs, quantize=quantize, per_channel=quantize == "weights+activations")
    modules = _attention_modules(g.model)
    heads = [i for module in modules for i in _heads(g, module)]
    chosen = g.groups.select(torch.tensor(heads), len(heads) - len(modules))
    g.groups.zero_(chosen)
    g.model.eval()
    compact = g.construct_subnet().eval()
    for original, module in zip(modules, _attention_modules(compact)):
        assert type(original) is not CompactMultiheadAttention and original.num_heads > 1
        assert isinstance(module, CompactMultiheadAttention) and module.num_heads == 1
        weight = "in_proj_weight" if original._qkv_same_embed_dim else "q_proj_weight"
        assert parametrize.is_parametrized(module, weight) == (quantize != "none")
    assert compact.state_dict().keys() == g.model.state_dict().keys()
    for batch in (inputs, other):
        expected, actual = _run(g.model, batch), _run(compact, batch)
        assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()
    zeroed = [g.groups[i] for i in chosen.nonzero().flatten().tolist()]
    assert _parameters(compact) == _parameters(g.model) - _tensors_removed(g, zeroed)


_MASKS = torch.Generator().manual_seed(0)
_BOOL_MASK = torch.rand(6, 6, generator=_MASKS) > 0.7
_BOOL_MASK[:, 0] = False  # every query attends somewhere


CALLS = {
    "self": (dict(batch_first=True), dict(need_weights=False)),
    "self-weights": (dict(batch_first=True), dict()),
    "per-head-weights": (dict(), dict(average_attn_weights=False)),
    "padding": (dict(batch_first=True), dict(key_padding_mask=torch.tensor([[False] * 6, [False] * 4 + [True] * 2]),
                                             need_weights=False)),
    "bool-mask": (dict(), dict(attn_mask=_BOOL_MASK)),
    "3d-mask": (dict(), dict(attn_mask=torch.randn(8, 6, 6, generator=_MASKS), need_weights=False)),
    "causal": (dict(batch_first=True), dict(attn_mask=nn.Transformer.generate_square_subsequent_mask(6),
                                            is_causal=True, need_weights=False)),
    "kv-dims": (dict(kdim=5, vdim=7), dict()),
    "bias-kv-zero-attn": (dict(add_bias_kv=True, add_zero_attn=True), dict(need_weights=False)),
    "bias-kv-padding": (dict(add_bias_kv=True), dict(key_padding_mask=_BOOL_MASK[:2])),
}


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_compact_forward_matches_torch(name: str, cross: bool) -> None:
    settings, call = CALLS[name]
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(16, 4, **settings).eval()
    compact = copy.deepcopy(reference)
    make_compact(compact)
    def inputs(width: int) -> torch.Tensor:
        return torch.randn((2, 6, width) if settings.get("batch_first", False) else (6, 2, width))

    query = inputs(16)
    key = inputs(settings.get("kdim", 16)) if cross or "kdim" in settings else query
    value = inputs(settings.get("vdim", 16)) if "vdim" in settings else key
    with torch.no_grad():
        expected, expected_weights = reference(query, key, value, **call)
        actual, actual_weights = compact(query, key, value, **call)
    torch.testing.assert_close(actual, expected)
    if expected_weights is None:
        assert actual_weights is None
    else:
        torch.testing.assert_close(actual_weights, expected_weights)


def test_compact_forward_unbatched() -> None:
    reference = nn.MultiheadAttention(16, 4).eval()
    compact = copy.deepcopy(reference)
    make_compact(compact)
    x = torch.randn(5, 16)
    with torch.no_grad():
        for expected, actual in zip(reference(x, x, x), compact(x, x, x)):
            torch.testing.assert_close(actual, expected)
