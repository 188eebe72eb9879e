"""Architectures written the way users write them, none of them from the project's zoo.

Each entry builds a model and its inputs at two batch sizes. Several hold sizes in attributes that the
traced graph does not show (a hidden size used to make a state, a gate count used to split), so that
geta has to find out from the probe that their structures cannot be removed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class UNet(nn.Module):
    """Encoder-decoder with a concatenated skip connection and nearest upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = nn.Sequential(nn.Conv2d(24, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.down1(x)
        b = self.down2(a)
        return self.out(self.fuse(torch.cat([self.up(b), a], dim=1)))


class SqueezeExcite(nn.Module):
    """Channel attention: global pool, bottleneck, sigmoid gate multiplied back onto the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(16, 4), nn.Linear(4, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.conv(x))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3))))))
        y = y * gate[:, :, None, None]
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


class DenseBlock(nn.Module):
    """DenseNet style: every layer sees the concatenation of all earlier feature maps."""

    def __init__(self, growth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layers = nn.ModuleList(nn.Conv2d(8 + i * growth, growth, 3, padding=1) for i in range(3))
        self.head = nn.Linear(8 + 3 * growth, 4)

    def forward(self, x: Tensor) -> Tensor:
        features = [F.relu(self.stem(x))]
        for layer in self.layers:
            features.append(F.relu(layer(torch.cat(features, 1))))
        return self.head(torch.cat(features, 1).mean((2, 3)))


class GatedMLP(nn.Module):
    """GLU feed-forward: one projection chunked into value and gate."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(10, 16)
        self.up = nn.Linear(16, 2 * 24)
        self.down = nn.Linear(24, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        value, gate = self.up(h).chunk(2, dim=-1)
        return self.head(h + self.down(value * F.silu(gate)))


class HandGRU(nn.Module):
    """A GRU cell unrolled by hand; its state is made from ``self.hidden`` (an attribute)."""

    def __init__(self, features: int = 6, hidden: int = 12) -> None:
        super().__init__()
        self.hidden = hidden
        self.x2h = nn.Linear(features, 3 * hidden)
        self.h2h = nn.Linear(hidden, 3 * hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            xr, xz, xn = self.x2h(x[:, t]).split(self.hidden, -1)
            hr, hz, hn = self.h2h(h).split(self.hidden, -1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            h = (1 - z) * torch.tanh(xn + r * hn) + z * h
        return self.head(h)


class MixerBlock(nn.Module):
    """MLP-Mixer: token mixing across the transposed sequence, channel mixing across features."""

    def __init__(self, tokens: int = 9, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(12, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.tokens = nn.Sequential(nn.Linear(tokens, 24), nn.GELU(), nn.Linear(24, tokens))
        self.channels = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))
        self.head = nn.Linear(dim, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        x = x + self.tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.channels(self.norm2(x))
        return self.head(x.mean(1))


class ShuffleNetUnit(nn.Module):
    """Grouped 1x1 convolutions with a channel shuffle (view, transpose, view) between them."""

    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.g1 = nn.Conv2d(8, 8, 1, groups=groups)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.g2 = nn.Conv2d(8, 8, 1, groups=groups)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        y = F.relu(self.g1(x))
        b, c, h, w = y.shape
        y = y.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)
        y = self.g2(self.dw(y))
        return self.head(F.relu(x + y).mean((2, 3)))


class EinsumAttention(nn.Module):
    """Attention written with einsum over (batch, heads, tokens, head width), heads from attributes."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim // heads
        self.embed = nn.Linear(12, dim)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, self.dim_head) for t in self.to_qkv(x).chunk(3, dim=-1))
        attn = torch.einsum("bnhd,bmhd->bhnm", q, k).mul(self.dim_head**-0.5).softmax(-1)
        out = torch.einsum("bhnm,bmhd->bnhd", attn, v).reshape(b, n, self.heads * self.dim_head)
        return self.head((x + self.to_out(out)).mean(1))


class TiedLanguageModel(nn.Module):
    """Embedding tied to the output projection, a GELU MLP in between; returns a dict."""

    def __init__(self, vocab: int = 30, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: Tensor) -> dict[str, Tensor]:
        h = self.embed(ids)
        h = h + self.mlp(h)
        return {"logits": self.lm_head(h), "hidden": h}


class FunctionalWeights(nn.Module):
    """Parameters held directly and used through F.linear / F.conv1d (no layer modules)."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(10, 4, 3) * 0.3)
        self.b1 = nn.Parameter(torch.zeros(10))
        self.w2 = nn.Parameter(torch.randn(3, 10) * 0.3)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(F.conv1d(x, self.w1, self.b1, padding=1))
        return F.linear(y.mean(-1), self.w2)


class SuperResolution(nn.Module):
    """ESPCN: convolutions, then PixelShuffle moves channels into space."""

    def __init__(self, scale: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.Tanh(), nn.Conv2d(16, 8, 3, padding=1), nn.Tanh())
        self.tail = nn.Conv2d(8, scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.tail(self.body(x)))


class AudioConv1d(nn.Module):
    """Conv1d stack with GroupNorm, dilations and a residual, pooled over time."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv1d(2, 16, 5, padding=2)
        self.norm = nn.GroupNorm(4, 16)
        self.dilated = nn.Conv1d(16, 16, 3, padding=2, dilation=2)
        self.proj = nn.Conv1d(16, 24, 1)
        self.head = nn.Linear(24, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.norm(self.inp(x)))
        h = h + F.gelu(self.dilated(h))
        return self.head(self.proj(h).amax(-1))


class TwoTowers(nn.Module):
    """Two inputs, two towers, a bilinear interaction and a tuple of outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.user = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12))
        self.item = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12))
        self.score = nn.Bilinear(12, 12, 1)

    def forward(self, user: Tensor, item: Tensor) -> tuple[Tensor, Tensor]:
        u, i = self.user(user), self.item(item)
        return self.score(u, i), (u * i).sum(-1)


class StatefulNorm(nn.Module):
    """A batch-norm-like layer of the user's own: its running statistics sized by ``self.features``."""

    def __init__(self, features: int = 12) -> None:
        super().__init__()
        self.features = features
        self.fc = nn.Linear(5, features)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, features))
        self.head = nn.Linear(features, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.fc(x)) * self.scale
        return self.head(y + torch.arange(self.features, dtype=y.dtype) * 0.01)


