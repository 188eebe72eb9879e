"""A small MobileNetV2 (Sandler et al., 2018) for 28x28 single-channel images such as Fashion-MNIST.

The stem is a 3x3 conv-BN-ReLU6 at full resolution; then inverted residual blocks (a 1x1 expansion
conv-BN-ReLU6, a 3x3 depthwise conv-BN-ReLU6, a 1x1 linear projection conv-BN) with a residual add
where the block keeps its shape, stride 2 where a stage downsamples (28 -> 14 -> 7 -> 4); a 1x1
conv-BN-ReLU6 to the head width, global average pooling and a linear classifier. At the default width
it has about 96k parameters and 5M multiply-accumulates per 28x28 image, small enough to train in
minutes on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

# (expansion factor t, output channels c, blocks n, stride of the first block s), as in the paper's Table 2
DEFAULT_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (4, 24, 2, 2),
    (4, 32, 2, 2),
    (4, 64, 2, 2),
)


def _conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
    activation: Callable[[], nn.Module] | None = nn.ReLU6,
) -> list[nn.Module]:
    """Conv (no bias), batch norm and, unless ``activation`` is None, the activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if activation is not None:
        layers.append(activation())
    return layers


class InvertedResidual(nn.Module):
    """Expand (1x1, skipped at expansion 1), depthwise 3x3 and linear projection (1x1, no activation), each
    with batch norm; the input is added to the output when the block keeps the shape (stride 1, same width)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expansion: int,
        activation: Callable[[], nn.Module] = nn.ReLU6,
    ) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += _conv_bn(in_channels, hidden, 1, activation=activation)
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden, activation=activation)
        layers += _conv_bn(hidden, out_channels, 1, activation=None)
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """A MobileNetV2 for small images: stem, inverted residual stages, 1x1 head conv, pooled linear classifier.

    ``stages``: (expansion, width, blocks, first stride) per stage, widths before ``width_multiplier``;
    ``stem_width`` and ``head_width`` likewise. ``activation`` builds the activation module (ReLU6 in the
    paper). Widths are rounded to whole channels, at least 1.
    """

    def __init__(
        self,
        classes: int = 10,
        in_channels: int = 1,
        *,
        width_multiplier: float = 1.0,
        stem_width: int = 16,
        head_width: int = 256,
        stages: Sequence[tuple[int, int, int, int]] = DEFAULT_STAGES,
        activation: Callable[[], nn.Module] = nn.ReLU6,
    ) -> None:
        super().__init__()
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier={width_multiplier} must be positive")

        def scaled(width: int) -> int:
            return max(1, round(width * width_multiplier))

        channels = scaled(stem_width)
        self.stem = nn.Sequential(*_conv_bn(in_channels, channels, 3, activation=activation))
        blocks: list[nn.Module] = []
        for expansion, width, count, stride in stages:
            for index in range(count):
                blocks.append(InvertedResidual(channels, scaled(width), stride if index == 0 else 1, expansion,
                                               activation))
                channels = scaled(width)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv_bn(channels, scaled(head_width), 1, activation=activation))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(scaled(head_width), classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(out), 1))


def mobilenetv2_small(classes: int = 10, in_channels: int = 1, width_multiplier: float = 1.0) -> MobileNetV2:
    """The default small MobileNetV2 (stages :data:`DEFAULT_STAGES`, stem 16, head 256 channels)."""
    return MobileNetV2(classes, in_channels, width_multiplier=width_multiplier)
