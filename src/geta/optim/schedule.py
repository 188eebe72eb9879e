"""QASSO's four stages laid out over a step budget (paper Algorithm 2), and the bit schedule.

    warm-up     K_w steps
    projection  B periods of K_b steps; period p lowers the upper bit bound by b_r
    joint       P periods of K_p steps; each period chooses and forgets its share of groups
    cool-down   every remaining step (and any step beyond the budget)

Defaults from ``total_steps`` T: K_w = 10% of T, projection 20% of T in B = min(4, bits to drop)
periods (at least 1), joint 30% of T in P = 5 periods, cool-down the remaining 40%. ``stage_shares``
changes those three shares (a model that starts trained may need a shorter warm-up and a longer
cool-down, whose steps fine-tune the final structure and bit widths).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from geta.errors import ConfigError

DEFAULT_STAGE_SHARES = (0.1, 0.2, 0.3)  # warm-up, projection, joint; cool-down gets the rest
DEFAULT_PROJECTION_PERIODS = 4
DEFAULT_PRUNING_PERIODS = 5


class Stage(str, enum.Enum):
    """The stage a step belongs to."""

    WARMUP = "warmup"
    PROJECTION = "projection"
    JOINT = "joint"
    COOLDOWN = "cooldown"


@dataclass(frozen=True)
class Position:
    """Where one step falls: its stage, the period within the stage and the step within the period."""

    stage: Stage
    period: int = 0
    step: int = 0


@dataclass(frozen=True)
class Schedule:
    """Stage lengths in steps. Build it with :meth:`from_budget`, which fills in the defaults."""

    total_steps: int
    warmup_steps: int
    projection_periods: int
    projection_steps: int
    pruning_periods: int
    pruning_steps: int

    @classmethod
    def from_budget(
        cls,
        total_steps: int,
        *,
        bits_to_drop: int = 0,
        warmup_steps: int | None = None,
        projection_periods: int | None = None,
        projection_steps: int | None = None,
        pruning_periods: int | None = None,
        pruning_steps: int | None = None,
        stage_shares: tuple[float, float, float] | None = None,
    ) -> Schedule:
        """Stage lengths for a budget of ``total_steps``, each default overridable.

        ``bits_to_drop`` (how far the initial upper bit bound lies above the target one) caps the
        default number of projection periods, so that each period lowers the bound by a whole bit.
        ``stage_shares`` (warm-up, projection, joint) are the fractions of ``total_steps`` that the
        stage lengths not given in steps default to; the cool-down gets the rest.
        """
        total = _count(total_steps, "total_steps", minimum=1)
        warmup_share, projection_share, joint_share = check_stage_shares(stage_shares)
        # default period counts never exceed the steps their stage gets, so a short budget still has
        # at least one step per period
        if projection_periods is None:
            projection_periods = max(1, min(DEFAULT_PROJECTION_PERIODS, bits_to_drop,
                                            round(projection_share * total) if projection_steps is None else total))
        projection_periods = _count(projection_periods, "projection_periods", minimum=1)
        if pruning_periods is None:
            pruning_periods = max(1, min(DEFAULT_PRUNING_PERIODS,
                                         round(joint_share * total) if pruning_steps is None else total))
        pruning_periods = _count(pruning_periods, "pruning_periods", minimum=1)
        if warmup_steps is None:
            warmup_steps = round(warmup_share * total)
        if projection_steps is None:
            projection_steps = round(projection_share * total) // projection_periods
        if pruning_steps is None:
            pruning_steps = round(joint_share * total) // pruning_periods
        schedule = cls(
            total,
            _count(warmup_steps, "warmup_steps", minimum=0),
            projection_periods,
            _count(projection_steps, "projection_steps", minimum=1, total=total),
            pruning_periods,
            _count(pruning_steps, "pruning_steps", minimum=1, total=total),
        )
        if schedule.cooldown_start > total:
            raise ConfigError(
                f"the stages need {schedule.cooldown_start} steps (warm-up {schedule.warmup_steps}, projection "
                f"{projection_periods} x {schedule.projection_steps}, "
                f"joint {pruning_periods} x {schedule.pruning_steps}) "
                f"but total_steps={total}; raise total_steps or shorten the stages"
            )
        return schedule

    @property
    def projection_start(self) -> int:
        return self.warmup_steps

    @property
    def joint_start(self) -> int:
        return self.projection_start + self.projection_periods * self.projection_steps

    @property
    def cooldown_start(self) -> int:
        return self.joint_start + self.pruning_periods * self.pruning_steps

    def position(self, step: int) -> Position:
        """Stage, period and step within the period of step number ``step`` (counted from 0)."""
        if step < self.projection_start:
            return Position(Stage.WARMUP, 0, step)
        if step < self.joint_start:
            period, k = divmod(step - self.projection_start, self.projection_steps)
            return Position(Stage.PROJECTION, period, k)
        if step < self.cooldown_start:
            period, k = divmod(step - self.joint_start, self.pruning_steps)
            return Position(Stage.JOINT, period, k)
        return Position(Stage.COOLDOWN, 0, step - self.cooldown_start)


@dataclass(frozen=True)
class BitSchedule:
    """The bit range of one kind of quantizer (weights or activations) through the stages.

    Starts from ``start`` (the quantizers' initial upper bound); projection period p projects onto
    [low, max(high, start - (p + 1) * reduction)], the last period onto the target [low, high], which
    holds from then on. Warm-up keeps [low, max(start, high)] so no step leaves the reachable range.
    """

    low: int
    high: int
    start: int
    reduction: int

    @classmethod
    def create(cls, target: tuple[int, int], start: int, periods: int, reduction: int | None = None) -> BitSchedule:
        """The schedule from initial bound ``start`` down to ``target`` in ``periods`` projection periods.

        ``reduction`` (b_r, whole bits per period) defaults to the drop spread evenly, rounded up."""
        low, high = target
        drop = max(0, start - high)
        if reduction is None:
            reduction = math.ceil(drop / periods)
        reduction = _count(reduction, "bit_reduction", minimum=0)
        return cls(low, high, max(start, high), reduction)

    def bounds(self, position: Position, last_projection_period: int) -> tuple[int, int]:
        """The (low, high) bit range that holds after a step at ``position``."""
        if position.stage is Stage.WARMUP:
            return self.low, self.start
        if position.stage is Stage.PROJECTION and position.period < last_projection_period:
            return self.low, max(self.high, self.start - (position.period + 1) * self.reduction)
        return self.low, self.high


def check_stage_shares(shares: tuple[float, float, float] | None) -> tuple[float, float, float]:
    """``shares`` (warm-up, projection, joint fractions of the budget) checked, or the defaults."""
    if shares is None:
        return DEFAULT_STAGE_SHARES
    values = tuple(shares)
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ConfigError(f"stage_shares={shares!r} must be three numbers: warm-up, projection and joint fractions")
    warmup, projection, joint = (float(v) for v in values)
    if warmup < 0 or projection <= 0 or joint <= 0 or warmup + projection + joint > 1:
        raise ConfigError(
            f"stage_shares={shares!r}: need warm-up >= 0, projection > 0, joint > 0 and a sum of at most 1 "
            "(the cool-down gets the rest)"
        )
    return warmup, projection, joint


def _count(value: object, name: str, *, minimum: int, total: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} must be an integer")
    if value < minimum:
        hint = f"; total_steps={total} is too small for these stage lengths" if total is not None else ""
        raise ConfigError(f"{name}={value} must be at least {minimum}{hint}")
    return value
