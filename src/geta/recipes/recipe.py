"""The ``Recipe``: a model, its data and the settings ``geta compress`` trains and compresses it with."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from geta.data.split import Split
from geta.errors import ConfigError
from geta.quant.prepare import FIRST, LAST
from geta.quant.quantizer import Exponent

if TYPE_CHECKING:
    from geta.api import QuantizeMode


@dataclass(frozen=True)
class Recipe:
    """Everything needed to train a model densely and compress it with QASSO.

    ``setup()`` returns the freshly built model (the harness seeds torch before calling it) and the
    data split; it raises :class:`geta.GetaError` with what to do when the data is missing. The
    dense stage trains ``dense_epochs`` with ``optimizer`` at ``lr`` (cosine decay); compression and
    every baseline then get the same ``epochs`` at ``compress_lr`` from the dense weights.
    ``pretrained``: ``setup()`` returns pretrained weights, which the dense stage fine-tunes.
    ``skip``: layers kept at full precision (``geta.FIRST`` / ``geta.LAST``, names, globs).
    ``exponent``: the quantizers' t mode (``"fixed"`` where the artifact is meant for integer runtimes,
    which need uniform levels; see :class:`geta.GETA`). ``quantize_residuals``: also quantize the conv
    outputs that go into residual adds and the residual stream once where it is produced, so that
    onnxruntime runs those convs and the adds with integer kernels too (``geta.graph.residual``).
    ``threads``: CPU threads ``geta compress`` gives torch (None: torch's default); a small model's
    tensors are too small for several threads to pay off.
    ``check_data()`` and ``build_model()`` let ``geta compress`` check a run before it loads the data
    (:func:`geta.run.harness.check_run`): ``check_data()`` raises what ``setup()`` would when the data
    cannot be found (cheaply: files, packages; what it returns is ignored); ``build_model()`` builds
    the model as ``setup()`` does but without the data, so that the ``skip`` names are checked
    against its layers. Left None, both are checked once ``setup()`` has run, still before training.
    """

    name: str
    description: str
    expected_time: str
    setup: Callable[[], tuple[nn.Module, Split]]
    quantize: QuantizeMode
    dense_epochs: int
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    compress_lr: float
    sparsity: float
    weight_bits: tuple[int, int]
    act_bits: tuple[int, int]
    optimizer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    skip: tuple[object, ...] = (FIRST, LAST)
    pretrained: bool = False
    exponent: Exponent = "learned"
    quantize_residuals: bool = False
    threads: int | None = None
    check_data: Callable[[], object] | None = None
    build_model: Callable[[], nn.Module] | None = None


RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to the registry under its name (replacing one of the same name)."""
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    """The registered recipe called ``name``; a :class:`ConfigError` listing the known ones otherwise."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)} (see `geta recipes`)")
    return RECIPES[name]
