"""Make a model quantization-aware: weight quantizers attached to every registered layer's weights
(as ``torch.nn.utils.parametrize`` parametrizations) and, optionally, input quantizers run by a
forward pre-hook and output quantizers (on the tensors that go into residual adds, see
``graph/residual.py``) run by a forward hook. A layer whose only input is such a quantized output takes
that output quantizer as its input quantizer (:func:`share_input_quantizer`): every reader of the tensor
reads it quantized once. Layers are found by class (see ``layers.py``) and keyed by module identity.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from torch import Tensor, nn
from torch.nn.utils import parametrize

from geta.errors import ConfigError
from geta.quant.layers import LayerSpec, spec_for
from geta.quant.quantizer import Exponent, Quantizer

INPUT_QUANTIZER = "geta_input_quantizer"
OUTPUT_QUANTIZER = "geta_output_quantizer"
# a layer attribute: the module whose output quantizer is the layer's input quantizer (its input arrives
# quantized, so its pre-hook passes it through); a plain string, saved with the module's attributes
INPUT_QUANTIZED_BY = "geta_input_quantized_by"
FIRST = "<first>"
LAST = "<last>"


@dataclass
class QuantizableLayer:
    """One layer that multiplies by a weight, and the quantizers geta gave it (None where it gave none)."""

    name: str
    module: nn.Module
    kind: str
    spec: LayerSpec
    weight_names: tuple[str, ...]
    weight_quantizer: Quantizer | None = None
    input_quantizer: Quantizer | None = None
    full_precision_reason: str = ""

    def weights(self) -> list[Tensor]:
        """The layer's weight parameters (the originals, not their quantized values)."""
        return [original_parameter(self.module, name) for name in self.weight_names]

    def out_width(self) -> int:
        """Number of output channels / features of the layer."""
        return int(self.weights()[0].shape[self.spec.out_axis])


def find_layers(model: nn.Module) -> list[QuantizableLayer]:
    """Every registered layer of ``model`` in module order (a shared module once)."""
    layers = []
    for name, module in model.named_modules():
        spec = spec_for(module)
        if spec is not None:
            layers.append(QuantizableLayer(name, module, _kind(module), spec, spec.weight_names(module)))
    return layers


def resolve_skip(
    skip: object, layers: list[QuantizableLayer], names: dict[nn.Module, str], order: list[QuantizableLayer]
) -> set[str]:
    """Names of the layers that ``skip`` keeps at full precision.

    Entries are modules, glob patterns over module names (a match covers the module's
    descendants), or :data:`FIRST` / :data:`LAST` for the first / last layer the model runs.
    Every entry must cover at least one layer.
    """
    entries = [skip] if isinstance(skip, (str, nn.Module)) else list(cast("Iterable[object]", skip or ()))
    skipped: set[str] = set()
    for entry in entries:
        if entry in (FIRST, LAST):
            if not order:
                raise ConfigError(f"skip={entry!r}: the model ran no quantizable layer on the example inputs")
            covered = {order[0 if entry == FIRST else -1].name}
        elif isinstance(entry, nn.Module):
            if entry not in names:
                raise ConfigError(
                    f"skip entry {type(entry).__name__} is not a submodule of the model; pass one of its modules"
                )
            covered = _covered(layers, lambda name, prefix=names[entry]: _within(name, prefix))
        elif isinstance(entry, str):
            covered = _covered(layers, lambda name, pattern=entry: _matches(name, pattern))
        else:
            raise ConfigError(f"skip entries must be modules or name patterns, got {type(entry).__name__}")
        if not covered:
            available = ", ".join(layer.name or "<root>" for layer in layers[:8])
            raise ConfigError(
                f"skip entry {entry!r} matches no quantizable layer; layers are named e.g. {available} "
                f"(globs like 'features.*' work; geta.FIRST / geta.LAST pick the first / last layer run)"
            )
        skipped |= covered
    return skipped


