"""PNG plots of a run: per-layer bits and kept widths, and the training curves shaded by stage."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from geta.run.result import RunResult, stage_spans

STAGE_COLORS = {
    "dense": "#dddddd", "warmup": "#fde0c5", "projection": "#c6dbef", "joint": "#c7e9c0", "cooldown": "#e5d8ef",
    "fine-tune": "#f2f0c4", "ptq": "#f4cccc",
}


def plot_layers(result: RunResult, path: Path) -> Path:
    """Bars per layer: weight and activation bits (32 = full precision), kept width against the dense width."""
    rows = result.layers
    names = [row["name"] or "<root>" for row in rows]
    positions = range(len(rows))
    figure, axes = plt.subplots(3, 1, figsize=(max(6.0, 0.35 * len(rows) + 2), 9), sharex=True)
    axes[0].bar(positions, [row["weight_bits"] for row in rows], color="#4c72b0")
    axes[0].set_ylabel("weight bits")
    axes[1].bar(positions, [row["act_bits"] for row in rows], color="#dd8452")
    axes[1].set_ylabel("activation bits")
    axes[2].bar(positions, [row["dense_width"] for row in rows], color="#cccccc", label="dense")
    axes[2].bar(positions, [row["out_width"] for row in rows], color="#55a868", label="kept")
    axes[2].set_ylabel("output width")
    axes[2].legend(loc="upper left")
    axes[2].set_xticks(list(positions), names, rotation=90, fontsize=7)
    figure.suptitle(f"{result.recipe} / {result.method}: per-layer bits and widths (32 bits = not quantized)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_curves(result: RunResult, path: Path) -> Path:
    """Loss, group sparsity, mean bits and rel. BOPs against the step, each stage shaded."""
    points = result.curves
    steps = [p.step for p in points]
    figure, axes = plt.subplots(4, 1, figsize=(8, 10), sharex=True)
    series: list[tuple[str, list[tuple[str, list[float | None]]]]] = [
        ("loss", [("training loss", [p.loss for p in points])]),
        ("group sparsity", [("group sparsity", [p.group_sparsity for p in points])]),
        ("mean bits", [("weights", [p.weight_bits for p in points]), ("activations", [p.act_bits for p in points])]),
        ("rel. BOPs (%)", [("rel. BOPs", [None if p.rel_bops is None else 100 * p.rel_bops for p in points])]),
    ]
    for axis, (label, lines) in zip(axes, series):
        for span in stage_spans(points):
            axis.axvspan(span["start"], span["end"], color=STAGE_COLORS.get(span["stage"], "#eeeeee"), lw=0)
        plotted = 0
        for name, values in lines:
            known = [(s, v) for s, v in zip(steps, values) if v is not None]
            if known:
                axis.plot([s for s, _ in known], [v for _, v in known], label=name,
                          marker="o" if len(known) == 1 else None)
                plotted += 1
        axis.set_ylabel(label)
        if plotted > 1:
            axis.legend(loc="upper right")
    axes[-1].set_yscale("log")
    axes[-1].set_xlabel("step")
    stages = dict.fromkeys(span["stage"] for span in stage_spans(points))
    handles = [Patch(color=STAGE_COLORS.get(stage, "#eeeeee"), label=stage) for stage in stages]
    axes[0].legend(handles=handles, loc="upper right", fontsize=8, ncol=len(handles))
    figure.suptitle(f"{result.recipe} / {result.method}: training curves by stage")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
