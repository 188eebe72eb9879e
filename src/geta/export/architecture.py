"""A JSON description of a module tree, and the module rebuilt from it without running saved code.

Each module is a record: its type (a name looked up in an allow-list of classes, never imported from
the file), its plain attributes (numbers, strings, booleans, None, tuples, lists, sets and string-keyed
dicts of them, a few activation functions by name, and Hugging Face model configs as their JSON:
widths, kernel sizes, flags), the file keys of its parameters and buffers, its children, and its input
quantizer if it has one. A module is rebuilt as an instance of
its class made without calling ``__init__``: ``nn.Module.__init__``, then the recorded attributes,
tensors and children. That reproduces any module whose state is exactly that, which covers torch's
layers and containers and geta's reference models; other classes can be allow-listed with
``geta.register_module(cls)`` (the ``saves`` field of the class's record in ``geta.registry``).

Any module is described, allow-listed or not: a class outside the allow-list, or an attribute that is
not a plain value (listed under ``unsaved_attributes``), only means that the file alone cannot rebuild
the module. :func:`load_into` then gives the saved state to the user's own dense model instead: its
tensors are replaced by the saved ones (each at most as large as the dense one) and its widths are
updated by the pruning width handlers, as subnet construction does.

The allow-list also names, as fixed strings, geta's reference models (ResNet20 and its block, the
MiniLM classifier), the transformers BERT classes that make up geta's MiniLM recipe (and BERT-style
encoders in general) and their config class; these are imported, by those fixed names only, the first
time a file or a model needs them.

A parametrized weight (a weight quantizer) is described by its quantized value; the quantizer's
parameters are stored beside it by ``packed.py``. A tensor shared by several modules is stored once.
"""

from __future__ import annotations

import importlib
import json
import keyword
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from geta import registry
from geta.errors import SavedModelError
from geta.pruning.attention import CompactMultiheadAttention
from geta.pruning.modules import update_widths
from geta.quant.layers import spec_for
from geta.quant.prepare import (
    INPUT_QUANTIZED_BY,
    INPUT_QUANTIZER,
    OUTPUT_QUANTIZER,
    QuantizableLayer,
    attach_input_quantizers,
    attach_output_quantizers,
    original_parameter,
    parametrization_list,
)
from geta.quant.quantizer import Exponent, Quantizer

_MODULE_INTERNALS = frozenset(nn.Module().__dict__)
QUANTIZER_PARAMETERS = ("d", "q_m", "t")  # a quantizer's tensors, as saved
# a module's activation quantizers: the record's entry and the module attribute of each
ACTIVATION_QUANTIZERS = {"input_quantizer": INPUT_QUANTIZER, "output_quantizer": OUTPUT_QUANTIZER}

_FUNCTIONS: dict[str, Callable] = {
    "relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "torch.relu": torch.relu,
}


def type_name(cls: type) -> str:
    """The name a class is saved under: module path and qualified name."""
    return f"{cls.__module__}.{cls.__qualname__}"


# geta's reference models and classes of optional libraries, allowed by name and imported only when a
# model or a file uses them (the engine does not import the model zoo).
_BERT = "transformers.models.bert.modeling_bert"
_IMPORTABLE: frozenset[str] = frozenset({
    "geta.models.cifar.ResNet20", "geta.models.cifar.BasicBlock",
    "geta.models.minilm.MiniLMClassifier", "transformers.activations.GELUActivation",
    *(f"{_BERT}.{name}" for name in (
        "BertModel", "BertEmbeddings", "BertEncoder", "BertLayer", "BertAttention", "BertSelfAttention",
        "BertSelfOutput", "BertIntermediate", "BertOutput", "BertPooler",
    )),
})
_IMPORTABLE_CONFIGS: frozenset[str] = frozenset({"transformers.models.bert.configuration_bert.BertConfig"})

for _cls in (
    nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Identity,
    nn.Linear, nn.Bilinear, nn.modules.linear.NonDynamicallyQuantizableLinear,
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU,
    nn.Softmax, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Embedding, nn.MultiheadAttention, nn.TransformerEncoder, nn.TransformerEncoderLayer,
    CompactMultiheadAttention,
):
    registry.register_module(_cls, saves=True)


