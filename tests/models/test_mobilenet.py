"""The small MobileNetV2 has the expected shapes, and GETA finds pruning groups in it that it can remove."""

import pytest
import torch
from tests.pruning.equivalence import check_equivalence
from torch import nn

import geta
from geta.models.mobilenet import InvertedResidual, MobileNetV2, mobilenetv2_small


def test_shapes_and_size() -> None:
    model = mobilenetv2_small()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model.stem(torch.randn(1, 1, 28, 28)).shape == (1, 16, 28, 28)
    features = model.blocks(model.stem(torch.randn(1, 1, 28, 28)))
    assert features.shape == (1, 64, 4, 4)  # 28 -> 14 -> 7 -> 4
    assert 80_000 < sum(p.numel() for p in model.parameters()) < 110_000


def test_blocks_add_their_input_only_where_the_shape_is_kept() -> None:
    blocks = [b for b in mobilenetv2_small().blocks if isinstance(b, InvertedResidual)]
    assert [b.residual for b in blocks] == [True, False, True, False, True, False, True]
    depthwise = [m for m in blocks[1].conv if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 1 and depthwise[0].groups == depthwise[0].in_channels == 64
    assert isinstance(blocks[1].conv[-1], nn.BatchNorm2d)  # linear bottleneck: no activation after the projection


def test_width_multiplier_and_activation() -> None:
    model = MobileNetV2(classes=5, in_channels=3, width_multiplier=0.5, activation=nn.ReLU)
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 5)
    assert model.fc.in_features == 128 and not any(isinstance(m, nn.ReLU6) for m in model.modules())
    with pytest.raises(ValueError, match="width_multiplier"):
        MobileNetV2(width_multiplier=0)


def test_geta_finds_groups_and_removes_them() -> None:
    torch.manual_seed(0)
    g, compact = check_equivalence(MobileNetV2(width_multiplier=0.5), (torch.rand(2, 1, 28, 28),),
                                   (torch.rand(3, 1, 28, 28),), "weights")
    names = {s.name for group in g.groups for s in group.slices}
    assert "blocks.1.conv.3.weight" in names  # the depthwise conv's channels are groups
    assert "blocks.1.conv.0.weight" in names  # and so are the expansion's
    for module in compact.modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            assert module.groups == module.in_channels == module.out_channels
    assert compact(torch.rand(1, 1, 28, 28)).shape == (1, 10)


def test_geta_quantizes_every_layer_with_activations() -> None:
    g = geta.GETA(MobileNetV2(width_multiplier=0.5), torch.rand(2, 1, 28, 28), quantize="weights+activations",
                  exponent="fixed")
    assert len(g.groups) > 0 and not g.unquantized()
