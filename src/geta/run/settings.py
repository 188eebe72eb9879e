"""The settings of one run: a recipe's defaults with the user's overrides, checked before any training."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from geta.errors import ConfigError
from geta.optim.saliency import check_weights
from geta.optim.schedule import check_stage_shares
from geta.pruning.groups import check_round_to
from geta.quant.prepare import FIRST, LAST
from geta.quant.functional import check_bit_range
from geta.recipes.recipe import Recipe

_POSITIONS = {"first": FIRST, "last": LAST}


@dataclass(frozen=True)
class Settings:
    """Overrides of a recipe's defaults (None keeps the recipe's value).

    ``epochs`` is the compression budget, which every method gets after the shared dense stage of
    ``dense_epochs``; ``limit_batches`` caps the batches per epoch (quick trials and tests). ``lr`` and
    ``compress_lr`` are the base optimizer's learning rates in the dense stage and in every method;
    ``qasso`` holds further arguments of :meth:`geta.GETA.qasso` (``lr_quant``, stage lengths,
    ``saliency_weights``, ...) for GETA and quantize-only. ``skip`` names the layers every method keeps
    at full precision: ``"first"`` and ``"last"`` (the first and last layer the model runs), module
    names or globs; ``()`` quantizes every layer.
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

    def resolve(self, recipe: Recipe) -> Settings:
        """Every field filled from ``recipe`` where left None, and checked; raises :class:`ConfigError`."""
        resolved = replace(
            self,
            epochs=recipe.epochs if self.epochs is None else self.epochs,
            dense_epochs=recipe.dense_epochs if self.dense_epochs is None else self.dense_epochs,
            sparsity=recipe.sparsity if self.sparsity is None else self.sparsity,
            weight_bits=check_bit_range(self.weight_bits or recipe.weight_bits, "weight_bits"),
            act_bits=check_bit_range(self.act_bits or recipe.act_bits, "act_bits"),
            lr=recipe.lr if self.lr is None else self.lr,
            compress_lr=recipe.compress_lr if self.compress_lr is None else self.compress_lr,
            qasso=dict(self.qasso),
            skip=tuple(recipe.skip) if self.skip is None else tuple(_POSITIONS.get(s, s) for s in self.skip),
        )
        if resolved.epochs < 1:
            raise ConfigError(f"epochs={resolved.epochs}: compression needs at least 1 epoch")
        if resolved.dense_epochs < 0:
            raise ConfigError(f"dense_epochs={resolved.dense_epochs} must be >= 0")
        if not 0 <= resolved.sparsity < 1:
            raise ConfigError(f"sparsity={resolved.sparsity} must lie in [0, 1) (the fraction of groups removed)")
        if not (resolved.lr > 0 and resolved.compress_lr > 0):
            raise ConfigError(f"learning rates must be positive, got lr={resolved.lr}, compress_lr={resolved.compress_lr}")
        reserved = {"lr", "target_sparsity", "total_steps", "weight_bits", "act_bits", "callback"} & set(resolved.qasso)
        if reserved:
            raise ConfigError(f"qasso={{...}} may not set {sorted(reserved)}: use the Settings fields instead")
        if resolved.limit_batches is not None and resolved.limit_batches < 1:
            raise ConfigError(f"limit_batches={resolved.limit_batches} must be >= 1")
        check_round_to(resolved.qasso.get("round_to", 1))
        check_weights(resolved.qasso.get("saliency_weights"))
        check_stage_shares(resolved.qasso.get("stage_shares"))
        if not all(isinstance(s, str) and s for s in resolved.skip):
            raise ConfigError(f"skip={resolved.skip!r}: expected 'first', 'last', module names or globs")
        return resolved

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict (bit ranges as lists)."""
        data = asdict(self)
        data["qasso"] = dict(self.qasso)
        data["skip"] = None if self.skip is None else list(self.skip)
        for key in ("weight_bits", "act_bits"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data
