"""Graph capture with ``torch.export`` (non-strict, eval mode), the one tracer geta uses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from geta.errors import ModelError
from geta.graph.inputs import ExampleInputs


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore each submodule's mode afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def capture(model: nn.Module, inputs: ExampleInputs) -> torch.export.ExportedProgram:
    """Export ``model`` on ``inputs`` in eval mode; raise ModelError naming the fix if it cannot be traced."""
    with eval_mode(model):
        try:
            return torch.export.export(model, inputs.args, kwargs=inputs.kwargs, strict=False)
        except Exception as error:
            raise ModelError(
                f"torch.export could not trace the model ({type(error).__name__}: {error}). "
                "Make the forward pass traceable (no data-dependent Python control flow on tensor values; "
                "for transformers models pass use_cache=False), or pass example inputs that take a traceable path."
            ) from error


def module_path(stack_entry: tuple[str, object]) -> str:
    """The module's qualified name from an ``nn_module_stack`` entry, without the ``@N`` call suffix."""
    return stack_entry[0].split("@")[0]