def attach_weight_quantizers(
    layers: Iterable[QuantizableLayer], bits: int, per_channel: bool, exponent: Exponent = "learned"
) -> None:
    """Give each layer one weight quantizer shared by its weights; a parameter tied between layers
    keeps one quantizer. Ranges start at max |W|; ``exponent`` is the quantizers' t mode."""
    by_parameter: dict[int, Quantizer] = {}
    for layer in layers:
        weights = layer.weights()
        quantizer = next((by_parameter[id(w)] for w in weights if id(w) in by_parameter), None)
        if quantizer is None:
            axis = layer.spec.out_axis if per_channel else None
            channels = weights[0].shape[axis] if axis is not None else 1
            quantizer = Quantizer(bits, axis=axis, channels=channels, exponent=exponent).to(weights[0].device)
            quantizer.init_from_weights_(weights)
        for name, weight in zip(layer.weight_names, weights):
            by_parameter[id(weight)] = quantizer
            if not parametrize.is_parametrized(layer.module, name):
                parametrize.register_parametrization(layer.module, name, quantizer, unsafe=True)
        layer.weight_quantizer = quantizer
        layer.module.register_state_dict_post_hook(_rename_saved_keys)
        layer.module.register_load_state_dict_pre_hook(_rename_loaded_keys)


def activation_quantizer(bits: int, signed: bool, exponent: Exponent) -> Quantizer:
    """A per-tensor activation quantizer. With ``exponent="fixed"`` (uniform levels, meant for integer
    runtimes) a signed one has two's-complement levels (-2^(b-1)..2^(b-1) - 1), so that the exported
    QuantizeLinear's own saturation is its clip and no Clip sits between it and the next integer kernel."""
    return Quantizer(bits, signed=signed, exponent=exponent, twos_complement=signed and exponent == "fixed")


def attach_input_quantizers(
    layers: Iterable[QuantizableLayer], bits: int, unsigned: set[str], exponent: Exponent = "learned"
) -> None:
    """Give each layer that reads activations an input quantizer run by a forward pre-hook; ``exponent``
    is the quantizers' t mode (with ``"fixed"`` a signed quantizer has two's-complement levels, see
    :func:`activation_quantizer`)."""
    for layer in layers:
        if not layer.spec.inputs:
            continue
        device = layer.weights()[0].device
        quantizer = activation_quantizer(bits, layer.name not in unsigned, exponent).to(device)
        layer.module.add_module(INPUT_QUANTIZER, quantizer)
        layer.module.register_forward_pre_hook(
            functools.partial(_quantize_inputs, positions=layer.spec.inputs), with_kwargs=True
        )
        layer.input_quantizer = quantizer


def attach_output_quantizers(
    modules: Iterable[nn.Module], bits: int, exponent: Exponent = "learned", unsigned: Iterable[nn.Module] = ()
) -> list[Quantizer]:
    """Give each of ``modules`` a quantizer on its output, run by a forward hook; returns them in order. The
    quantizers are signed, except those of the modules in ``unsigned`` (outputs known to be non-negative), and
    made by :func:`activation_quantizer`.

    A module's output must be one floating tensor (a convolution's, a batch norm's, a block's); any other
    output passes through unchanged."""
    quantizers = []
    nonnegative = {id(module) for module in unsigned}
    for module in modules:
        device = next(iter(module.parameters()), next(iter(module.buffers()), None))
        quantizer = activation_quantizer(bits, id(module) not in nonnegative, exponent)
        if device is not None:
            quantizer = quantizer.to(device.device)
        module.add_module(OUTPUT_QUANTIZER, quantizer)
        module.register_forward_hook(_quantize_output)
        quantizers.append(quantizer)
    return quantizers


def share_input_quantizer(layer: QuantizableLayer, quantizer: Quantizer, producer: str) -> None:
    """Make ``quantizer``, the output quantizer of module ``producer`` whose output is ``layer``'s only input,
    the layer's input quantizer: the same module (so bits, calibration, QASSO's projection and the report see
    one quantizer), which the layer's pre-hook no longer applies, since its input arrives quantized by it."""
    layer.module.add_module(INPUT_QUANTIZER, quantizer)
    setattr(layer.module, INPUT_QUANTIZED_BY, producer)
    layer.input_quantizer = quantizer


def activation_quantizers(model: nn.Module) -> list[Quantizer]:
    """Every input and output quantizer of ``model`` (geta's activation quantizers), in module order, each
    once (a shared input quantizer is its producer's output quantizer)."""
    found = (getattr(module, name, None) for module in model.modules() for name in (INPUT_QUANTIZER, OUTPUT_QUANTIZER))
    return list({id(q): q for q in found if isinstance(q, Quantizer)}.values())


def remove_input_quantizer(layer: QuantizableLayer, reason: str) -> None:
    """Take a layer's input quantizer out again (its pre-hook then passes inputs through)."""
    delattr(layer.module, INPUT_QUANTIZER)
    layer.module.__dict__.pop(INPUT_QUANTIZED_BY, None)
    layer.input_quantizer = None
    layer.full_precision_reason = reason


