"""Activation ranges from a calibration pass over batches the user gives (never from the weights).

The pass runs in training mode, because quantization-aware training sees training-mode activations:
batch-norm layers of a freshly initialized model normalize by batch statistics there, while in eval
mode their running statistics (mean 0, variance 1 at initialization) leave activations several
times smaller, and ranges taken in eval mode clip most of what training produces. The pass changes
nothing: every buffer (running statistics) and the random number generators are restored.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from geta.core.inputs import ExampleInputs
from geta.core.modes import eval_mode
from geta.errors import ConfigError
from geta.quant.quantizer import Quantizer


def calibrate(model: nn.Module, quantizers: list[Quantizer], batches: Iterable[object]) -> list[Quantizer]:
    """Run ``batches`` through ``model`` with ``quantizers`` passing inputs through unchanged while
    recording their range; then set each quantizer's q_m to that range (keeping its bit width).

    Returns the quantizers that saw no input at all (their layer was never called as a module).
    """
    inputs = [ExampleInputs.from_user(batch) for batch in batches]
    if not inputs:
        raise ConfigError("calibration got no batches; pass at least one batch shaped like example_inputs")
    for index, batch in enumerate(inputs):
        batch.check_finite(f"calibration batch {index}")
    try:
        try:
            _observe(model, quantizers, inputs, _training_pass(model))
        except Exception as error:
            warnings.warn(
                f"calibration in training mode failed ({type(error).__name__}: {error}); activation ranges are "
                "taken in eval mode instead (batches of more than one example avoid this)", stacklevel=3,
            )
            _observe(model, quantizers, inputs, eval_mode(model))
    finally:
        for quantizer in quantizers:
            quantizer.observing = False
    excluded = sum(quantizer.observed_nonfinite for quantizer in quantizers)
    if excluded:
        warnings.warn(
            f"calibration: {excluded} non-finite activation values (NaN or inf) were produced inside the model from "
            "finite batches and left out of the activation ranges", RuntimeWarning, stacklevel=3,
        )
    unseen = []
    for quantizer in quantizers:
        if quantizer.observed_max is None:
            unseen.append(quantizer)
        else:
            quantizer.init_range_(quantizer.observed_max)
            quantizer.observed_max = None
    return unseen


def _observe(
    model: nn.Module, quantizers: list[Quantizer], inputs: list[ExampleInputs], mode: contextlib.AbstractContextManager
) -> None:
    for quantizer in quantizers:
        quantizer.observing, quantizer.observed_max, quantizer.observed_nonfinite = True, None, 0
    with mode, torch.no_grad():
        for batch in inputs:
            batch.run(model)


@contextlib.contextmanager
def _training_pass(model: nn.Module) -> Iterator[None]:
    """Training mode for the block; afterwards every module's mode, every buffer and the RNG state restored."""
    modes = {module: module.training for module in model.modules()}
    buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    devices = sorted({b.device.index for b, _ in buffers if b.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        model.train()
        try:
            yield
        finally:
            for module, training in modes.items():
                module.training = training
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
