"""Small models used across the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

import geta


class ScaledDense(nn.Module):
    """A user layer geta does not know until it is registered: y = x @ kernel * scale."""

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(fan_in, fan_out) / fan_in**0.5)
        self.scale = nn.Parameter(torch.ones(fan_out))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.kernel * self.scale


geta.register_layer(ScaledDense, weights=("kernel",), out_axis=1)


class MyLinear(nn.Linear):
    """A subclass of Linear: covered through the registry's MRO lookup."""


class EveryLayer(nn.Module):
    """One model holding every layer kind geta quantizes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.gpt_conv1d = Conv1D(16, 16)
        self.conv1d = nn.Conv1d(16, 8, 3, padding=1)
        self.deconv1d = nn.ConvTranspose1d(8, 8, 3, padding=1)
        self.conv2d = nn.Conv2d(3, 6, 3, padding=1)
        self.deconv2d = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.conv3d = nn.Conv3d(2, 4, 3, padding=1)
        self.deconv3d = nn.ConvTranspose3d(4, 2, 2, stride=2)
        self.linear = nn.Linear(8 + 4 + 2, 12)
        self.sub_linear = MyLinear(12, 12)
        self.custom = ScaledDense(12, 5)

    def forward(self, tokens: Tensor, image: Tensor, volume: Tensor) -> Tensor:
        h = self.embed(tokens)
        h, _ = self.attn(h, h, h, need_weights=False)
        h = torch.relu(self.gpt_conv1d(h.contiguous()))
        s = self.deconv1d(torch.relu(self.conv1d(h.transpose(1, 2)))).mean(-1)
        i = self.deconv2d(torch.relu(self.conv2d(image))).mean((-1, -2))
        v = self.deconv3d(torch.relu(self.conv3d(volume))).mean((-1, -2, -3))
        z = torch.relu(self.linear(torch.cat([s, i, v], dim=1)))
        return self.custom(self.sub_linear(z))


def every_layer_inputs(batch: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    return torch.randint(0, 50, (batch, 7)), torch.randn(batch, 3, 8, 8), torch.randn(batch, 2, 4, 4, 4)


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


class ConcatNet(nn.Module):
    """Two branches concatenated along channels, then split in halves again (concat/chunk offsets)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 6, 3, padding=1)
        self.right = nn.Conv2d(8, 10, 1)
        self.bn = nn.BatchNorm2d(16)
        self.after_first = nn.Conv2d(8, 4, 1)
        self.after_second = nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(self.bn(torch.cat([self.left(h), self.right(h)], dim=1)))
        first, second = h.chunk(2, dim=1)
        h = torch.cat([self.after_first(first), self.after_second(second)], dim=1)
        return self.head(h.mean((2, 3)))


class InvertedResidual(nn.Module):
    """MobileNetV2-style block: expand 1x1, depthwise 3x3, project 1x1, residual add."""

    def __init__(self, channels: int, expansion: int = 4) -> None:
        super().__init__()
        hidden = channels * expansion
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.project(self.depthwise(self.expand(x)))


class DepthwiseNet(nn.Module):
    """Stem, two inverted residual blocks, pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(InvertedResidual(8), InvertedResidual(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class SelfAttention(nn.Module):
    """Manual q/k/v projections and scaled_dot_product_attention; heads of ``head_dim``, KV heads for GQA."""

    def __init__(self, dim: int, heads: int, kv_heads: int | None = None) -> None:
        super().__init__()
        self.head_dim = dim // heads
        kv_heads = kv_heads or heads
        self.q = nn.Linear(dim, heads * self.head_dim)
        self.k = nn.Linear(dim, kv_heads * self.head_dim)
        self.v = nn.Linear(dim, kv_heads * self.head_dim)
        self.out = nn.Linear(heads * self.head_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        q = self.q(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        k = self.k(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        v = self.v(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        repeats = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(repeats, dim=1) if repeats > 1 else k
        v = v.repeat_interleave(repeats, dim=1) if repeats > 1 else v
        attended = F.scaled_dot_product_attention(q, k, v)
        return self.out(attended.transpose(1, 2).reshape(batch, length, -1))


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: attention and a GELU feed-forward, both residual."""

    def __init__(self, dim: int = 16, heads: int = 4, kv_heads: int | None = None, hidden: int = 32) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, kv_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class TinyEncoder(nn.Module):
    """Token embedding, two encoder blocks, mean-pooled classifier."""

    def __init__(self, kv_heads: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 16)
        self.blocks = nn.Sequential(EncoderBlock(kv_heads=kv_heads), EncoderBlock(kv_heads=kv_heads))
        self.head = nn.Linear(16, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.blocks(self.embed(tokens)).mean(1))


class TorchEncoder(nn.Module):
    """nn.TransformerEncoder over embedded tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 16)
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(1))


class AttentionVariants(nn.Module):
    """nn.MultiheadAttention called every way: self-attention returning (unused) averaged weights,
    sequence-first cross-attention with separate key/value widths and a padding mask, and packed
    cross-attention whose keys and values are one tensor. No layer norms: embedding widths are prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.memory = nn.Linear(8, 12)
        self.self_attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.cross = nn.MultiheadAttention(16, 4, kdim=12, vdim=12)
        self.packed_memory = nn.Linear(8, 16)
        self.packed_cross = nn.MultiheadAttention(16, 2, batch_first=True, add_bias_kv=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor, memory: Tensor, padding: Tensor) -> Tensor:
        h = torch.relu(self.embed(x))
        h, _ = self.self_attn(h, h, h)
        m = torch.relu(self.memory(memory)).transpose(0, 1)
        h, _ = self.cross(h.transpose(0, 1), m, m, key_padding_mask=padding, need_weights=False)
        p = torch.relu(self.packed_memory(memory))
        h, _ = self.packed_cross(h.transpose(0, 1), p, p, need_weights=False)
        return self.head(h.mean(1))


def attention_variants_inputs(batch: int, length: int, memory: int) -> tuple[Tensor, Tensor, Tensor]:
    padding = torch.zeros(batch, memory, dtype=torch.bool)
    padding[-1, -2:] = True
    return torch.randn(batch, length, 8), torch.randn(batch, memory, 8), padding


class GroupedNet(nn.Module):
    """A ResNeXt-like bottleneck with two grouped convolutions (4 groups; the second widens each group
    from 4 to 6 channels), a residual add, then a grouped transposed convolution and a pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.reduce = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(16),
                                     nn.ReLU())
        self.widen = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1, groups=4), nn.BatchNorm2d(24), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(24, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2, groups=2)
        self.head = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.expand(self.widen(self.grouped(self.reduce(h)))))
        return self.head(torch.relu(self.up(h)).mean((2, 3)))
