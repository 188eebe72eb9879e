"""Hand-written attention: head counts and widths kept as attributes, fused or separate q/k/v.

Each model is pruned at random (60% of the groups, several seeds), plain and weights+activations: the
compact model never crashes and never differs. Where heads can be removed (their attributes are
updated), they are found as groups; where the code derives the head width from the input width
(``C // self.heads``), heads are unprunable with the probe's reason.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import geta
from geta import registry


class FusedDerivedWidth(nn.Module):
    """timm style: ``reshape(B, N, 3, self.heads, C // self.heads)``, output back to the input width C."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))


class Fused3HD(nn.Module):
    """Fused q/k/v laid out as (3, heads, head_dim), sizes from ``num_heads`` and ``head_dim``."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))


class FusedH3D(nn.Module):
    """Fused q/k/v laid out as (heads, 3, head_dim), with an ``all_head_size`` attribute."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.n_heads, self.head_size, self.all_head_size = heads, dim // heads, dim
        self.qkv = nn.Linear(dim, dim * 3)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).view(B, N, self.n_heads, 3, self.head_size).permute(3, 0, 2, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = torch.softmax(q @ k.transpose(-1, -2) / self.head_size**0.5, dim=-1)
        return self.out((attn @ v).permute(0, 2, 1, 3).reshape(B, N, self.all_head_size))


class Separate(nn.Module):
    """Separate q, k, v projections viewed by ``self.heads`` and ``self.head_dim``."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        q, k, v = (p(x).view(B, N, self.heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(B, N, self.heads * self.head_dim))


class GroupedQuery(nn.Module):
    """Grouped-query attention: 4 query heads share 2 key/value heads (``repeat_interleave``)."""

    def __init__(self, dim: int = 32, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, heads * self.head_dim)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim)
        self.o_proj = nn.Linear(heads * self.head_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        q = self.q_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, N, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, N, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        repeat = self.num_heads // self.num_key_value_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))


class RelativeBias(nn.Module):
    """Separate q/k/v with a per-head relative-position bias table added to the scores."""

    def __init__(self, dim: int = 32, heads: int = 4, tokens: int = 9) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.bias_table = nn.Parameter(torch.randn(2 * tokens - 1, heads) * 0.1)
        index = torch.arange(tokens)
        self.register_buffer("relative_index", index[:, None] - index[None, :] + tokens - 1, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        q, k, v = (p(x).view(B, N, self.heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        bias = self.bias_table[self.relative_index.reshape(-1)].reshape(N, N, -1).permute(2, 0, 1)
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.head_dim**-0.5 + bias, dim=-1)
        return self.o((attn @ v).transpose(1, 2).reshape(B, N, self.heads * self.head_dim))


class OddNames(nn.Module):
    """Attributes with names geta cannot guess: declared with ``geta.register_attention``."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.h, self.d_k = heads, dim // heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        q, k, v = (p(x).view(B, N, self.h, self.d_k).transpose(1, 2) for p in (self.wq, self.wk, self.wv))
        return self.wo(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, self.h * self.d_k))


