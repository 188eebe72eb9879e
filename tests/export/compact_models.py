"""Compact models for the export tests: GETA on a small model, 30% of the groups removed, quantizers
set to mixed bit widths (2..8 bits, per layer and per channel) and exponents t != 1."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import geta


class TinyEncoder(nn.Module):
    """A linear embedding, a two-layer transformer encoder (4 heads) and a linear head."""

    def __init__(self, features: int = 8, width: int = 32, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


geta.register_module(TinyEncoder)


def compact(model: nn.Module, inputs: Tensor, quantize: str, per_channel: bool, seed: int = 0,
            warp: bool = True) -> nn.Module:
    """The compact model of ``model`` with random groups removed and quantizers at mixed bits."""
    g = geta.GETA(model.eval(), inputs, quantize=quantize, per_channel=per_channel, initial_weight_bits=8,
                  initial_act_bits=8)
    g.zero_random_groups(0.3, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in g.model.modules():
            if isinstance(module, geta.Quantizer):
                channels = module.d.numel()
                if warp:
                    module.t.copy_((0.8 + 0.4 * torch.rand(channels, generator=generator)).reshape(module.t.shape))
                bits = torch.randint(2, 9, (channels,), generator=generator).float()
                module.d.copy_(module.step_for_bits(bits).reshape(module.d.shape))
    return g.construct_subnet().eval()
