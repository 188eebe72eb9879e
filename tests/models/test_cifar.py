"""ResNet20 and VGG7 run on 28x28 and 32x32 inputs and have the expected sizes."""

import pytest
import torch

from geta.models.cifar import ResNet20, vgg7_bn


@pytest.mark.parametrize("side", [28, 32])
def test_shapes(side: int) -> None:
    assert ResNet20(in_channels=1)(torch.randn(2, 1, side, side)).shape == (2, 10)
    assert vgg7_bn(in_channels=1, image_size=side)(torch.randn(2, 1, side, side)).shape == (2, 10)


def test_resnet20_has_about_270k_parameters() -> None:
    assert 260_000 < sum(p.numel() for p in ResNet20().parameters()) < 280_000
