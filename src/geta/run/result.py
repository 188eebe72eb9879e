"""What a run produces: the trained dense model every method starts from, and one method's result."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from geta.data.split import Inputs, Split
from geta.errors import ConfigError
from geta.metrics.report import Report
from geta.recipes.recipe import Recipe
from geta.run.costs import DenseCost, layer_rows
from geta.run.progress import Display, Point
from geta.run.settings import RunSettings, Settings
from geta.train import Distillation, accuracy

if TYPE_CHECKING:  # geta.run.latency imports onnxruntime, which only writing a run needs
    from geta.run.latency import Latency


@dataclass
class DenseModel:
    """The dense float model after the dense stage, with its data and cost; shared by every method."""

    recipe: Recipe
    settings: RunSettings
    model: nn.Module
    split: Split
    example: Inputs
    calibration: list[Inputs]
    accuracy: float
    cost: DenseCost
    steps_per_epoch: int
    curve: list[Point]
    wall_s: float

    @property
    def steps(self) -> int:
        """Steps of the dense stage."""
        return self.settings.dense_epochs * self.steps_per_epoch

    @property
    def method_steps(self) -> int:
        """Steps every method gets after the dense stage (the compression budget)."""
        return self.settings.epochs * self.steps_per_epoch

    def with_settings(self, settings: Settings | None) -> DenseModel:
        """This dense model with the method settings (epochs, sparsity, bit ranges) of ``settings``.

        The dense stage is not repeated, so ``settings`` must agree with the one it was trained with on
        ``dense_epochs``, ``seed``, ``limit_batches`` and ``lr``; raises :class:`ConfigError` otherwise."""
        if settings is None:
            return self
        resolved = settings.resolve(self.recipe)
        for name in ("dense_epochs", "seed", "limit_batches", "lr"):
            if getattr(resolved, name) != getattr(self.settings, name):
                raise ConfigError(
                    f"this dense model was trained with {name}={getattr(self.settings, name)!r}, the settings ask for "
                    f"{getattr(resolved, name)!r}; train another with train_dense or leave {name} as it was"
                )
        return replace(self, settings=resolved)

    def distillation(self) -> Distillation | None:
        """Distillation from this dense model when the settings ask for it (``distill`` > 0), else None."""
        if self.settings.distill == 0:
            return None
        return Distillation(self.model, self.settings.distill, self.settings.distill_temperature)

    def test_accuracy(self, model: nn.Module) -> float:
        """Top-1 accuracy of ``model`` on the test split."""
        return accuracy(model, self.split.test_inputs, self.split.test_y)


@dataclass
class RunResult:
    """One method's outcome. ``rel_bops`` = BOPs of ``model`` / (dense MACs x 32 x 32), as
    ``geta.metrics.report`` defines it; ``wall_s``
    includes the dense stage (``wall_s_dense``); ``curves`` cover the dense stage and the method.
    ``latency`` (the written ONNX artifact against ``dense_model`` in onnxruntime) is None until
    :func:`geta.run.artifacts.write_run` measures it."""

    recipe: str
    method: str
    settings: dict[str, Any]
    accuracy_dense: float
    accuracy: float
    rel_bops: float
    group_sparsity: float
    params: int
    params_dense: int
    size_bits: float
    size_bits_dense: float
    macs: float
    macs_dense: float
    wall_s: float
    wall_s_dense: float
    layers: list[dict[str, Any]]
    curves: list[Point]
    model: nn.Module = field(repr=False)
    report: Report = field(repr=False)
    dense_model: nn.Module = field(repr=False)
    example: Inputs = field(repr=False)
    latency: Latency | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every metric, the settings, the per-layer rows, the latency and the curves as plain
        JSON-serializable data."""
        skipped = ("model", "report", "dense_model", "example", "latency", "curves")
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skipped}
        data["latency"] = None if self.latency is None else self.latency.to_dict()
        data["curves"] = [asdict(point) for point in self.curves]
        data["stages"] = stage_spans(self.curves)
        return data


def make_result(
    dense: DenseModel, method: str, model: nn.Module, report: Report, model_accuracy: float,
    recorder: Recorder, start: float, *, group_sparsity: float, extra: dict[str, Any] | None = None,
) -> RunResult:
    """A :class:`RunResult` of ``model`` (evaluated, with its ``report``) against the dense model."""
    settings = {"recipe": dense.recipe.name, "method": method, **dense.settings.to_dict(),
                "quantize": dense.recipe.quantize, "pretrained": dense.recipe.pretrained,
                "batch_size": dense.recipe.batch_size,
                "optimizer": dense.recipe.optimizer,
                "optimizer_kwargs": dict(dense.recipe.optimizer_kwargs),
                "steps_per_epoch": dense.steps_per_epoch, "dense_steps": dense.steps,
                "method_steps": dense.method_steps,
                "threads": torch.get_num_threads(), **(extra or {})}
    wall = time.perf_counter() - start
    return RunResult(
        recipe=dense.recipe.name, method=method, settings=settings, accuracy_dense=dense.accuracy,
        accuracy=model_accuracy, rel_bops=report.bops / dense.cost.bops, group_sparsity=group_sparsity,
        params=report.params, params_dense=dense.cost.params, size_bits=report.size_bits,
        size_bits_dense=dense.cost.size_bits, macs=report.macs, macs_dense=dense.cost.macs,
        wall_s=dense.wall_s + wall, wall_s_dense=dense.wall_s, layers=layer_rows(report, dense.cost),
        curves=dense.curve + recorder.points, model=model, report=report, dense_model=dense.model,
        example=dense.example,
    )


def stage_spans(points: list[Point]) -> list[dict[str, Any]]:
    """Consecutive runs of one stage in ``points``: name, first and last step."""
    spans: list[dict[str, Any]] = []
    for point in points:
        if spans and spans[-1]["stage"] == point.stage:
            spans[-1]["end"] = point.step
        else:
            start = spans[-1]["end"] if spans else 0
            spans.append({"stage": point.stage, "start": start, "end": point.step})
    return spans


class Recorder:
    """Feeds the display every step and keeps curve points where the caller measures.

    Steps count from ``first_step`` (a method's curve continues the dense stage's)."""

    def __init__(self, display: Display, first_step: int = 0) -> None:
        self.display = display
        self.step_count = first_step
        self.points: list[Point] = []
        self._losses: list[float] = []
        self._latest: Mapping[str, float | None] = {}
        self._start = time.perf_counter()

    def record(self, stage: str, loss: float, measure: Callable[[], Mapping[str, float | None]] | None = None) -> None:
        """One step of ``stage`` with ``loss``; ``measure()`` (sparsity, bits, rel. BOPs) makes it a curve point."""
        self.step_count += 1
        self._losses.append(loss)
        if measure is not None:
            self._latest = measure()
            mean_loss = sum(self._losses) / len(self._losses)
            self.points.append(Point(self.step_count, stage, mean_loss, elapsed_s=time.perf_counter() - self._start,
                                     **self._latest))
            self._losses.clear()
        self.display.update(Point(self.step_count, stage, loss, elapsed_s=time.perf_counter() - self._start,
                                  **self._latest))


def measure_every(steps: int, points: int = 100) -> int:
    """Measure every this many steps to get about ``points`` curve points."""
    return max(1, steps // points)