def allowed_module(name: str) -> type[nn.Module] | None:
    """The allow-listed module class saved under ``name``, or None; a fixed optional name is imported here."""
    saved = registry.saved_classes()
    if name not in saved and name in _IMPORTABLE:
        cls = _import_class(name)
        if isinstance(cls, type) and issubclass(cls, nn.Module) and type_name(cls) == name:
            registry.register_module(cls, saves=True)
            return cls
    return saved.get(name)


def _allowed_config(name: str) -> type[Any] | None:
    """The Hugging Face config class saved under ``name`` when it is one of the fixed allowed names."""
    if name not in _IMPORTABLE_CONFIGS:
        return None
    cls = _import_class(name)
    return cls if isinstance(cls, type) and type_name(cls) == name and hasattr(cls, "from_dict") else None


def _import_class(name: str) -> object:
    module_name, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr, None)
    except ImportError as error:
        raise SavedModelError(
            f"{name} is needed but cannot be imported ({error}); install the library it comes from"
        ) from error
    except RuntimeError as error:  # transformers wraps a broken optional dependency (e.g. torchvision) this way
        raise SavedModelError(f"{name} is needed but cannot be imported: {error.__cause__ or error}") from error


@dataclass
class SavedTensor:
    """One tensor of the description: its file key, value, and the weight quantizer that produced it."""

    key: str
    value: Tensor
    quantizer: Quantizer | None = None


@dataclass
class Description:
    """A module tree as JSON (``tree``), its tensors by file key, and its activation (input and output)
    quantizers by key prefix."""

    tree: dict
    tensors: dict[str, SavedTensor]
    activation_quantizers: dict[str, Quantizer]


def describe(model: nn.Module) -> Description:
    """Describe ``model`` (see the module docstring); raises SavedModelError for what cannot be described."""
    description = Description({}, {}, {})
    by_identity: dict[int, str] = {}
    modules: dict[int, str] = {}
    description.tree = _describe_module(model, "", description, by_identity, modules)
    return description


def check_tree(tree: object, tensors: dict[str, Tensor]) -> None:
    """Check the JSON of a module tree before anything is built from it, so that a damaged or edited file
    fails here with SavedModelError naming the module, never later or with a bare KeyError or TypeError.

    Every record has its fields with the right types and attribute values ``build`` can decode; every
    tensor key it names is in ``tensors`` (by file key) and every tensor there is named; child names are
    plain (not empty, no dot) so that paths are unique; input quantizers have their file key, and their
    d, q_m, t are finite and positive; and a shared module (``{"same_as": path}``) refers to a module
    defined before it that does not contain it, so module references never form a cycle.
    """
    check = _TreeCheck(set(), set(), set(), {})
    _check_module(tree, "", tensors, check)
    unused = sorted(set(tensors) - check.used)
    if unused:
        raise SavedModelError(f"the file holds tensors no module takes: {', '.join(unused[:5])}; the file is damaged")


def check_quantizer_parameter(name: str, value: Tensor) -> None:
    """A saved quantizer's d, q_m or t: floating point, finite and positive (``save`` stores them
    constrained, see ``functional.constrain``), so that NaN, zero or negative values are refused."""
    bad = ~(torch.isfinite(value) & (value > 0)) if value.is_floating_point() else None
    if bad is None or bool(bad.any()):
        shown = value.dtype if bad is None else value[bad].reshape(-1)[0].item()
        raise SavedModelError(
            f"quantizer parameter {name!r} holds {shown}; d, q_m and t must be finite and positive; "
            "the file is damaged")


def build(tree: dict, tensors: dict[str, Tensor]) -> nn.Module:
    """The module described by ``tree`` (passed by :func:`check_tree`) with ``tensors`` (by file key, already
    checked) as its state; raises SavedModelError when a module's width attributes disagree with its tensors."""
    built: dict[str, nn.Module] = {}
    parameters: dict[str, nn.Parameter] = {}
    module = _build_module(tree, "", tensors, built, parameters, {})
    for path, part in built.items():
        _check_widths(part, path)
    return module


