"""The compression budget every method shares: the bits quantizers start at, and the step where every
method's learning rate starts to decay (where QASSO's cool-down starts)."""

from __future__ import annotations

from geta.errors import ConfigError
from geta.optim.config import schedule_for
from geta.run.settings import RunSettings

INITIAL_BITS = 16  # quantizers start here; QASSO's projection brings them into the bit ranges


def decay_start(settings: RunSettings, steps: int, quantize: str) -> int:
    """The step at which QASSO's cool-down starts in a budget of ``steps`` (where every method's
    learning rate starts to decay): the schedule QASSO itself makes from ``settings`` when its weight
    quantizers, and its activation quantizers if ``quantize`` has them, start at :data:`INITIAL_BITS`."""
    config = settings.qasso_config(steps)
    act_start = INITIAL_BITS if quantize == "weights+activations" else config.act_bits[1]
    return schedule_for(config, INITIAL_BITS, act_start).cooldown_start


def check_budget(settings: RunSettings, per_epoch: int, quantize: str) -> None:
    """Fail before the dense stage when the compression budget cannot hold QASSO's stages."""
    steps = settings.epochs * per_epoch
    try:
        decay_start(settings, steps, quantize)
    except ConfigError as error:
        raise ConfigError(
            f"a compression budget of {settings.epochs} epochs x {per_epoch} batches = {steps} steps is too short for "
            f"QASSO's stages ({error}); raise the epochs"
        ) from error