class Block(nn.Module):
    def __init__(self, attention: nn.Module, dim: int = 32) -> None:
        super().__init__()
        self.norm1, self.attention, self.norm2 = nn.LayerNorm(dim), attention, nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding, two blocks of the given attention, mean pooling, a classifier."""

    def __init__(self, attention: type[nn.Module], tokens: int = 9) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.position = nn.Parameter(torch.randn(1, tokens, 32) * 0.02)
        self.blocks = nn.Sequential(Block(attention()), Block(attention()))
        self.head = nn.Linear(32, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.embed(x) + self.position).mean(1))


PRUNABLE_HEADS = [Fused3HD, FusedH3D, Separate, GroupedQuery, RelativeBias, OddNames]
MODES = ["none", "weights+activations"]


@pytest.fixture(autouse=True)
def _odd_names_registered():
    geta.register_attention(OddNames, heads="h", head_dim="d_k")
    yield
    registry._RECORDS.pop(OddNames, None)


def _inputs(batch: int = 6) -> Tensor:
    return torch.randn(batch, 9, 12, generator=torch.Generator().manual_seed(batch))


def _head_groups(g: geta.GETA) -> list:
    """Groups that take more than one output row of a query-like projection (a head, not one unit)."""
    return [group for group in g.groups
            if any(s.dim == 0 and len(s.indices) > 1 and s.name.split(".")[-2] in {"q", "q_proj", "wq", "qkv"}
                   for s in group.slices)]


@pytest.mark.parametrize("quantize", MODES)
@pytest.mark.parametrize("attention", [FusedDerivedWidth, *PRUNABLE_HEADS], ids=lambda c: c.__name__)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_pruning_never_breaks_the_compact_model(attention: type[nn.Module], quantize: str, seed: int) -> None:
    torch.manual_seed(seed)
    x = _inputs()
    g = geta.GETA(TinyViT(attention).eval(), x, quantize=quantize)
    g.zero_random_groups(0.6, seed=seed)
    compact = g.construct_subnet().eval()
    with torch.no_grad():
        expected, actual = g.model.eval()(x), compact(x)
        assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()
        other = _inputs(3)
        assert (compact(other) - g.model(other)).abs().max() <= 1e-4 * g.model(other).abs().max()
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in g.model.parameters())


@pytest.mark.parametrize("attention", PRUNABLE_HEADS, ids=lambda c: c.__name__)
def test_heads_found_and_removed_with_their_attributes(attention: type[nn.Module]) -> None:
    g = geta.GETA(TinyViT(attention).eval(), _inputs())
    heads = _head_groups(g)
    expected = 4 if attention is GroupedQuery else 8  # GQA: one group per KV head with its two query heads
    assert len(heads) == expected, [(u.count, u.reasons) for u in g.unprunable()]
    g.groups.zero_(torch.isin(torch.arange(len(g.groups)), torch.tensor([heads[0].index])))
    compact = g.construct_subnet()
    first = compact.blocks[0].attention
    counts = {name: getattr(first, name) for name in ("heads", "num_heads", "n_heads", "h") if hasattr(first, name)}
    assert list(counts.values()) == [2 if attention is GroupedQuery else 3]


def test_heads_with_a_derived_width_are_unprunable_with_the_probe_reason() -> None:
    g = geta.GETA(TinyViT(FusedDerivedWidth).eval(), _inputs())
    assert not _head_groups(g)
    reasons = [r for u in g.unprunable() for r in u.reasons if r.startswith("probed:")]
    assert reasons and all("is invalid for input of size" in r and "register_attention" in r for r in reasons)


def test_register_attention_refuses_bad_declarations() -> None:
    with pytest.raises(geta.ConfigError, match=r"nn\.Module subclass"):
        geta.register_attention(int, heads="h", head_dim="d")
    with pytest.raises(geta.ConfigError, match="head_dim, or widths"):
        geta.register_attention(OddNames, heads="h")
    with pytest.raises(geta.ConfigError, match="identifiers"):
        geta.register_attention(OddNames, heads="h.x", head_dim="d_k")


class InferredWidth(nn.Module):
    """Only the head count is an attribute; the head width is ``-1`` in the views (VitDet's style)."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, -1))


def test_a_head_width_computed_in_forward_still_follows_the_head_count() -> None:
    x = _inputs()
    g = geta.GETA(TinyViT(InferredWidth).eval(), x)
    heads = _head_groups(g)
    assert len(heads) == 8, [(u.count, u.reasons) for u in g.unprunable()]
    g.groups.zero_(torch.isin(torch.arange(len(g.groups)), torch.tensor([heads[0].index, heads[1].index])))
    compact = g.construct_subnet()
    assert [block.attention.num_heads for block in compact.blocks] in ([2, 4], [3, 3], [4, 2])
    with torch.no_grad():
        assert (compact(x) - g.model(x)).abs().max() <= 1e-4 * g.model(x).abs().max()


class SharedBias(nn.Module):
    """T5 style: the first block makes a per-head bias of zeros from ``self.heads`` and every later
    block adds that same tensor to its scores, so the blocks' heads must go together."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.embed = nn.Linear(12, dim)
        self.q, self.k, self.v, self.o = (nn.ModuleList(nn.Linear(dim, dim) for _ in range(2)) for _ in range(4))
        self.head = nn.Linear(dim, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        B, N, _ = x.shape
        bias = None
        for q, k, v, o in zip(self.q, self.k, self.v, self.o):
            heads = q.out_features // self.head_dim
            if bias is None:
                bias = torch.zeros(1, heads, N, N)
            split = [p(x).view(B, N, heads, self.head_dim).transpose(1, 2) for p in (q, k, v)]
            y = F.scaled_dot_product_attention(*split, attn_mask=bias)
            x = x + o(y.transpose(1, 2).reshape(B, N, heads * self.head_dim))
        return self.head(x.mean(1))


def test_a_bias_made_once_and_reused_ties_the_heads_of_every_block() -> None:
    x = _inputs()
    g = geta.GETA(SharedBias().eval(), x)
    heads = [group for group in g.groups if any(s.name.startswith("q.") and len(s.indices) > 1 for s in group.slices)]
    assert len(heads) == 4, [(u.count, u.reasons) for u in g.unprunable()]
    assert all({s.name for s in group.slices} >= {"q.0.weight", "q.1.weight"} for group in heads)
    for seed in range(3):
        g = geta.GETA(SharedBias().eval(), x)
        g.zero_random_groups(0.5, seed=seed)
        compact = g.construct_subnet()
        with torch.no_grad():
            assert (compact(x) - g.model(x)).abs().max() <= 1e-4 * g.model(x).abs().max()
