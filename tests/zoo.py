"""Small models used across the tests."""

from __future__ import annotations

import torch
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
