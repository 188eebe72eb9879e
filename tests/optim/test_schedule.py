"""Stage layout from a step budget, every stage transition, and the bit schedule."""

from __future__ import annotations

import pytest

from geta.errors import ConfigError
from geta.optim.schedule import BitSchedule, Position, Schedule, Stage


def test_defaults_split_the_budget() -> None:
    s = Schedule.from_budget(1000, bits_to_drop=8)
    assert (s.warmup_steps, s.projection_periods, s.projection_steps) == (100, 4, 50)
    assert (s.pruning_periods, s.pruning_steps) == (5, 60)
    assert (s.projection_start, s.joint_start, s.cooldown_start) == (100, 300, 600)


def test_default_projection_periods_never_exceed_the_bits_to_drop() -> None:
    assert Schedule.from_budget(1000, bits_to_drop=2).projection_periods == 2
    assert Schedule.from_budget(1000, bits_to_drop=0).projection_periods == 1


def test_every_stage_transition() -> None:
    s = Schedule.from_budget(100, warmup_steps=2, projection_periods=2, projection_steps=3, pruning_periods=2,
                             pruning_steps=4)
    expected = (
        [Position(Stage.WARMUP, 0, k) for k in range(2)]
        + [Position(Stage.PROJECTION, p, k) for p in range(2) for k in range(3)]
        + [Position(Stage.JOINT, p, k) for p in range(2) for k in range(4)]
        + [Position(Stage.COOLDOWN, 0, k) for k in range(3)]
    )
    assert [s.position(i) for i in range(len(expected))] == expected
    assert s.position(10_000).stage is Stage.COOLDOWN


def test_overrides_are_checked() -> None:
    with pytest.raises(ConfigError, match="total_steps=10"):
        Schedule.from_budget(10, warmup_steps=5, projection_steps=3, pruning_steps=2)
    with pytest.raises(ConfigError, match="too small"):
        Schedule.from_budget(2)  # no step for the projection stage
    with pytest.raises(ConfigError, match="pruning_periods"):
        Schedule.from_budget(100, pruning_periods=0)
    with pytest.raises(ConfigError, match="integer"):
        Schedule.from_budget(100, warmup_steps=2.5)


def test_bit_schedule_lowers_the_upper_bound_each_period_then_holds_the_target() -> None:
    bits = BitSchedule.create((4, 8), start=16, periods=3)
    assert bits.reduction == 3  # ceil((16 - 8) / 3)
    projection = [bits.bounds(Position(Stage.PROJECTION, p), last_projection_period=2) for p in range(3)]
    assert projection == [(4, 13), (4, 10), (4, 8)]
    assert bits.bounds(Position(Stage.WARMUP), 2) == (4, 16)
    assert bits.bounds(Position(Stage.JOINT, 1, 3), 2) == bits.bounds(Position(Stage.COOLDOWN), 2) == (4, 8)


def test_bit_schedule_with_an_explicit_reduction_reaches_the_target_in_the_last_period() -> None:
    bits = BitSchedule.create((4, 8), start=16, periods=2, reduction=1)
    assert [bits.bounds(Position(Stage.PROJECTION, p), 1) for p in range(2)] == [(4, 15), (4, 8)]
    assert BitSchedule.create((4, 8), start=6, periods=2).bounds(Position(Stage.WARMUP), 1) == (4, 8)


def test_stage_shares_lay_out_the_budget_and_the_cooldown_gets_the_rest() -> None:
    s = Schedule.from_budget(1000, bits_to_drop=8, stage_shares=(0.0, 0.1, 0.2))
    assert (s.warmup_steps, s.projection_periods, s.projection_steps) == (0, 4, 25)
    assert (s.pruning_periods, s.pruning_steps) == (5, 40)
    assert (s.joint_start, s.cooldown_start) == (100, 300)


@pytest.mark.parametrize("shares", [(0.1, 0.0, 0.3), (-0.1, 0.2, 0.3), (0.5, 0.3, 0.3), (0.1, 0.2), (0.1, True, 0.3)])
def test_bad_stage_shares_are_refused(shares: tuple) -> None:
    with pytest.raises(ConfigError, match="stage_shares"):
        Schedule.from_budget(1000, stage_shares=shares)


@pytest.mark.parametrize("total", [4, 7, 12, 20])
def test_short_budgets_get_fewer_default_periods_of_at_least_one_step(total: int) -> None:
    schedule = Schedule.from_budget(total, bits_to_drop=8)
    assert schedule.projection_steps >= 1 and schedule.pruning_steps >= 1
    assert schedule.cooldown_start <= total