def remove_output_quantizer(module: nn.Module) -> None:
    """Take a module's output quantizer out again (its hook then passes the output through)."""
    delattr(module, OUTPUT_QUANTIZER)


def original_parameter(module: nn.Module, name: str) -> Tensor:
    """The trainable tensor behind ``module.<name>``, whether or not it is parametrized. A parametrization
    with several originals (``weight_norm``'s g and v) has no single one: the computed tensor is returned."""
    if parametrize.is_parametrized(module, name):
        original = getattr(parametrization_list(module, name), "original", None)
        if isinstance(original, Tensor):
            return original
    return getattr(module, name)


def parametrization_list(module: nn.Module, name: str) -> parametrize.ParametrizationList:
    """``module.parametrizations[name]``, the parametrizations of ``module.<name>`` (which must be parametrized)."""
    # torch types a module attribute as Tensor | Module: this one is the ModuleDict register_parametrization adds
    return cast(parametrize.ParametrizationList, cast(nn.ModuleDict, module.parametrizations)[name])


def foreign_parametrization(layer: QuantizableLayer) -> bool:
    """Whether some weight of ``layer`` is already parametrized by someone other than geta (``weight_norm``,
    ``spectral_norm``): geta's quantizer is not stacked on it."""
    return any(parametrize.is_parametrized(layer.module, name) and not any(
        isinstance(p, Quantizer) for p in parametrization_list(layer.module, name)) for name in layer.weight_names)


def _quantize_inputs(module: nn.Module, args: tuple, kwargs: dict, positions: tuple[int | str, ...]):
    quantizer = getattr(module, INPUT_QUANTIZER, None)
    if quantizer is None or getattr(module, INPUT_QUANTIZED_BY, None) is not None:
        return None  # no input quantizer, or one that ran where the input was computed
    done: dict[int, Tensor] = {}

    def apply(value: object) -> object:
        if not (isinstance(value, Tensor) and value.is_floating_point()):
            return value
        if id(value) not in done:
            done[id(value)] = quantizer(value)
        return done[id(value)]

    new_args = tuple(apply(a) if i in positions else a for i, a in enumerate(args))
    new_kwargs = {k: apply(v) if k in positions else v for k, v in kwargs.items()}
    return new_args, new_kwargs


def _quantize_output(module: nn.Module, args: tuple, output: object) -> object:
    quantizer = getattr(module, OUTPUT_QUANTIZER, None)
    if quantizer is None or not (isinstance(output, Tensor) and output.is_floating_point()):
        return None
    return quantizer(output)


def _kind(module: nn.Module) -> str:
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls.__name__


def _within(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _matches(name: str, pattern: str) -> bool:
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1)) or (
        name == "" and pattern in ("", "*")
    )


def _covered(layers: list[QuantizableLayer], predicate) -> set[str]:
    return {layer.name for layer in layers if predicate(layer.name)}


# State-dict keys: parametrize stores ``conv.weight`` as ``conv.parametrizations.weight.original``
# and its quantizer as ``conv.parametrizations.weight.0.*``. These hooks keep the original key
# ``conv.weight`` and name the quantizer ``conv.weight_quantizer.*``, in both directions.
_PARAMETRIZED = "parametrizations."


_ORIGINAL = re.compile(r"(^|\.)parametrizations\.(\w+)\.original$")
_QUANTIZER = re.compile(r"(^|\.)parametrizations\.(\w+)\.0\.")


def public_name(name: str) -> str:
    """The state-dict key of a parameter that parametrize names internally:
    ``conv.parametrizations.weight.original`` is ``conv.weight`` and
    ``conv.parametrizations.weight.0.d`` is ``conv.weight_quantizer.d``; other names are unchanged."""
    return _QUANTIZER.sub(r"\1\2_quantizer.", _ORIGINAL.sub(r"\1\2", name), count=1)


def _rename_saved_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + _PARAMETRIZED)]:
        state_dict[prefix + public_name(key[len(prefix):])] = state_dict.pop(key)


def _rename_loaded_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    for name in list(getattr(module, "parametrizations", {}).keys()):
        if prefix + name in state_dict:
            state_dict[f"{prefix}{_PARAMETRIZED}{name}.original"] = state_dict.pop(prefix + name)
        quantizer_prefix = f"{prefix}{name}_quantizer."
        for key in [k for k in state_dict if k.startswith(quantizer_prefix)]:
            state_dict[f"{prefix}{_PARAMETRIZED}{name}.0.{key[len(quantizer_prefix):]}"] = state_dict.pop(key)
