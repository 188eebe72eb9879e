"""Groups and compact models across the torchvision classification zoo (randomly initialized, eval mode).

The default run checks a few small, diverse models; ``-m slow`` sweeps every classification model that
torchvision lists, plus a quantization-aware parametrization of a handful of representative ones.
"""

from __future__ import annotations

import collections

import pytest
import torch
from tests.pruning.equivalence import check_equivalence

import geta

torchvision = pytest.importorskip("torchvision")

ALL = sorted(torchvision.models.list_models(module=torchvision.models))
DEFAULT = ["efficientnet_b0", "mobilenet_v2", "regnet_x_400mf", "resnet18", "shufflenet_v2_x0_5", "squeezenet1_0"]
QUANTIZED = ["convnext_tiny", "mobilenet_v2", "resnet18", "vgg11_bn", "vit_b_16"]

# reasons that mean the analysis gave up, not that the model has nothing to remove
_GAVE_UP = ("not understood", "gave no result", "untracked value")


def _side(name: str) -> int:
    """The smallest convenient square input side the model accepts."""
    if name.startswith(("vit_", "maxvit_")):
        return 224  # fixed positional embeddings / partition grid built for 224
    if name == "inception_v3":
        return 75  # its stem needs at least 75 pixels
    return 64


def _model(name: str) -> torch.nn.Module:
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def _check(name: str, quantize: str, dtype: torch.dtype = torch.float32) -> None:
    torch.manual_seed(0)
    model = _model(name).to(dtype)
    side = _side(name)
    inputs = (torch.randn(1, 3, side, side, dtype=dtype),)
    other = (torch.randn(2, 3, side, side, dtype=dtype),)
    try:
        check_equivalence(model, inputs, other, quantize)
    except AssertionError as error:
        if not str(error).startswith("no groups found"):
            raise
        reasons = collections.Counter()
        for structure in geta.GETA(model, inputs, quantize="none").unprunable():
            for reason in structure.reasons:
                reasons[reason] += structure.count
        if any(marker in reason for reason in reasons for marker in _GAVE_UP):
            raise  # an op the analysis does not understand is a failure, not a property of the model
        message = f"{name} has no removable structure: {reasons.most_common(5)}"
        print(message)
        pytest.skip(message)


@pytest.mark.parametrize("name", DEFAULT)
def test_torchvision_default(name: str) -> None:
    _check(name, "none")


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_torchvision_zoo(name: str) -> None:
    _check(name, "none")


@pytest.mark.slow
@pytest.mark.parametrize("name", QUANTIZED)
def test_torchvision_zoo_quantized(name: str) -> None:
    # In float64: in float32, removing channels reorders sums by ~1e-7 relative, and activation quantizers
    # round some of those values across a step boundary; over a deep CNN the output then moves by ~3e-4
    # relative (resnet18), beyond the 1e-4 the invariant allows, although the compact model is exact.
    _check(name, "weights+activations", torch.float64)


def _tiny_vit() -> torch.nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=16, mlp_dim=32)


def _tiny_swin() -> torch.nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=[2, 2],
                           stochastic_depth_prob=0.0, num_classes=5)


def _tiny_maxvit() -> torch.nn.Module:
    from torchvision.models.maxvit import MaxVit

    return MaxVit(input_size=(32, 32), stem_channels=8, partition_size=4, block_channels=[16], block_layers=[1],
                  head_dim=4, stochastic_depth_prob=0.0, num_classes=5)


def _qkv_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The weights whose rows are attention heads' q, k and v, found by module class."""
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    weights = []
    for module in model.modules():
        if isinstance(module, torch.nn.MultiheadAttention):
            weights.append(module.in_proj_weight)
        elif isinstance(module, ShiftedWindowAttention):
            weights.append(module.qkv.weight)
        elif isinstance(module, RelativePositionalMultiHeadAttention):
            weights.append(module.to_qkv.weight)
    return weights


# name: (factory, whether heads are removable). ViT uses nn.MultiheadAttention (made compact); Swin and
# MaxViT derive the head width from the input width, so their heads stay, with the reason.
TINY_ATTENTION = {"vit": (_tiny_vit, True), "swin": (_tiny_swin, False), "maxvit": (_tiny_maxvit, False)}


@pytest.mark.parametrize("name", sorted(TINY_ATTENTION))
def test_attention_heads(name: str) -> None:
    factory, removable = TINY_ATTENTION[name]
    torch.manual_seed(0)
    g, _ = check_equivalence(factory().eval(), (torch.randn(1, 3, 32, 32),), (torch.randn(2, 3, 32, 32),), "none")
    weights = _qkv_weights(g.model)
    assert weights
    heads = [group for group in g.groups if any(any(s.tensor is w and s.dim == 0 for w in weights)
                                                 for s in group.slices)]
    if removable:
        assert len(heads) == 8  # 2 layers x 4 heads
    else:
        assert not heads
        reasons = {reason for structure in g.unprunable() for reason in structure.reasons}
        assert any("derives from other widths" in reason for reason in reasons)
