"""PNG plots of a run: per-layer bits and kept widths, and the training curves shaded by stage."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from geta.metrics.report import FULL_PRECISION_BITS
from geta.run.result import RunResult, stage_spans

STAGE_COLORS = {
    "dense": "#dddddd", "warmup": "#fde0c5", "projection": "#c6dbef", "joint": "#c7e9c0", "cooldown": "#e5d8ef",
    "fine-tune": "#f2f0c4", "ptq": "#f4cccc",
}


def plot_layers(result: RunResult, path: Path) -> Path:
    """Bars per layer: weight and activation bits, kept width against the dense width.

    The bit axes show the quantized widths to scale (a budget run's allocation); a layer at full
    precision is a grey bar marked "fp" at the top of the axis instead of a bar of 32."""
    rows = result.layers
    names = [row["name"] or "<root>" for row in rows]
    positions = list(range(len(rows)))
    figure, axes = plt.subplots(3, 1, figsize=(max(6.0, 0.35 * len(rows) + 2), 9), sharex=True)
    for axis, key, color, label in ((axes[0], "weight_bits", "#4c72b0", "weight bits"),
                                    (axes[1], "act_bits", "#dd8452", "activation bits")):
        _bit_bars(axis, [float(row[key]) for row in rows], color)
        axis.set_ylabel(label)
    axes[2].bar(positions, [row["dense_width"] for row in rows], color="#cccccc", label="dense")
    axes[2].bar(positions, [row["out_width"] for row in rows], color="#55a868", label="kept")
    axes[2].set_ylabel("output width")
    axes[2].legend(loc="upper left")
    axes[2].set_xticks(positions, names, rotation=90, fontsize=7)
    figure.suptitle(f"{result.recipe} / {result.method}: per-layer bits and widths{_target(result.settings)}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _bit_bars(axis: Axes, bits: list[float], color: str) -> None:
    """Quantized widths as bars to scale; full-precision layers as grey "fp" bars at the axis top."""
    quantized = [b for b in bits if b < FULL_PRECISION_BITS]
    top = max(quantized, default=8.0) + 1
    for position, value in enumerate(bits):
        if value < FULL_PRECISION_BITS:
            axis.bar(position, value, color=color)
        else:
            axis.bar(position, top, color="#e0e0e0", hatch="//", edgecolor="#aaaaaa")
            axis.text(position, top, "fp", ha="center", va="bottom", fontsize=7)
    axis.set_ylim(0, top * 1.15)
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))


def _target(settings: dict) -> str:
    """", target ..." for the title: GETA's budget or sparsity, where the run had one."""
    config = settings.get("qasso_config") or {}
    if config.get("target_rel_bops") is not None:
        return f" (target rel. BOPs {100 * config['target_rel_bops']:.3g}%)"
    if config.get("target_size_bytes") is not None:
        return f" (target size {config['target_size_bytes']:,.0f} bytes)"
    return ""


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
