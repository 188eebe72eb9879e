"""Activation ranges from a calibration pass over batches the user gives (never from the weights)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from geta.errors import ConfigError
from geta.graph.capture import eval_mode
from geta.graph.inputs import ExampleInputs
from geta.quant.quantizer import Quantizer


def calibrate(model: nn.Module, quantizers: list[Quantizer], batches: Iterable[object]) -> list[Quantizer]:
    """Run ``batches`` through ``model`` with ``quantizers`` passing inputs through unchanged while
    recording their range; then set each quantizer's q_m to that range (keeping its bit width).

    Returns the quantizers that saw no input at all (their layer was never called as a module).
    """
    for quantizer in quantizers:
        quantizer.observing, quantizer.observed_max = True, None
    seen_batch = False
    try:
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                ExampleInputs.from_user(batch).run(model)
                seen_batch = True
    finally:
        for quantizer in quantizers:
            quantizer.observing = False
    if not seen_batch:
        raise ConfigError("calibration got no batches; pass at least one batch shaped like example_inputs")
    unseen = []
    for quantizer in quantizers:
        if quantizer.observed_max is None:
            unseen.append(quantizer)
        else:
            quantizer.init_range_(quantizer.observed_max)
            quantizer.observed_max = None
    return unseen
