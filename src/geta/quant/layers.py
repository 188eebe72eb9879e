"""Which layers get quantizers: the ``quantize`` field of each class's record in ``geta.registry``.

A layer is anything that multiplies its input by a weight. Its spec says which parameters are
its weights (they share one weight quantizer), along which axis a weight holds the layer's output
channels (for per-channel quantization and for widths), and whether and where its input is an
activation to quantize. Built-in layers are registered below; users add theirs with
:func:`register_layer`. Lookup follows the class's MRO, so subclasses are covered.
"""

from __future__ import annotations

from torch import nn

from geta import registry
from geta.errors import ConfigError
from geta.registry import LayerSpec

__all__ = ["LayerSpec", "register_layer", "spec_for"]


for _cls, _spec in {
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
}.items():
    registry.register_module(_cls, quantize=_spec)
# Layers of optional libraries, registered when the library is already imported (geta never imports it).
registry.register_optional("transformers.pytorch_utils", "Conv1D",
                           registry.ModuleRecord(quantize=LayerSpec(out_axis=1)))


def register_layer(
    cls: type[nn.Module],
    *,
    weights: tuple[str, ...] = ("weight",),
    out_axis: int = 0,
    inputs: tuple[int | str, ...] = (0,),
) -> None:
    """Register a custom layer class so that geta quantizes its weights (and its input activations):
    shorthand for ``geta.register_module(cls, quantize=LayerSpec(weights, out_axis, inputs))``.

    Example: ``geta.register_layer(MyLinear, weights=("kernel",), out_axis=1)``. Registering a class
    again replaces its spec. The layer must read its weights as attributes in ``forward``.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"register_layer expects an nn.Module subclass, got {cls!r}")
    if not weights or not all(isinstance(w, str) for w in weights):
        raise ConfigError(f"register_layer({cls.__name__}): weights must be a non-empty tuple of attribute names")
    registry.register_module(cls, quantize=LayerSpec(weights=tuple(weights), out_axis=out_axis, inputs=tuple(inputs)))


def spec_for(module: nn.Module) -> LayerSpec | None:
    """The spec of the most specific registered class of ``module``, or None."""
    spec = registry.lookup(module, "quantize")
    return spec if isinstance(spec, LayerSpec) and spec.weight_names(module) else None
