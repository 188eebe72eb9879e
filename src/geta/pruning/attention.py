"""``nn.MultiheadAttention`` with attention heads removed.

torch's forward (and the fused kernels that ``nn.TransformerEncoderLayer`` switches to) needs the
projections' inner width, ``num_heads * head_dim``, to equal ``embed_dim``. Once heads are removed it
does not, so subnet construction turns such a module into a :class:`CompactMultiheadAttention`: the
same object (parameters, quantizers, hooks and state-dict keys kept) with a forward that reads every
width from its weights.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from geta import registry
from geta.quant.prepare import original_parameter


class CompactMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with ``num_heads`` heads of ``head_dim`` whatever ``embed_dim`` is.

    Queries, keys and values may have any widths (``embed_dim``, ``kdim``, ``vdim``: the in-projections'
    input widths) and the output has ``out_proj``'s width. The call and its results are those of
    ``nn.MultiheadAttention.forward`` (batch_first, unbatched inputs, masks, ``need_weights``,
    ``average_attn_weights``, ``is_causal``, ``bias_k``/``bias_v``, ``add_zero_attn``, dropout).
    ``_qkv_same_embed_dim`` is False, which keeps torch's fused kernels (built for
    ``num_heads * head_dim == embed_dim``) away from it.
    """

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:  # (L, E) -> (L, 1, E)
            query, key, value = _same_map(lambda x: x.unsqueeze(1), query, key, value)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif self.batch_first:  # (N, L, E) -> (L, N, E)
            query, key, value = _same_map(lambda x: x.transpose(1, 0), query, key, value)
        key_padding_mask = _float_mask(key_padding_mask, query.dtype)
        attn_mask = _float_mask(attn_mask, query.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("is_causal needs attn_mask (a causal mask), as in nn.MultiheadAttention")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # scaled_dot_product_attention applies the causal mask itself
        else:
            is_causal = False
        tgt_len, batch, _ = query.shape
        q, k, v = self._project(query, key, value)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.repeat(1, batch, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, batch, 1)])
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        heads = q.shape[-1] // self.head_dim
        # (L, N, H * D) -> (N * H, L, D)
        q, k, v = (x.reshape(x.shape[0], batch * heads, -1).transpose(0, 1) for x in (q, k, v))
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(k.shape[0], 1, k.shape[2])], dim=1)
            v = torch.cat([v, v.new_zeros(v.shape[0], 1, v.shape[2])], dim=1)
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        src_len = k.shape[1]
        if attn_mask is not None and attn_mask.dim() == 2:
            attn_mask = attn_mask.unsqueeze(0)
        if key_padding_mask is not None:
            padding = key_padding_mask.view(batch, 1, 1, src_len).expand(-1, heads, -1, -1)
            padding = padding.reshape(batch * heads, 1, src_len)
            attn_mask = padding if attn_mask is None else attn_mask + padding
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = torch.bmm(q * math.sqrt(1.0 / q.shape[-1]), k.transpose(-2, -1))
            weights = torch.softmax(scores if attn_mask is None else scores + attn_mask, dim=-1)
            if dropout > 0.0:
                weights = F.dropout(weights, p=dropout)
            out = torch.bmm(weights, v).transpose(0, 1)
            weights = weights.view(batch, heads, tgt_len, src_len)
            weights = weights.mean(dim=1) if average_attn_weights else weights
            if not batched:
                weights = weights.squeeze(0)
        else:
            if attn_mask is not None:
                attn_mask = (attn_mask.unsqueeze(0) if attn_mask.shape[0] == 1
                             else attn_mask.view(batch, heads, -1, src_len))
            q, k, v = (x.view(batch, heads, x.shape[1], x.shape[2]) for x in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout, is_causal).permute(2, 0, 1, 3)
        out = F.linear(out.reshape(tgt_len * batch, -1), self.out_proj.weight, self.out_proj.bias)
        out = out.view(tgt_len, batch, -1)
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(1, 0)
        return out, weights

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values through their in-projections (one product where inputs coincide)."""
        bias_q = bias_k = bias_v = None
        if self.in_proj_bias is not None:
            bias_q, bias_k, bias_v = self.in_proj_bias.chunk(3)
        weight = self.in_proj_weight
        if weight is None:
            return (F.linear(query, self.q_proj_weight, bias_q), F.linear(key, self.k_proj_weight, bias_k),
                    F.linear(value, self.v_proj_weight, bias_v))
        if query is key and key is value:
            q, k, v = F.linear(query, weight, self.in_proj_bias).chunk(3, dim=-1)
            return q, k, v
        weight_q, weight_k, weight_v = weight.chunk(3)
        return F.linear(query, weight_q, bias_q), F.linear(key, weight_k, bias_k), F.linear(value, weight_v, bias_v)


# Its forward reads every width from its weights: no reshape is tied to another width, and its splits
# (of the packed projection) follow its widths, which the width handler updates (dependency analysis).
registry.register_module(CompactMultiheadAttention, owns_split_sizes=True, fixed_reshapes=False)


def supports_compact(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.MultiheadAttention`` itself (or compact), not a subclass whose
    methods a compact forward would bypass."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls in (nn.MultiheadAttention, CompactMultiheadAttention)


def update_attention_widths(module: nn.MultiheadAttention) -> None:
    """Read ``module``'s widths from its weights; make it compact if they no longer fit torch's forward."""
    packed = original_parameter(module, "in_proj_weight")
    if packed is not None:
        inner = packed.shape[0] // 3
        embed_dim = kdim = vdim = packed.shape[1]
    else:
        inner = original_parameter(module, "q_proj_weight").shape[0]
        embed_dim = original_parameter(module, "q_proj_weight").shape[1]
        kdim = original_parameter(module, "k_proj_weight").shape[1]
        vdim = original_parameter(module, "v_proj_weight").shape[1]
    out = original_parameter(module.out_proj, "weight").shape[0]
    if (inner, embed_dim, kdim, vdim, out) != (module.embed_dim,) * 2 + (module.kdim, module.vdim, module.embed_dim):
        make_compact(module)
    module.embed_dim, module.kdim, module.vdim = embed_dim, kdim, vdim
    module.num_heads = inner // module.head_dim


def make_compact(module: nn.MultiheadAttention) -> None:
    """Turn ``module`` into a CompactMultiheadAttention in place, keeping its parametrizations.

    The parametrized class torch generated is shared with deep copies of the module (the training
    model), so it is left untouched: the chains are re-registered on the new class instead."""
    if isinstance(module, CompactMultiheadAttention):
        return
    chains = cast(nn.ModuleDict, module._modules.pop("parametrizations", None) or nn.ModuleDict())
    module.__class__ = CompactMultiheadAttention
    module._qkv_same_embed_dim = False
    for name, chain in chains.items():
        chain = cast(parametrize.ParametrizationList, chain)
        module.register_parameter(name, cast(nn.Parameter, chain.original))  # register_parameter checks it
        for parametrization in chain:
            parametrize.register_parametrization(module, name, parametrization, unsafe=chain.unsafe)


def _same_map(fn, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``fn`` applied to each input, keeping which of them are the same tensor."""
    q = fn(query)
    k = q if key is query else fn(key)
    v = k if value is key else (q if value is query else fn(value))
    return q, k, v


def _float_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True: do not attend) as an additive float mask, as nn.MultiheadAttention does."""
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
