"""``QassoConfig``: every setting of a QASSO run in one frozen dataclass, checked once when it is made.

A run has exactly one target: ``target_sparsity`` (a fraction of the groups), ``target_rel_bops`` or
``target_size_bytes`` (a cost budget, met by ``optim.allocation``: which groups go and each quantizer's
bit width).

The optimizer reads nothing else (the base optimizer's own arguments, such as ``momentum``, stay with
the base optimizer). A checkpoint and a ``geta compress`` report hold the config as a plain dict
(:meth:`QassoConfig.to_dict`); a checkpoint resumes only under an equal config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from geta.errors import ConfigError
from geta.optim.saliency import check_weights
from geta.optim.schedule import Schedule, check_stage_shares
from geta.pruning.groups import check_round_to
from geta.quant.functional import check_bit_range

# Quantizer steps d are tiny at high bit widths (q_m / 32767 at 16 bits), so a step of the weights' size
# overshoots them: on digits (SGD, lr 0.05, 600 steps) lr_quant = lr ended at 92.8% test accuracy, 1e-3 at 98.3%.
DEFAULT_LR_QUANT = 1e-3
BUDGETS = ("target_rel_bops", "target_size_bytes")
TARGETS = ("target_sparsity", *BUDGETS)


@dataclass(frozen=True)
class QassoConfig:
    """The settings of one QASSO run (see :meth:`geta.GETA.qasso` for what each does).

    Exactly one target: ``target_sparsity``, the fraction of groups to remove, in [0, 1);
    ``target_rel_bops``, the compact model's relative BOPs to end at, in (0, 1]; or ``target_size_bytes``,
    the packed weights' size to end at (the report's ``size_bits / 8``), > 0. With a budget the group
    sparsity and each quantizer's bits are outcomes (``optim.allocation``). ``total_steps``: the step
    budget the stages are laid out over. ``weight_bits`` / ``act_bits``: (low, high) ranges every weight /
    activation quantizer ends in. ``lr_quant``: learning rate of the quantizers' d, q_m, t (None: the
    smaller of the weights' lr and :data:`DEFAULT_LR_QUANT`). Stage lengths (None: from the budget and
    ``stage_shares``), ``eps``, ``eta``, ``xi`` (Eq. 13, 14), ``saliency_weights`` (criterion -> weight;
    None: the defaults) and ``round_to`` (remove groups in whole chunks of it)."""

    target_sparsity: float | None = None
    total_steps: int = 0
    weight_bits: tuple[int, int] = (4, 8)
    act_bits: tuple[int, int] = (4, 8)
    lr_quant: float | None = None
    warmup_steps: int | None = None
    projection_periods: int | None = None
    projection_steps: int | None = None
    bit_reduction: int | None = None
    pruning_periods: int | None = None
    pruning_steps: int | None = None
    stage_shares: tuple[float, float, float] | None = None
    eps: float = 1e-8
    eta: float = 0.5
    xi: float = 0.5
    saliency_weights: Mapping[str, float] | None = field(default=None, hash=False)
    round_to: int = 1
    target_rel_bops: float | None = None
    target_size_bytes: float | None = None

    def __post_init__(self) -> None:
        given = [name for name in TARGETS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ConfigError(f"give exactly one of {', '.join(TARGETS)}; got "
                              + (", ".join(f"{name}={getattr(self, name)!r}" for name in given) if given else "none"))
        sparsity = self.target_sparsity
        if sparsity is not None and (not finite_number(sparsity) or not 0 <= sparsity < 1):
            raise ConfigError(f"target_sparsity={sparsity!r} must lie in [0, 1)")
        rel_bops = self.target_rel_bops
        if rel_bops is not None and (not finite_number(rel_bops) or not 0 < rel_bops <= 1):
            raise ConfigError(f"target_rel_bops={rel_bops!r} must lie in (0, 1] (the compact model's BOPs over the "
                              "dense model's MACs x 32 x 32)")
        size = self.target_size_bytes
        if size is not None and (not finite_number(size) or not size > 0):
            raise ConfigError(f"target_size_bytes={size!r} must be a finite positive number of bytes")
        if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ConfigError(f"total_steps={self.total_steps!r} must be a positive integer (the step budget)")
        if self.lr_quant is not None and not (finite_number(self.lr_quant) and self.lr_quant >= 0):
            raise ConfigError(f"lr_quant={self.lr_quant} must be a finite non-negative number")
        for name in ("warmup_steps", "projection_periods", "projection_steps", "bit_reduction", "pruning_periods",
                     "pruning_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"{name}={value!r} must be a non-negative integer (None: from the budget)")
        if not (finite_number(self.eps) and self.eps >= 0) or not 0 < self.eta < 1 or not 0 < self.xi < 1:
            raise ConfigError(f"need eps >= 0 and eta, xi in (0, 1); got eps={self.eps}, eta={self.eta}, xi={self.xi}")
        set_field = object.__setattr__  # normalized forms of what was given, so that equal configs compare equal
        for name in given:
            set_field(self, name, float(getattr(self, name)))
        set_field(self, "weight_bits", check_bit_range(self.weight_bits, "weight_bits"))
        set_field(self, "act_bits", check_bit_range(self.act_bits, "act_bits"))
        if self.stage_shares is not None:
            set_field(self, "stage_shares", check_stage_shares(self.stage_shares))
        set_field(self, "saliency_weights", dict(check_weights(self.saliency_weights)))
        set_field(self, "round_to", check_round_to(self.round_to))
        set_field(self, "eps", float(self.eps))
        set_field(self, "eta", float(self.eta))
        set_field(self, "xi", float(self.xi))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> QassoConfig:
        """A config from keyword settings; an unknown name is a ConfigError listing the known ones."""
        unknown = sorted(set(settings) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown QASSO settings {unknown}; known: {', '.join(FIELDS)}")
        if "total_steps" not in settings:
            raise ConfigError("QASSO needs total_steps")
        if all(settings.get(name) is None for name in TARGETS):
            raise ConfigError(f"QASSO needs a target: one of {', '.join(TARGETS)}")
        return cls(**settings)

    @property
    def budget(self) -> tuple[str, float] | None:
        """(name, value) of the cost budget (``target_rel_bops`` or ``target_size_bytes``); None for a
        ``target_sparsity`` run."""
        for name in BUDGETS:
            value = getattr(self, name)
            if value is not None:
                return name, float(value)
        return None

    @property
    def criterion_weights(self) -> dict[str, float]:
        """The saliency weight of every criterion, as checked (the defaults when none were given)."""
        return dict(self.saliency_weights or {})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable data (tuples as lists, saliency weights by criterion)."""
        return _plain(dataclasses.asdict(self))

    def differences(self, saved: Mapping[str, Any]) -> list[str]:
        """``name: saved -> current`` for every setting that ``saved`` (a :meth:`to_dict`) holds differently."""
        found = []
        for name, value in self.to_dict().items():
            # a checkpoint from before the budget targets existed had none
            before = _plain(saved.get(name, None if name in BUDGETS else "missing"))
            if before != value:
                found.append(f"{name}: checkpoint {before!r}, this optimizer {value!r}")
        return found


FIELDS = tuple(f.name for f in dataclasses.fields(QassoConfig))


def schedule_for(config: QassoConfig, weight_start: int, act_start: int) -> Schedule:
    """The stage lengths of ``config``'s budget when the weight and activation quantizers start at
    ``weight_start`` / ``act_start`` bits: the bit-projection stage must drop the larger excess over the
    range tops, one ``bit_reduction`` per period."""
    bits_to_drop = max(weight_start - config.weight_bits[1], act_start - config.act_bits[1], 0)
    return Schedule.from_budget(
        config.total_steps, bits_to_drop=bits_to_drop, warmup_steps=config.warmup_steps,
        projection_periods=config.projection_periods, projection_steps=config.projection_steps,
        pruning_periods=config.pruning_periods, pruning_steps=config.pruning_steps, stage_shares=config.stage_shares,
    )


def finite_number(value: object) -> bool:
    """Whether ``value`` is a real number (not a bool) that is finite."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _plain(value: object) -> Any:
    """``value`` with tuples as lists and mappings as dicts, as a JSON round trip gives them back."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