def load_into(model: nn.Module, tree: dict, tensors: dict[str, Tensor]) -> nn.Module:
    """``model``, the user's dense model as built before pruning, given in place the state that ``tree``
    (passed by :func:`check_tree`) and ``tensors`` (by file key, already checked) describe; returns ``model``.

    Every saved module must be at the same path in ``model`` with the same parameter, buffer and child
    names, and every saved tensor must fit in the dense one it replaces (same rank, no dimension larger).
    Those checks raise SavedModelError, naming the module, before ``model`` is changed. Then each tensor
    is replaced by the saved one, every module's width attributes follow its tensors (the pruning width
    handlers, as in subnet construction), each module's class must be the saved one (checked after that,
    since a width handler may turn a module into its compact class) and the input quantizers are attached.
    """
    match = _Match({}, {}, [])
    _match_module(tree, model, "", tensors, match)
    placed: dict[str, Tensor] = {}
    for module, attr, key in match.slots:
        parameter = attr in module._parameters
        old = module._parameters[attr] if parameter else module._buffers[attr]
        assert old is not None, "_match_module matches only tensors present in both the file and the model"
        if key not in placed:
            value = tensors[key].to(old.device)
            placed[key] = nn.Parameter(value, requires_grad=old.requires_grad) if parameter else value
        new = placed[key]
        if parameter:
            # a key first placed as a buffer (one tensor that is also another module's parameter) is wrapped
            module._parameters[attr] = new if isinstance(new, nn.Parameter) else nn.Parameter(
                new, requires_grad=old.requires_grad)
        else:
            module._buffers[attr] = new
    for module in model.modules():
        update_widths(module)
    for path, (module, record) in match.modules.items():
        if type_name(type(module)) != record["type"]:
            raise SavedModelError(
                f"{_where(path)} is a {type_name(type(module))} in the given model but a {record['type']} in the file; "
                "pass the model class that was saved, built with the same arguments"
            )
        module.training = record["training"]
        _attach_activation_quantizers(module, path, record, tensors)
    return model


def _describe_module(
    module: nn.Module, path: str, out: Description, by_identity: dict[int, str], modules: dict[int, str]
) -> dict:
    if id(module) in modules:
        return {"same_as": modules[id(module)]}
    modules[id(module)] = path
    cls = type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)
    attributes, unsaved = {}, []
    for attr, value in module.__dict__.items():
        if attr in _MODULE_INTERNALS:
            continue
        try:
            attributes[attr] = _encode(value, f"{_where(path)}.{attr}")
        except SavedModelError:
            unsaved.append(attr)  # comes back from the user's model (load_into), not from the file
    record: dict = {"type": type_name(cls), "training": module.training, "attributes": attributes}
    if unsaved:
        record["unsaved_attributes"] = sorted(unsaved)
    record["parameters"] = {
        attr: _tensor_key(module, attr, path, out, by_identity, parameter=True) for attr in module._parameters
    }
    if parametrize.is_parametrized(module):
        for attr in cast(nn.ModuleDict, module.parametrizations):
            record["parameters"][attr] = _tensor_key(module, attr, path, out, by_identity, parameter=True)
    record["buffers"] = {
        attr: _tensor_key(module, attr, path, out, by_identity, parameter=False) for attr in module._buffers
    }
    record["non_persistent_buffers"] = sorted(module._non_persistent_buffers_set)
    record["children"] = {}
    for attr, child in module._modules.items():
        if attr in ("parametrizations", *ACTIVATION_QUANTIZERS.values()):
            continue
        child_path = _join(path, attr)
        record["children"][attr] = (
            None if child is None else _describe_module(child, child_path, out, by_identity, modules)
        )
    for entry, attr in ACTIVATION_QUANTIZERS.items():
        quantizer = getattr(module, attr, None)
        if isinstance(quantizer, Quantizer):
            if quantizer.axis is not None:
                raise SavedModelError(f"{_where(path)} has a per-channel {attr}, which cannot be saved")
            key = _join(path, attr)
            out.activation_quantizers[key] = quantizer
            record[entry] = {"key": key, "signed": quantizer.signed, "bits": int(quantizer.integer_bits())}
            if quantizer.twos_complement:  # absent in files written before two's-complement levels existed
                record[entry]["twos_complement"] = True
    return record


