"""Measured latency of a compressed ONNX artifact against the dense float model, both in onnxruntime.

The dense model is exported to ONNX as float into a temporary folder. Both sessions run on the same
inputs (the example's rows repeated to the batch size), timed interleaved (one call each per round, in
an order drawn anew each round; :func:`interleaved_medians`) so that a change in the machine's load
hits both alike: after a warm-up call each, rounds until :data:`MAX_REPEATS`, or once
:data:`MIN_REPEATS` are done until :data:`BUDGET_S` has passed (a large model gets few repeats).
Medians are reported.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from torch import nn

from geta.core.inputs import ExampleInputs
from geta.data.split import Inputs, select
from geta.errors import GetaError, error_summary
from geta.export.onnx import export_onnx, inference_session

T = TypeVar("T")

WARMUP = 1
MIN_REPEATS = 3
MAX_REPEATS = 200
BUDGET_S = 2.0  # per batch size, once MIN_REPEATS pairs are done
RUNTIME = f"onnxruntime {onnxruntime.__version__}"
# what exporting the dense model or loading and running either file in onnxruntime raises
MEASURE_ERRORS = (
    GetaError, torch.onnx.errors.OnnxExporterError, ort_errors.Fail, ort_errors.InvalidArgument,
    ort_errors.InvalidGraph, ort_errors.InvalidProtobuf, ort_errors.NoSuchFile, ort_errors.NotImplemented,
    ort_errors.RuntimeException,
)


@dataclass(frozen=True)
class BatchLatency:
    """Median milliseconds per call of the dense model and of the artifact at one batch size."""

    batch: int
    dense_ms: float
    artifact_ms: float
    repeats: int

    @property
    def ratio(self) -> float:
        """dense / artifact: above 1 the artifact is faster."""
        return self.dense_ms / self.artifact_ms

    def sentence(self) -> str:
        """The ratio in words, e.g. "2.3 times faster than the dense model, measured"."""
        if self.ratio >= 1:
            return f"{self.ratio:.1f} times faster than the dense model, measured"
        return f"{1 / self.ratio:.1f} times slower than the dense model, measured"


@dataclass(frozen=True)
class Latency:
    """The timings per batch size on ``threads`` onnxruntime threads, or none and ``not_measured`` (why)."""

    threads: int
    batches: tuple[BatchLatency, ...] = ()
    not_measured: str = ""
    runtime: str = RUNTIME

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable data, each batch with its ratio."""
        return {"runtime": self.runtime, "threads": self.threads, "not_measured": self.not_measured or None,
                "batches": [{"batch": b.batch, "dense_ms": b.dense_ms, "artifact_ms": b.artifact_ms, "ratio": b.ratio,
                             "repeats": b.repeats} for b in self.batches]}


def measure_latency(
    dense_model: nn.Module, artifact: Path, example: Inputs, batch_size: int, threads: int = 1
) -> Latency:
    """Time ``dense_model`` (exported as float ONNX) against the ONNX file ``artifact`` at batch 1 and
    ``batch_size``, on inputs like ``example``. A failure to export, load or run either model gives a
    Latency that is not measured, with the reason (the run it belongs to is kept)."""
    try:
        with tempfile.TemporaryDirectory() as folder:
            dense_path = export_onnx(dense_model, example, Path(folder) / "dense.onnx")
            sessions = (inference_session(dense_path, threads), inference_session(artifact, threads))
            batches = tuple(_time(sessions, example, batch) for batch in dict.fromkeys((1, batch_size)))
    except MEASURE_ERRORS as error:
        return Latency(threads, not_measured=f"timing failed: {error_summary(error)}")
    return Latency(threads, batches)


def _time(sessions: tuple[Any, Any], example: Inputs, batch: int) -> BatchLatency:
    """Median milliseconds per call of each session on ``batch`` rows, the two timed interleaved."""
    (dense_ms, artifact_ms), rounds = interleaved_medians(
        sessions, _feed(example, batch), min_repeats=MIN_REPEATS, max_repeats=MAX_REPEATS, budget_s=BUDGET_S)
    return BatchLatency(batch, dense_ms, artifact_ms, rounds)


def shuffled_rounds(items: Sequence[T], rounds: int, seed: int = 0) -> Iterator[list[T]]:
    """``rounds`` orders of ``items``, each a fresh shuffle (a fixed ``seed``, so runs repeat): the order of
    one interleaved timing round. Across rounds each item follows every other equally often on average, which
    an order rotated by one each round does not give three or more items (see :func:`interleaved_medians`)."""
    shuffler = random.Random(seed)
    order = list(items)
    for _ in range(rounds):
        shuffler.shuffle(order)
        yield list(order)


def interleaved_medians(
    sessions: Sequence[Any], feed: dict[str, np.ndarray], *, min_repeats: int, max_repeats: int, budget_s: float
) -> tuple[list[float], int]:
    """Median milliseconds per ``run`` of each onnxruntime session on ``feed``, and the rounds timed.

    After :data:`WARMUP` untimed calls each, every round calls each session once, in an order shuffled
    each round (a fixed seed, so runs repeat); rounds go on to ``max_repeats``, or once ``min_repeats``
    are done until ``budget_s`` seconds have passed. A call can run slower after another
    session's (VGG7's int8 graph, batch 1: about 5% slower after the float model than after an identical
    int8 graph), so an order rotated by one each round, in which each of three or more sessions has the
    same predecessor in most rounds, favours some; a shuffled order gives each session every predecessor
    equally often on average."""
    for session in sessions:
        for _ in range(WARMUP):
            session.run(None, feed)
    spent: list[list[float]] = [[] for _ in sessions]
    start, rounds = time.perf_counter(), 0
    for order in shuffled_rounds(range(len(sessions)), max_repeats):
        if rounds >= min_repeats and time.perf_counter() - start >= budget_s:
            break
        for index in order:
            before = time.perf_counter()
            sessions[index].run(None, feed)
            spent[index].append(time.perf_counter() - before)
        rounds += 1
    return [1000 * statistics.median(times) for times in spent], rounds


def _feed(example: Inputs, batch: int) -> dict[str, np.ndarray]:
    """The example's rows repeated to ``batch`` rows, by the input names ``export_onnx`` gives."""
    rows = len(next(iter(example.values())) if isinstance(example, dict) else example)
    inputs = ExampleInputs.from_user(select(example, torch.arange(batch) % rows))
    feed = {f"input_{i}": arg.numpy() for i, arg in enumerate(inputs.args)}
    return feed | {name: value.numpy() for name, value in inputs.kwargs.items()}
