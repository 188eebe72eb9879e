"""Which layers get quantizers: a registry of layer specs keyed by class.

A layer is anything that multiplies its input by a weight. Its spec says which parameters are
its weights (they share one weight quantizer), along which axis a weight holds the layer's output
channels (for per-channel quantization and for widths), and whether and where its input is an
activation to quantize. Built-in layers are registered below; users add theirs with
:func:`register_layer`. Lookup follows the class's MRO, so subclasses are covered.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from torch import Tensor, nn

from geta.errors import ConfigError


@dataclass(frozen=True)
class LayerSpec:
    """How to quantize one kind of layer.

    weights: attribute names of the weight parameters; those absent (or None) on an instance are
        skipped, so one spec covers variants (e.g. packed or separate q/k/v projections).
    out_axis: axis of each weight that indexes the layer's output channels.
    inputs: positional indices (or keyword names) of the activations to quantize; empty when the
        input is not an activation (e.g. token indices of an embedding).
    """

    weights: tuple[str, ...] = ("weight",)
    out_axis: int = 0
    inputs: tuple[int | str, ...] = (0,)

    def weight_names(self, module: nn.Module) -> tuple[str, ...]:
        """Names of this spec's weights that exist as tensors on ``module``."""
        return tuple(name for name in self.weights if isinstance(getattr(module, name, None), Tensor))


_REGISTRY: dict[type, LayerSpec] = {
    nn.Linear: LayerSpec(),
    nn.Bilinear: LayerSpec(inputs=(0, 1)),
    nn.Conv1d: LayerSpec(),
    nn.Conv2d: LayerSpec(),
    nn.Conv3d: LayerSpec(),
    nn.ConvTranspose1d: LayerSpec(out_axis=1),
    nn.ConvTranspose2d: LayerSpec(out_axis=1),
    nn.ConvTranspose3d: LayerSpec(out_axis=1),
    nn.Embedding: LayerSpec(out_axis=1, inputs=()),
    nn.EmbeddingBag: LayerSpec(out_axis=1, inputs=()),
    nn.MultiheadAttention: LayerSpec(
        weights=("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
        inputs=(0, 1, 2, "query", "key", "value"),
    ),
}

# Layers of optional libraries, registered when the library is already imported (we never import it).
_OPTIONAL: dict[tuple[str, str], LayerSpec] = {
    ("transformers.pytorch_utils", "Conv1D"): LayerSpec(out_axis=1),
}


def register_layer(
    cls: type[nn.Module],
    *,
    weights: tuple[str, ...] = ("weight",),
    out_axis: int = 0,
    inputs: tuple[int | str, ...] = (0,),
) -> None:
    """Register a custom layer class so that geta quantizes its weights (and its input activations).

    Example: ``geta.register_layer(MyLinear, weights=("kernel",), out_axis=1)``. Registering a class
    again replaces its spec. The layer must read its weights as attributes in ``forward``.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"register_layer expects an nn.Module subclass, got {cls!r}")
    if not weights or not all(isinstance(w, str) for w in weights):
        raise ConfigError(f"register_layer({cls.__name__}): weights must be a non-empty tuple of attribute names")
    _REGISTRY[cls] = LayerSpec(weights=tuple(weights), out_axis=out_axis, inputs=tuple(inputs))


def spec_for(module: nn.Module) -> LayerSpec | None:
    """The spec of the most specific registered class of ``module``, or None."""
    _register_imported_optional_layers()
    for cls in type(module).__mro__:
        spec = _REGISTRY.get(cls)
        if spec is not None:
            return spec if spec.weight_names(module) else None
    return None


def _register_imported_optional_layers() -> None:
    for (module_name, class_name), spec in list(_OPTIONAL.items()):
        library = sys.modules.get(module_name)
        cls = getattr(library, class_name, None) if library is not None else None
        if cls is not None:
            _REGISTRY.setdefault(cls, spec)
            del _OPTIONAL[(module_name, class_name)]