def _tensor_key(
    module: nn.Module, attr: str, path: str, out: Description, by_identity: dict[int, str], parameter: bool
) -> str | None:
    """The file key of ``module.<attr>`` (the key of its first holder when shared); records the tensor."""
    identity_tensor = original_parameter(module, attr) if parameter else module._buffers[attr]
    if identity_tensor is None:
        return None
    if id(identity_tensor) in by_identity:
        return by_identity[id(identity_tensor)]
    key = _join(path, attr)
    by_identity[id(identity_tensor)] = key
    quantizer = None
    if parametrize.is_parametrized(module, attr):
        chain = parametrization_list(module, attr)
        if len(chain) != 1 or not isinstance(chain[0], Quantizer):
            raise SavedModelError(
                f"{_where(path)}.{attr} has parametrizations other than one geta weight quantizer; remove them "
                "(torch.nn.utils.parametrize.remove_parametrizations) before saving"
            )
        quantizer = chain[0]
    with torch.no_grad():
        value = getattr(module, attr).detach()
    out.tensors[key] = SavedTensor(key, value, quantizer)
    return key


@dataclass
class _TreeCheck:
    """What check_tree has seen so far: the paths of the modules defined, of those whose children are being
    checked (a reference to one of them would be a cycle), the tensor keys named, and decoded configs."""

    defined: set[str]
    enclosing: set[str]
    used: set[str]
    configs: dict[str, object]


def _check_module(record: object, path: str, tensors: dict[str, Tensor], check: _TreeCheck) -> None:
    record = _expect(record, dict, f"{_where(path)} record")
    if "same_as" in record:
        target = _expect(record["same_as"], str, f"{_where(path)} 'same_as'")
        if target in check.enclosing:
            raise SavedModelError(
                f"{_where(path)} refers to {_where(target)}, which contains it: module references may not form a "
                "cycle; the file is damaged")
        if target not in check.defined:
            raise SavedModelError(f"{_where(path)} refers to module {target!r}, which is not defined before it")
        return
    fields = {"type", "training", "attributes", "parameters", "buffers", "non_persistent_buffers", "children"}
    missing = fields - set(record)
    if missing:
        raise SavedModelError(f"{_where(path)}'s record lacks {', '.join(sorted(missing))}; the file is damaged")
    _expect(record["type"], str, f"{_where(path)} type")
    _expect(record["training"], bool, f"{_where(path)}.training")
    for attr, encoded in _expect(record["attributes"], dict, f"{_where(path)} attributes").items():
        _decode(encoded, f"{_where(path)}.{attr}", check.configs)
    for attr in _expect(record.get("unsaved_attributes", []), list, f"{_where(path)} unsaved attributes"):
        _expect(attr, str, f"{_where(path)} unsaved attribute name")
    for group in ("parameters", "buffers"):
        for key in _expect(record[group], dict, f"{_where(path)} {group}").values():
            if key is not None:
                _tensor(key, tensors, path)
                check.used.add(key)
    for attr in _expect(record["non_persistent_buffers"], list, f"{_where(path)} non-persistent buffers"):
        _expect(attr, str, f"{_where(path)} non-persistent buffer name")
    for entry, attr in ACTIVATION_QUANTIZERS.items():
        if entry in record:
            _check_activation_quantizer(record[entry], attr, path, tensors, check)
    check.defined.add(path)
    check.enclosing.add(path)
    for attr, child in _expect(record["children"], dict, f"{_where(path)} children").items():
        if attr == "" or "." in attr:
            raise SavedModelError(
                f"{_where(path)} has a child named {attr!r}; child names are not empty and have no dot"
            )
        if child is not None:
            _check_module(child, _join(path, attr), tensors, check)
    check.enclosing.remove(path)


def _check_activation_quantizer(
    entry: object, attr: str, path: str, tensors: dict[str, Tensor], check: _TreeCheck
) -> None:
    what = f"{_where(path)} {attr}"
    entry = _expect(entry, dict, what)
    key = _join(path, attr)
    if entry.get("key") != key:
        raise SavedModelError(f"{what} has key {entry.get('key')!r}; expected {key!r}")
    signed = _expect(entry.get("signed"), bool, f"{what} 'signed'")
    if _expect(entry.get("twos_complement", False), bool, f"{what} 'twos_complement'") and not signed:
        raise SavedModelError(f"{what} is unsigned but has two's-complement levels; only a signed quantizer can")
    bits = _expect(entry.get("bits"), int, f"{what} 'bits'")
    if not 1 <= bits <= 32:
        raise SavedModelError(f"{what} has {bits} bits; expected 1 to 32")
    for name in QUANTIZER_PARAMETERS:
        value = _tensor(f"{key}.{name}", tensors, path)
        if value.shape != ():
            raise SavedModelError(f"{key}.{name} has shape {tuple(value.shape)}; an activation quantizer's is ()")
        check_quantizer_parameter(f"{key}.{name}", value)
        check.used.add(f"{key}.{name}")


