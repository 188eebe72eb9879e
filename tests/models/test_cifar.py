"""ResNet20 and VGG7 run on 28x28 and 32x32 inputs and have the expected sizes."""

import pytest
import torch
from tests.pruning.equivalence import check_equivalence

from geta.models.cifar import ResNet20, vgg7_bn


@pytest.mark.parametrize("side", [28, 32])
def test_shapes(side: int) -> None:
    assert ResNet20(in_channels=1)(torch.randn(2, 1, side, side)).shape == (2, 10)
    assert vgg7_bn(in_channels=1, image_size=side)(torch.randn(2, 1, side, side)).shape == (2, 10)


def test_resnet20_has_about_270k_parameters() -> None:
    assert 260_000 < sum(p.numel() for p in ResNet20().parameters()) < 280_000


@pytest.mark.parametrize(("side", "flat"), [(28, 3 * 3), (32, 4 * 4)])
def test_vgg7_flattens_what_its_three_pools_leave(side: int, flat: int) -> None:
    model = vgg7_bn(in_channels=1, width=8, image_size=side)  # 28 -> 14 -> 7 -> 3, 32 -> 16 -> 8 -> 4
    assert model[-1].in_features == 4 * 8 * flat


@pytest.mark.parametrize("side", [28, 32])
@pytest.mark.parametrize("name", ["resnet20", "vgg7"])
def test_compact_models_on_single_channel_images(name: str, side: int) -> None:
    def build():
        if name == "resnet20":
            return ResNet20(in_channels=1, width=8)
        return vgg7_bn(in_channels=1, width=8, image_size=side)

    g, compact = check_equivalence(build(), (torch.rand(2, 1, side, side),), (torch.rand(3, 1, side, side),), "weights")
    assert len(g.groups) > 0 and compact(torch.rand(1, 1, side, side)).shape == (1, 10)
