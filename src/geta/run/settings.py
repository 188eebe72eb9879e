"""The settings of one run: a recipe's defaults with the user's overrides, checked before any training."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from geta.errors import ConfigError
from geta.optim.config import BUDGETS, TARGETS, QassoConfig
from geta.quant.functional import check_bit_range
from geta.quant.prepare import FIRST, LAST
from geta.recipes.recipe import Recipe

_POSITIONS = {"first": FIRST, "last": LAST}


@dataclass(frozen=True)
class Settings:
    """Overrides of a recipe's defaults (None keeps the recipe's value).

    ``epochs`` is the compression budget, which every method gets after the shared dense stage of
    ``dense_epochs``; ``limit_batches`` caps the batches per epoch (quick trials and tests). ``lr`` and
    ``compress_lr`` are the base optimizer's learning rates in the dense stage and in every method;
    ``qasso`` holds further :class:`geta.QassoConfig` fields (``lr_quant``, stage lengths,
    ``saliency_weights``, ``round_to``, ...) for GETA and quantize-only; :meth:`RunSettings.qasso_config` makes the
    config the harness passes to QASSO. ``skip`` names the layers every method keeps
    at full precision: ``"first"`` and ``"last"`` (the first and last layer the model runs), module
    names or globs; ``()`` quantizes every layer. ``target_rel_bops`` or ``target_size_bytes`` make
    GETA's target a cost budget instead of ``sparsity`` (which the baselines still use; see
    :class:`geta.QassoConfig`); at most one of the two, and not beside an explicit ``sparsity``.
    ``distill`` in (0, 1] trains the compressing methods (GETA, prune-then-ptq's fine-tuning,
    quantize-only) with knowledge distillation from the dense model they start from, at that weight
    and ``distill_temperature`` (:class:`geta.train.Distillation`); the dense baseline always trains
    on the labels alone, so that it stays the plain reference.
    """

    epochs: int | None = None
    dense_epochs: int | None = None
    sparsity: float | None = None
    weight_bits: tuple[int, int] | None = None
    act_bits: tuple[int, int] | None = None
    seed: int = 0
    limit_batches: int | None = None
    lr: float | None = None
    compress_lr: float | None = None
    qasso: Mapping[str, Any] = field(default_factory=dict)
    skip: tuple[str, ...] | None = None
    target_rel_bops: float | None = None
    target_size_bytes: float | None = None
    distill: float | None = None
    distill_temperature: float = 4.0

    def resolve(self, recipe: Recipe) -> RunSettings:
        """Every field filled from ``recipe`` where left None, and checked; raises :class:`ConfigError`."""
        skip = recipe.skip if self.skip is None else tuple(_POSITIONS.get(s, s) for s in self.skip)
        budgets = [name for name in BUDGETS if getattr(self, name) is not None]
        if len(budgets) > 1 or (budgets and self.sparsity is not None):
            given = budgets + (["sparsity"] if self.sparsity is not None else [])
            raise ConfigError(
                f"give one target, not {' and '.join(given)}: a budget makes the group sparsity an outcome")
        if not all(isinstance(s, str) and s for s in skip):
            raise ConfigError(f"skip={skip!r}: expected 'first', 'last', module names or globs")
        resolved = RunSettings(
            epochs=recipe.epochs if self.epochs is None else self.epochs,
            dense_epochs=recipe.dense_epochs if self.dense_epochs is None else self.dense_epochs,
            sparsity=recipe.sparsity if self.sparsity is None else self.sparsity,
            weight_bits=check_bit_range(self.weight_bits or recipe.weight_bits, "weight_bits"),
            act_bits=check_bit_range(self.act_bits or recipe.act_bits, "act_bits"),
            seed=self.seed,
            limit_batches=self.limit_batches,
            lr=recipe.lr if self.lr is None else self.lr,
            compress_lr=recipe.compress_lr if self.compress_lr is None else self.compress_lr,
            qasso=dict(self.qasso),
            skip=tuple(str(s) for s in skip),
            target_rel_bops=self.target_rel_bops,
            target_size_bytes=self.target_size_bytes,
            distill=0.0 if self.distill is None else self.distill,
            distill_temperature=self.distill_temperature,
        )
        if not 0 <= resolved.distill <= 1:
            raise ConfigError(f"distill={resolved.distill}: give a weight in (0, 1] for the distillation loss, "
                              "or leave it unset to train on the labels alone")
        if not resolved.distill_temperature > 0:
            raise ConfigError(f"distill_temperature={resolved.distill_temperature} must be > 0 (4 is usual)")
        if resolved.epochs < 1:
            raise ConfigError(f"epochs={resolved.epochs}: compression needs at least 1 epoch")
        if resolved.dense_epochs < 0:
            raise ConfigError(f"dense_epochs={resolved.dense_epochs} must be >= 0")
        if not 0 <= resolved.sparsity < 1:
            raise ConfigError(f"sparsity={resolved.sparsity} must lie in [0, 1) (the fraction of groups removed)")
        if not (resolved.lr > 0 and resolved.compress_lr > 0):
            raise ConfigError(
                f"learning rates must be positive, got lr={resolved.lr}, compress_lr={resolved.compress_lr}")
        reserved = {*TARGETS, "total_steps", "weight_bits", "act_bits"} & set(resolved.qasso)
        if reserved:
            raise ConfigError(f"qasso={{...}} may not set {sorted(reserved)}: use the Settings fields instead")
        if resolved.limit_batches is not None and resolved.limit_batches < 1:
            raise ConfigError(f"limit_batches={resolved.limit_batches} must be >= 1")
        resolved.qasso_config(1)  # every QASSO setting checked now, before any training
        return resolved

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict (bit ranges as lists)."""
        return _plain(self)


@dataclass(frozen=True)
class RunSettings:
    """:class:`Settings` resolved against a recipe (:meth:`Settings.resolve`): every field set and checked."""

    epochs: int
    dense_epochs: int
    sparsity: float
    weight_bits: tuple[int, int]
    act_bits: tuple[int, int]
    seed: int
    limit_batches: int | None
    lr: float
    compress_lr: float
    qasso: Mapping[str, Any]
    skip: tuple[str, ...]
    target_rel_bops: float | None = None
    target_size_bytes: float | None = None
    distill: float = 0.0
    distill_temperature: float = 4.0

    def qasso_config(self, total_steps: int, sparsity: float | None = None) -> QassoConfig:
        """The QASSO config of a method over ``total_steps``, with these bit ranges and ``qasso`` settings;
        its target: ``sparsity`` when given, else the budget when one is set, else ``self.sparsity``."""
        budget = {name: value for name in BUDGETS if (value := getattr(self, name)) is not None}
        target = budget if sparsity is None and budget else {
            "target_sparsity": self.sparsity if sparsity is None else sparsity}
        return QassoConfig.from_settings({
            **target, "total_steps": total_steps, "weight_bits": self.weight_bits, "act_bits": self.act_bits,
            **self.qasso,
        })

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict (bit ranges as lists)."""
        return _plain(self)


def _plain(settings: Settings | RunSettings) -> dict[str, Any]:
    data = asdict(settings)
    data["qasso"] = dict(settings.qasso)
    data["skip"] = None if settings.skip is None else list(settings.skip)
    for key in ("weight_bits", "act_bits"):
        if data[key] is not None:
            data[key] = list(data[key])
    return data