def _check_widths(module: nn.Module, path: str) -> None:
    """The width attributes a built module has from the file must be those its tensors give (the pruning
    width handlers, as subnet construction sets them): a Linear saved as 4 -> 3 holds a 3 x 4 weight."""
    declared_class, declared = type(module), dict(module.__dict__)
    update_widths(module)
    if type(module) is not declared_class:
        raise SavedModelError(
            f"{_where(path)}: its tensors do not fit a {type_name(declared_class)}; the file is damaged"
        )
    for attr, value in module.__dict__.items():
        if attr in _MODULE_INTERNALS or (attr in declared and (value is declared[attr] or value == declared[attr])):
            continue
        stated = f"{attr}={declared[attr]!r}" if attr in declared else f"no {attr}"
        raise SavedModelError(f"{_where(path)} declares {stated}, but its tensors give {value!r}; the file is damaged")


def _build_module(
    record: dict, path: str, tensors: dict[str, Tensor], built: dict[str, nn.Module],
    parameters: dict[str, nn.Parameter], configs: dict[str, object],
) -> nn.Module:
    if "same_as" in record:
        return built[record["same_as"]]
    name = record["type"]
    cls = allowed_module(name)
    if cls is None:
        short = name.rpartition(".")[2]
        raise SavedModelError(
            f"{_where(path)} has layer type {name!r}, which is not allow-listed, so the file alone cannot rebuild "
            f"it (nothing was run). Build the model as before pruning and pass it: geta.load(path, model={short}(...)) "
            "with the original constructor arguments"
        )
    if record.get("unsaved_attributes"):
        raise SavedModelError(
            f"{_where(path)} ({name}) has attributes that are not plain values and were not saved "
            f"({', '.join(record['unsaved_attributes'])}); build the model as before pruning and pass it: "
            "geta.load(path, model=MyModel(...)) with the original constructor arguments"
        )
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    module.training = record["training"]
    for attr, encoded in record["attributes"].items():
        _check_attribute_name(cls, attr, path)
        object.__setattr__(module, attr, _decode(encoded, f"{_where(path)}.{attr}", configs))
    for attr, key in record["parameters"].items():
        _check_attribute_name(cls, attr, path)
        module.register_parameter(attr, None if key is None else _parameter(key, tensors, parameters))
    non_persistent = set(record["non_persistent_buffers"])
    for attr, key in record["buffers"].items():
        _check_attribute_name(cls, attr, path)
        module.register_buffer(attr, None if key is None else tensors[key], persistent=attr not in non_persistent)
    built[path] = module
    for attr, child in record["children"].items():
        _check_attribute_name(cls, attr, path, child=True)
        child_module = (
            None if child is None else _build_module(child, _join(path, attr), tensors, built, parameters, configs)
        )
        module.add_module(attr, child_module)
    _attach_activation_quantizers(module, path, record, tensors)
    return module


@dataclass
class _Match:
    """What load_into changes, collected before it changes anything: the user's modules and their records
    by path, the paths by module identity, and the (module, attribute, file key) of every tensor."""

    modules: dict[str, tuple[nn.Module, dict]]
    paths: dict[int, str]
    slots: list[tuple[nn.Module, str, str]]