def _images(channels: int = 3, side: int = 16) -> Callable[[int], tuple[Tensor, ...]]:
    return lambda batch: (torch.randn(batch, channels, side, side),)


def _sequence(features: int, length: int = 9) -> Callable[[int], tuple[Tensor, ...]]:
    return lambda batch: (torch.randn(batch, length, features),)


ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], Callable[[int], tuple[Tensor, ...]]]] = {
    "unet": (UNet, _images()),
    "squeeze-excite": (SqueezeExcite, _images()),
    "densenet-block": (DenseBlock, _images()),
    "gated-mlp": (GatedMLP, lambda batch: (torch.randn(batch, 7, 10),)),
    "hand-gru": (HandGRU, _sequence(6, 5)),
    "mlp-mixer": (MixerBlock, _sequence(12)),
    "shufflenet-unit": (ShuffleNetUnit, _images()),
    "einsum-attention": (EinsumAttention, _sequence(12)),
    "tied-language-model": (TiedLanguageModel, lambda batch: (torch.randint(0, 30, (batch, 7)),)),
    "functional-weights": (FunctionalWeights, lambda batch: (torch.randn(batch, 4, 11),)),
    "super-resolution": (SuperResolution, _images(1, 12)),
    "audio-conv1d": (AudioConv1d, lambda batch: (torch.randn(batch, 2, 40),)),
    "two-towers": (TwoTowers, lambda batch: (torch.randn(batch, 8), torch.randn(batch, 6))),
    "stateful-norm": (StatefulNorm, lambda batch: (torch.randn(batch, 5),)),
}
