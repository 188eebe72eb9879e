"""CIFAR-style ResNet20 and VGG7 with batch norm, for 28x28 or 32x32 inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (1x1 conv-BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet20 of He et al. (3 stages of 3 basic blocks, widths w, 2w, 4w)."""

    def __init__(self, classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, channels = [], width
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            for index in range(3):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, stage_width, stride))
                channels = stage_width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


def vgg7_bn(classes: int = 10, in_channels: int = 3, width: int = 64, image_size: int = 32) -> nn.Sequential:
    """VGG7: six 3x3 conv-BN-ReLU layers in three pooled stages (w, 2w, 4w), flattened into a linear layer."""
    layers: list[nn.Module] = []
    channels = in_channels
    for stage_width in (width, 2 * width, 4 * width):
        for _ in range(2):
            layers += [nn.Conv2d(channels, stage_width, 3, padding=1), nn.BatchNorm2d(stage_width), nn.ReLU()]
            channels = stage_width
        layers.append(nn.MaxPool2d(2))
    side = image_size // 8
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * side * side, classes))