def _match_module(record: dict, module: nn.Module, path: str, tensors: dict[str, Tensor], match: _Match) -> None:
    """Check ``module`` of the user's model against its saved ``record`` and its children against theirs."""
    if "same_as" in record:
        if match.paths.get(id(module)) != record["same_as"]:
            raise SavedModelError(
                f"{_where(path)} is module {record['same_as']!r} in the file but not in the given model")
        return
    if id(module) in match.paths:
        raise SavedModelError(
            f"{_where(path)} is module {match.paths[id(module)]!r} in the given model but not in the file")
    if parametrize.is_parametrized(module) or any(hasattr(module, attr) for attr in ACTIVATION_QUANTIZERS.values()):
        raise SavedModelError(f"{_where(path)} already has geta quantizers; pass a freshly built dense model")
    match.modules[path] = (module, record)
    match.paths[id(module)] = path
    for group, table in (("parameters", module._parameters), ("buffers", module._buffers)):
        saved = record[group]
        _same_names(path, group, saved, table)
        for attr, key in saved.items():
            dense = table[attr]
            if (key is None) != (dense is None):
                raise SavedModelError(f"{_where(path)}.{attr} is {'absent' if key is None else 'present'} in the file "
                                      "but not in the given model; pass the model built with the same arguments")
            if key is None or dense is None:
                continue
            value = tensors[key]
            if value.dim() != dense.dim() or any(s > d for s, d in zip(value.shape, dense.shape)):
                raise SavedModelError(
                    f"{_where(path)}.{attr} is {tuple(value.shape)} in the file, which does not fit the given model's "
                    f"{tuple(dense.shape)}; pass the model as built before pruning, with the same arguments"
                )
            match.slots.append((module, attr, key))
    children = record["children"]
    _same_names(path, "children", children, module._modules)
    for attr, child_record in children.items():
        child = module._modules[attr]
        if (child is None) != (child_record is None):
            raise SavedModelError(f"{_where(path)}.{attr} is {'absent' if child_record is None else 'present'} in the "
                                  "file but not in the given model; pass the model built with the same arguments")
        if child is not None:
            _match_module(child_record, child, _join(path, attr), tensors, match)


def _same_names(path: str, group: str, saved: dict, current: dict) -> None:
    if set(saved) != set(current):
        raise SavedModelError(
            f"{_where(path)} has {group} {sorted(current)} in the given model but {sorted(saved)} in the file; "
            "pass the model class that was saved, built with the same arguments"
        )


def _attach_activation_quantizers(module: nn.Module, path: str, record: dict, tensors: dict[str, Tensor]) -> None:
    """Give ``module`` the input and output quantizers its record lists, with their saved parameters."""
    quantizers = []
    if "input_quantizer" in record:
        entry = record["input_quantizer"]
        spec = spec_for(module)
        if spec is None or not spec.inputs:
            raise SavedModelError(f"{_where(path)} has an input quantizer but is not a layer geta quantizes inputs of")
        layer = QuantizableLayer(path, module, type(module).__name__, spec, spec.weight_names(module))
        attach_input_quantizers([layer], max(entry["bits"], 2), set() if entry["signed"] else {path},
                                _exponent(entry))
        quantizers.append((layer.input_quantizer, entry))
        shared = record["attributes"].get(INPUT_QUANTIZED_BY)
        if isinstance(shared, str):  # its input arrives quantized by that module's output quantizer
            setattr(module, INPUT_QUANTIZED_BY, shared)
    if "output_quantizer" in record:
        entry = record["output_quantizer"]
        unsigned = () if entry["signed"] else (module,)
        quantizers.append((attach_output_quantizers([module], max(entry["bits"], 2), _exponent(entry),
                                                    unsigned=unsigned)[0], entry))
    with torch.no_grad():
        for quantizer, entry in quantizers:
            for name in QUANTIZER_PARAMETERS:
                getattr(quantizer, name).copy_(tensors[f"{entry['key']}.{name}"])


def _exponent(entry: dict) -> Exponent:
    """The t mode that rebuilds a saved activation quantizer: ``"fixed"`` gives a signed one its saved
    two's-complement levels (``quant.prepare.activation_quantizer``); t itself is loaded either way."""
    return "fixed" if entry.get("twos_complement") else "learned"


def _parameter(key: str, tensors: dict[str, Tensor], parameters: dict[str, nn.Parameter]) -> nn.Parameter:
    if key not in parameters:
        parameters[key] = nn.Parameter(tensors[key])
    return parameters[key]


def _tensor(key: object, tensors: dict[str, Tensor], path: str) -> Tensor:
    if not isinstance(key, str) or key not in tensors:
        raise SavedModelError(f"{_where(path)} refers to tensor {key!r}, which the file does not hold")
    return tensors[key]


