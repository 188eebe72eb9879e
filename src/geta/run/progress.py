"""Progress of a run: a live display (rich) on a terminal, plain lines elsewhere, or nothing."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Mode = Literal["live", "plain", "quiet"]


@dataclass(frozen=True)
class Point:
    """One point of the training curves: the state after ``step`` steps of the run (all stages counted)."""

    step: int
    stage: str
    loss: float
    group_sparsity: float | None = None
    weight_bits: float | None = None
    act_bits: float | None = None
    rel_bops: float | None = None
    elapsed_s: float = 0.0


class Display:
    """Shows stage, step, loss, sparsity, mean bits, rel. BOPs (of the dense model) and time left.

    ``mode="live"`` redraws one status line (use it on a terminal), ``"plain"`` prints a line at each
    stage start and every 10% of the run, ``"quiet"`` prints nothing. ``total_steps`` counts every
    step of the run, so that the time left covers the stages still to come.
    """

    def __init__(self, total_steps: int = 0, mode: Mode = "quiet", console: Console | None = None) -> None:
        self.mode = mode
        self.total_steps = max(total_steps, 1)
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.done = 0
        self._stage = ""
        self._last_line = -1
        self._start = time.perf_counter()
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> Display:
        self._start = time.perf_counter()
        if self.mode == "live":
            self._progress = Progress(
                TextColumn("[bold]{task.fields[stage]:<11}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("run", total=self.total_steps, stage="setup", info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def set_total(self, total_steps: int) -> None:
        """The number of steps the whole run will take."""
        self.total_steps = max(total_steps, 1)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=self.total_steps)

    def set_stage(self, stage: str) -> None:
        """Show ``stage`` (e.g. "setup" while a model is prepared) until the next step."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, stage=stage)

    def message(self, text: str) -> None:
        """A line of text above the live display (or on its own line)."""
        if self.mode != "quiet":
            self.console.print(text, highlight=False)

    def update(self, point: Point) -> None:
        """One more step of the run was taken; ``point`` is the state after it."""
        self.done += 1
        info = _describe(point)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=self.done, stage=point.stage, info=info)
        elif self.mode == "plain":
            tenth = 10 * self.done // self.total_steps
            if point.stage != self._stage or tenth != self._last_line:
                self._last_line = tenth
                left = f", left ~{self.time_left():.0f} s" if self.done >= self.total_steps / 20 else ""
                self.message(f"{point.stage:<11} step {self.done}/{self.total_steps}  {info}  "
                             f"elapsed {self.elapsed():.0f} s{left}")
        self._stage = point.stage

    def elapsed(self) -> float:
        """Seconds since the display started."""
        return time.perf_counter() - self._start

    def time_left(self) -> float:
        """Seconds left at the average pace so far."""
        return self.elapsed() / max(self.done, 1) * (self.total_steps - self.done)


def _describe(point: Point) -> str:
    parts = [f"loss {point.loss:.3f}"]
    if point.group_sparsity is not None:
        parts.append(f"sparsity {100 * point.group_sparsity:.1f}%")
    if point.weight_bits is not None:
        parts.append(f"w bits {point.weight_bits:.2f}")
    if point.act_bits is not None:
        parts.append(f"a bits {point.act_bits:.2f}")
    if point.rel_bops is not None:
        parts.append(f"rel. BOPs {100 * point.rel_bops:.2f}%")
    return "  ".join(parts)
