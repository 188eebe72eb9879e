"""Example inputs as the user gives them: a tensor, a tuple of positional tensors, or a dict of keyword tensors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from geta.errors import ConfigError, ModelError


@dataclass(frozen=True)
class ExampleInputs:
    """Positional and keyword arguments for one call of the model."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_user(cls, example_inputs: object) -> ExampleInputs:
        """Normalize a tensor, tuple/list or dict into args and kwargs."""
        if isinstance(example_inputs, ExampleInputs):
            return example_inputs
        if isinstance(example_inputs, Tensor):
            return cls(args=(example_inputs,))
        if isinstance(example_inputs, (tuple, list)):
            return cls(args=tuple(example_inputs))
        if isinstance(example_inputs, Mapping):
            return cls(kwargs=dict(example_inputs))
        raise ModelError(
            f"example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword inputs, "
            f"got {type(example_inputs).__name__}"
        )

    def tensors(self) -> list[Tensor]:
        """Every tensor among the inputs, positional first."""
        values = list(self.args) + list(self.kwargs.values())
        return [v for v in values if isinstance(v, Tensor)]

    def batch_size(self) -> int:
        """Size of the leading dimension of the first tensor input (1 if it has none)."""
        tensors = self.tensors()
        if not tensors or tensors[0].dim() == 0:
            return 1
        return int(tensors[0].shape[0])

    def to(self, device: torch.device) -> ExampleInputs:
        """The same inputs with every tensor moved to ``device``."""
        move = lambda v: v.to(device) if isinstance(v, Tensor) else v  # noqa: E731
        return ExampleInputs(tuple(move(a) for a in self.args), {k: move(v) for k, v in self.kwargs.items()})

    def check_finite(self, what: str) -> None:
        """Raise ConfigError naming ``what`` and the input if a floating tensor holds NaN or inf.

        A single NaN pixel would otherwise set every activation range it reaches to NaN (calibration)
        or make every step's gradient non-finite (training), without a word about its source."""
        named = [(f"positional input {i}", v) for i, v in enumerate(self.args)]
        named += [(f"input {k!r}", v) for k, v in self.kwargs.items()]
        for name, value in named:
            if isinstance(value, Tensor) and value.is_floating_point():
                bad = int((~torch.isfinite(value)).sum())
                if bad:
                    raise ConfigError(
                        f"{what}: {name} holds {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf) of "
                        f"{value.numel()}; clean the data (e.g. torch.nan_to_num) or leave the batch out"
                    )

    def run(self, model: nn.Module) -> Any:
        """Call ``model`` on these inputs."""
        return model(*self.args, **self.kwargs)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with none)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")
