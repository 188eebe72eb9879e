"""Everything geta knows about a module class, in one record per class behind one registration call.

A record says:

* ``quantize``: which weights the layer multiplies its input by, along which axis they hold output
  channels, and which inputs are activations (a :class:`LayerSpec`; quantization, ``quant/``);
* ``widths``: how the module's width attributes follow once its tensors are cut (a function of the
  compact module; subnet construction, ``pruning/``);
* ``owns_split_sizes``: whether that function also keeps the sizes its forward ``split``\\ s by in step;
* ``fixed_reshapes``: whether its forward reshapes to sizes derived from widths pruning keeps (the
  dims those reshapes split or merge are then unprunable; dependency analysis, ``graph/``);
* ``attention``: which attributes hold its head count and head width (:class:`AttentionAttributes`;
  ``pruning/heads.py``);
* ``saves``: whether ``geta.load(path)`` may rebuild it without being given a model (``export/``).

Lookups follow the class's MRO field by field, so a subclass inherits what its bases declare;
``saves`` alone is for the exact class (a file names the class it was saved from). geta registers
torch's layers in the modules that use each field; classes of optional libraries (transformers) are
registered by name and resolved once the library has been imported, which geta never does itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from torch import Tensor, nn

from geta.errors import ConfigError

WidthHandler = Callable[[nn.Module], None]


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


@dataclass(frozen=True)
class AttentionAttributes:
    """Names of the attributes of one attention class: query heads, head width, key/value heads, and
    widths equal to heads x head width (each a tuple of candidate names; the first present is used)."""

    heads: tuple[str, ...]
    head_dim: tuple[str, ...] = ()
    kv_heads: tuple[str, ...] = ()
    widths: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModuleRecord:
    """What geta knows about one module class; None means "not declared" (a base class may say)."""

    quantize: LayerSpec | None = None
    widths: WidthHandler | None = None
    owns_split_sizes: bool | None = None
    fixed_reshapes: bool | None = None
    attention: AttentionAttributes | None = None
    saves: bool | None = None


_RECORDS: dict[type, ModuleRecord] = {}
_OPTIONAL: dict[tuple[str, str], ModuleRecord] = {}


def register_module(
    cls: type[nn.Module],
    *,
    quantize: LayerSpec | None = None,
    widths: WidthHandler | None = None,
    owns_split_sizes: bool | None = None,
    fixed_reshapes: bool | None = None,
    attention: AttentionAttributes | None = None,
    saves: bool | None = None,
) -> None:
    """Declare what geta needs to know about module class ``cls``; fields left None keep what was
    declared before. ``geta.register_module(cls)`` alone lets ``geta.load(path)`` rebuild ``cls``.

    Example, a custom layer with its own weight attribute and width attribute::

        def widths(m): m.units = m.kernel.shape[1]
        geta.register_module(MyDense, quantize=geta.LayerSpec(weights=("kernel",), out_axis=1), widths=widths)
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"register_module expects an nn.Module subclass, got {cls!r}")
    if all(value is None for value in (quantize, widths, owns_split_sizes, fixed_reshapes, attention, saves)):
        saves = True
    record = ModuleRecord(quantize=quantize, widths=widths, owns_split_sizes=owns_split_sizes,
                          fixed_reshapes=fixed_reshapes, attention=attention, saves=saves)
    _check(cls, record)
    _RECORDS[cls] = _merged(_RECORDS.get(cls, ModuleRecord()), record)


def register_optional(module_name: str, class_name: str, record: ModuleRecord) -> None:
    """Register a class of an optional library by name; it takes effect once the library is imported."""
    key = (module_name, class_name)
    _OPTIONAL[key] = _merged(_OPTIONAL.get(key, ModuleRecord()), record)


def lookup(module: nn.Module | type, field: str) -> object:
    """The value of record ``field`` for ``module`` (an instance or a class): from the most specific class
    of its MRO that declares it; ``saves`` from the exact class only. None when nobody declared it."""
    _resolve_optional()
    cls = module if isinstance(module, type) else type(module)
    if field == "saves":
        record = _RECORDS.get(cls)
        return record.saves if record is not None else None
    for base in cls.__mro__:
        record = _RECORDS.get(base)
        value = getattr(record, field) if record is not None else None
        if value is not None:
            return value
    return None


def saved_classes() -> dict[str, type[nn.Module]]:
    """Every class ``geta.load(path)`` may rebuild, by the name a file gives it."""
    _resolve_optional()
    return {f"{cls.__module__}.{cls.__qualname__}": cls for cls, record in _RECORDS.items() if record.saves}


def _check(cls: type, record: ModuleRecord) -> None:
    spec = record.quantize
    if spec is not None and (not spec.weights or not all(isinstance(w, str) for w in spec.weights)):
        raise ConfigError(f"register_module({cls.__name__}): quantize.weights must be a non-empty tuple of names")
    if record.widths is not None and not callable(record.widths):
        raise ConfigError(f"register_module({cls.__name__}): widths must be a function of the compact module")
    for name in ("owns_split_sizes", "fixed_reshapes", "saves"):
        value = getattr(record, name)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"register_module({cls.__name__}): {name} must be True or False, got {value!r}")


def _resolve_optional() -> None:
    for (module_name, class_name), record in list(_OPTIONAL.items()):
        library = sys.modules.get(module_name)
        cls = getattr(library, class_name, None) if library is not None else None
        if isinstance(cls, type):
            _RECORDS[cls] = _merged(record, _RECORDS.get(cls, ModuleRecord()))
            del _OPTIONAL[(module_name, class_name)]


def _merged(record: ModuleRecord, over: ModuleRecord) -> ModuleRecord:
    """``record`` with every field that ``over`` declares taken from ``over``."""
    return replace(record, **{f.name: getattr(over, f.name) for f in fields(ModuleRecord)
                              if getattr(over, f.name) is not None})
