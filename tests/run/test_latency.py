"""Latency of an ONNX artifact against the dense model in onnxruntime: what is measured and how it is
worded. Only the bookkeeping is checked, never which model is faster (machines are noisy)."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from torch import nn

import geta
from geta.run.latency import BatchLatency, interleaved_medians, measure_latency, shuffled_rounds


class Text(nn.Module):
    """A tiny model taking keyword inputs like the MiniLM recipe's."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head((self.embed(input_ids) * attention_mask.unsqueeze(-1)).sum(1))


def test_each_batch_size_is_timed_for_both_models(tmp_path: Path) -> None:
    dense = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    compact = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4))
    example = torch.rand(2, 1, 8, 8)
    latency = measure_latency(dense, geta.export_onnx(compact, example, tmp_path / "model.onnx"), example, 5)
    assert latency.not_measured == "" and latency.threads == 1
    assert [b.batch for b in latency.batches] == [1, 5]
    for timing in latency.batches:
        assert timing.dense_ms > 0 and timing.artifact_ms > 0 and timing.repeats >= 3
        assert timing.ratio == timing.dense_ms / timing.artifact_ms
    assert latency.to_dict()["batches"][1]["ratio"] == latency.batches[1].ratio


def test_keyword_inputs_and_a_batch_size_of_one(tmp_path: Path) -> None:
    example = {"input_ids": torch.randint(0, 10, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    model = Text()
    latency = measure_latency(model, geta.export_onnx(model, example, tmp_path / "model.onnx"), example, 1, threads=2)
    assert [b.batch for b in latency.batches] == [1] and latency.threads == 2


def test_a_file_onnxruntime_cannot_load_is_not_measured_with_the_reason(tmp_path: Path) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not an onnx model")
    latency = measure_latency(nn.Linear(3, 2), broken, torch.rand(2, 3), 4)
    assert latency.batches == () and latency.not_measured.startswith("timing failed: ")
    assert latency.to_dict()["not_measured"] == latency.not_measured


@pytest.mark.parametrize(
    ("dense_ms", "artifact_ms", "words"),
    [(2.0, 1.0, "2.0 times faster"), (1.0, 4.0, "4.0 times slower"), (1.0, 1.0, "1.0 times faster")],
)
def test_the_ratio_in_words_says_faster_or_slower(dense_ms: float, artifact_ms: float, words: str) -> None:
    assert BatchLatency(1, dense_ms, artifact_ms, 3).sentence() == f"{words} than the dense model, measured"


class _Recorder:
    """A stand-in session that logs the order of its calls."""

    def __init__(self, name: int, log: list[int]) -> None:
        self.name, self.log = name, log

    def run(self, outputs: None, feed: dict[str, object]) -> None:
        self.log.append(self.name)


def test_interleaved_rounds_give_every_session_every_predecessor() -> None:
    log: list[int] = []
    sessions = [_Recorder(i, log) for i in range(4)]
    medians, rounds = interleaved_medians(sessions, {}, min_repeats=600, max_repeats=600, budget_s=0.0)
    assert rounds == 600 and len(medians) == 4
    timed = log[4:]  # after the warm-up calls
    assert all(sorted(timed[4 * r:4 * r + 4]) == [0, 1, 2, 3] for r in range(rounds))
    follows = Counter(pairwise(timed))
    for session in range(4):
        before = [follows[(other, session)] for other in range(4) if other != session]
        # a rotation gives one predecessor about three rounds in four; each of three about a third here
        assert min(before) > 0.6 * max(before)


def test_shuffled_rounds_are_repeatable_permutations() -> None:
    rounds = list(shuffled_rounds("abcd", 50))
    assert len(rounds) == 50 and all(sorted(order) == list("abcd") for order in rounds)
    assert rounds == list(shuffled_rounds("abcd", 50)) and len({tuple(order) for order in rounds}) > 10
