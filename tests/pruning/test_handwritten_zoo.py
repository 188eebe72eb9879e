"""Groups and compact models on hand-written architectures, plain and quantization-aware."""

from __future__ import annotations

import pytest
import torch
from tests.pruning.equivalence import check_equivalence
from tests.zoo import (
    AttentionVariants,
    ConcatNet,
    DepthwiseNet,
    GroupedNet,
    TinyEncoder,
    TorchEncoder,
    attention_variants_inputs,
)

import geta
from geta.models.cifar import ResNet20, vgg7_bn

MODES = ["none", "weights", "weights+activations"]


def _image(batch: int, side: int = 16) -> tuple[torch.Tensor]:
    return (torch.randn(batch, 3, side, side),)


def _tokens(batch: int, length: int) -> tuple[torch.Tensor]:
    return (torch.randint(0, 30, (batch, length)),)


ZOO = {
    "resnet20": (lambda: ResNet20(width=8), _image(2, 32), _image(3, 32)),
    "vgg7": (lambda: vgg7_bn(width=8, image_size=32), _image(2, 32), _image(5, 32)),
    "concat": (ConcatNet, _image(2), _image(3)),
    "depthwise": (DepthwiseNet, _image(2), _image(4, 12)),
    "grouped": (GroupedNet, _image(2), _image(3, 12)),
    "encoder": (TinyEncoder, _tokens(2, 6), _tokens(3, 9)),
    "encoder-gqa": (lambda: TinyEncoder(kv_heads=2), _tokens(2, 6), _tokens(3, 9)),
    "torch-encoder": (TorchEncoder, _tokens(2, 6), _tokens(3, 9)),
    "attention-variants": (AttentionVariants, attention_variants_inputs(2, 5, 7), attention_variants_inputs(3, 4, 6)),
}


@pytest.mark.parametrize("quantize", MODES)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_equivalence(name: str, quantize: str) -> None:
    factory, inputs, other = ZOO[name]
    torch.manual_seed(0)
    check_equivalence(factory().eval(), inputs, other, quantize)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_same_groups_plain_and_quantization_aware(name: str) -> None:
    factory, inputs, _ = ZOO[name]
    model = factory().eval()

    def summary(g: geta.GETA) -> list[tuple[tuple[str, int, int], ...]]:
        rows = []
        for group in g.groups:
            slices = []
            for s in group.slices:
                if s.is_quantizer:
                    continue
                slices.append((s.name, s.dim, len(s.indices)))
            rows.append(tuple(sorted(slices)))
        return rows

    plain = summary(geta.GETA(model, inputs, quantize="none"))
    for kwargs in ({"quantize": "weights"}, {"quantize": "weights+activations", "per_channel": True}):
        assert summary(geta.GETA(model, inputs, **kwargs)) == plain
