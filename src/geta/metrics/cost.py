"""Multiply-accumulates per layer, counted op by op with ``torch.utils.flop_counter``'s formulas.

Every op that has a FLOP formula is counted (convolutions, matmuls, attention's QK^T and AV). An
op is charged to a quantizable layer when one of its operands is that layer's (quantized) weight,
recognised by tensor storage, so a layer whose weight is used functionally (e.g.
``MultiheadAttention.out_proj``) is still charged correctly; every other op (attention products
between activations) is charged to no layer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torch.utils.hooks import RemovableHandle

from geta.core.inputs import ExampleInputs
from geta.core.modes import eval_mode
from geta.quant.prepare import QuantizableLayer, original_parameter

aten = torch.ops.aten

# Attention kernels the flop counter has no entry for; they share the formula of the fused kernels.
_EXTRA_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: flop_registry[aten._scaled_dot_product_flash_attention],
}


@dataclass
class MacCount:
    """MACs of one call of the model per example: per layer name, and outside every layer."""

    per_layer: dict[str, float] = field(default_factory=dict)
    other: float = 0.0

    @property
    def total(self) -> float:
        """All MACs of the model."""
        return sum(self.per_layer.values()) + self.other


class _CountingMode(TorchDispatchMode):
    def __init__(self, owners: dict[int, str]) -> None:
        super().__init__()
        self.owners = owners
        self.flops: dict[str | None, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        formula = flop_registry.get(packet) or _EXTRA_FORMULAS.get(packet)
        if formula is None:
            decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        self.flops[self._owner(args)] += int(formula(*args, **kwargs, out_val=out))
        return out

    def _owner(self, args) -> str | None:
        for arg in args:
            if isinstance(arg, Tensor) and arg.untyped_storage().data_ptr() in self.owners:
                return self.owners[arg.untyped_storage().data_ptr()]
        return None


def count_macs(model: nn.Module, inputs: ExampleInputs, layers: list[QuantizableLayer]) -> MacCount:
    """Run ``model`` once on ``inputs`` (eval mode) and count MACs per layer, per example."""
    owners: dict[int, str] = {}
    keep_alive: list[Tensor] = []  # hold weights so that no activation reuses their storage
    handles: list[RemovableHandle] = []

    def record(name: str, tensor: Tensor) -> None:
        owners[tensor.untyped_storage().data_ptr()] = name
        keep_alive.append(tensor)

    for layer in layers:
        for weight_name in layer.weight_names:
            parametrizations = getattr(layer.module, "parametrizations", None)
            if parametrizations is not None and weight_name in parametrizations:
                def hook(_m: nn.Module, _i: object, out: Tensor, name: str = layer.name) -> None:
                    record(name, out)

                handles.append(parametrizations[weight_name].register_forward_hook(hook))
            else:
                record(layer.name, original_parameter(layer.module, weight_name))
    mode = _CountingMode(owners)
    try:
        # Grad mode keeps attention modules off their fused inference kernels, which count nothing.
        with eval_mode(model), torch.enable_grad(), mode:
            inputs.run(model)
    finally:
        for handle in handles:
            handle.remove()
    batch = inputs.batch_size()
    count = MacCount(other=mode.flops.pop(None, 0) / 2 / batch)
    for layer in layers:
        count.per_layer[layer.name] = mode.flops.get(layer.name, 0) / 2 / batch
    return count