def _check_attribute_name(cls: type, attr: object, path: str, child: bool = False) -> None:
    """Attributes may only be plain identifiers (children any name without a dot, like "0") that the class
    does not define as methods or properties."""
    plain = isinstance(attr, str) and ((attr.isidentifier() and not keyword.iskeyword(attr))
                                       or (child and attr != "" and "." not in attr))
    if not (isinstance(attr, str) and plain) or attr.startswith("__"):
        raise SavedModelError(f"{_where(path)} has an attribute named {attr!r}, which is not a plain name")
    defined = getattr(cls, attr, None)
    if attr in _MODULE_INTERNALS or callable(defined) or isinstance(defined, property):
        raise SavedModelError(f"{_where(path)} sets {attr!r}, which {cls.__name__} defines itself; the file is damaged")


T = TypeVar("T")


def _expect(value: object, kind: type[T], what: str) -> T:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SavedModelError(f"{what} should be a {kind.__name__}, got {type(value).__name__}; the file is damaged")
    return value


def _encode(value: object, where: str) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return {type(value).__name__: [_encode(v, where) for v in value]}
    if isinstance(value, (set, frozenset)):
        items = [_encode(v, where) for v in value]
        return {"set": sorted(items, key=lambda item: json.dumps(item, sort_keys=True))}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode(v, where) for k, v in value.items()}}
    for name, function in _FUNCTIONS.items():
        if value is function:
            return {"function": name}
    name = type_name(type(value))
    if _allowed_config(name) is type(value):
        config = {"type": name, "values": cast(Any, value).to_dict()}  # a transformers config (allow-listed class)
        attn_implementation = getattr(value, "_attn_implementation", None)
        if isinstance(attn_implementation, str):
            config["attn_implementation"] = attn_implementation
        return {"config": config}
    raise SavedModelError(
        f"{where} is a {type(value).__name__}, which cannot be saved: attributes must be numbers, strings, "
        f"booleans, None, tuples, lists, sets or string-keyed dicts of them, one of the functions "
        f"{', '.join(_FUNCTIONS)}, or a "
        f"config of {', '.join(sorted(_IMPORTABLE_CONFIGS))}; tensors must be registered as parameters or buffers"
    )


def _decode(value: object, where: str, configs: dict[str, object]) -> object:
    """The attribute value ``_encode`` wrote; equal configs decode to one shared object (``configs`` memo)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (tag, inner), = value.items()
        if tag in ("tuple", "list", "set") and isinstance(inner, list):
            items = [_decode(v, where, configs) for v in inner]
            return {"tuple": tuple, "list": list, "set": set}[tag](items)
        if tag == "dict" and isinstance(inner, dict):
            return {k: _decode(v, where, configs) for k, v in inner.items()}
        if tag == "function" and inner in _FUNCTIONS:
            return _FUNCTIONS[inner]
        if tag == "config" and isinstance(inner, dict):
            return _decode_config(inner, where, configs)
    raise SavedModelError(f"{where} holds {value!r}, which is not a saved attribute value; the file is damaged")


def _decode_config(entry: dict, where: str, configs: dict[str, object]) -> object:
    key = json.dumps(entry, sort_keys=True)
    if key in configs:
        return configs[key]
    name = entry.get("type")
    cls = _allowed_config(name) if isinstance(name, str) else None
    if cls is None:
        raise SavedModelError(
            f"{where} holds a config of type {entry.get('type')!r}, which is not allow-listed; the file is damaged"
        )
    values = _expect(entry.get("values"), dict, f"{where} config values")
    try:
        config = cls.from_dict(values)
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise SavedModelError(
            f"{where} holds a config that {cls.__name__} rejects ({error}); the file is damaged"
        ) from error
    attn_implementation = entry.get("attn_implementation")
    if attn_implementation is not None:
        config._attn_implementation = _expect(attn_implementation, str, f"{where} attention implementation")
    configs[key] = config
    return config


def _join(path: str, attr: str) -> str:
    return f"{path}.{attr}" if path else attr


def _where(path: str) -> str:
    return f"module {path!r}" if path else "the root module"
