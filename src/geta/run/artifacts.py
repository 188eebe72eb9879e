"""What ``geta compress`` writes: report.json, report.md, the plots and the compact model
(``model.safetensors`` with packed integers and ``model.onnx``, by ``geta.export.write_artifacts``),
staged in a folder beside the target and renamed into place once complete (:func:`staged_folder`)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import safetensors.torch

from geta.errors import SavedModelError
from geta.export import write_artifacts
from geta.export.packed import new_file_mode
from geta.run.latency import Latency, measure_latency
from geta.run.plots import plot_curves, plot_layers
from geta.run.result import RunResult

STATE_DICT_FILE = "model_state_dict.safetensors"


def write_run(result: RunResult, out_dir: Path, *, threads: int = 1) -> dict[str, Path]:
    """Write every artifact of ``result`` into ``out_dir`` (created); returns them by name.

    ``geta.export`` saves a model of any class (one outside its allow-list loads with
    ``geta.load(path, model=...)``). A model it still refuses (e.g. a per-channel input quantizer, unsigned
    weight quantizers in ONNX) is written as its state dict in safetensors instead (no pickle; tied tensors
    once), and report.json says why under ``export_error``.

    Sets ``result.latency``: ``model.onnx`` against the dense model in onnxruntime on ``threads`` threads
    (:func:`geta.run.latency.measure_latency`), or not measured when there is no ``model.onnx``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "layers_plot": plot_layers(result, out_dir / "layers.png"),
        "curves_plot": plot_curves(result, out_dir / "curves.png"),
    }
    export_error = ""
    try:
        paths.update(write_artifacts(result.model, result.example, out_dir))
    except SavedModelError as error:
        export_error = str(error)
        paths["state_dict"] = out_dir / STATE_DICT_FILE
        safetensors.torch.save_model(result.model, str(paths["state_dict"]))
        result.latency = Latency(threads, not_measured=f"no ONNX artifact to time: {export_error}")
    else:
        result.latency = measure_latency(result.dense_model, paths["onnx"], result.example,
                                         result.settings["batch_size"], threads)
    data = result.to_dict()
    if export_error:
        data["export_error"] = export_error
    data["files"] = {name: path.name for name, path in paths.items()}
    paths["report_json"] = out_dir / "report.json"
    paths["report_json"].write_text(json.dumps(data, indent=2) + "\n")
    paths["report_md"] = out_dir / "report.md"
    paths["report_md"].write_text(markdown(result, paths, export_error))
    mode = new_file_mode()  # the state-dict fallback is written by safetensors too (0600)
    for path in paths.values():
        path.chmod(mode)
    return paths


@contextlib.contextmanager
def staged_folder(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A new folder beside ``out`` (``.NAME.tmp-RANDOM``) to write a run into, renamed to ``out`` when the
    block completes, so that ``out`` never holds a half-written run.

    An ``out`` that holds files is replaced as a whole, and only with ``overwrite``: no old file stays
    beside the new ones. On any exception, KeyboardInterrupt included, the staged folder and the parent
    folders made for it are removed and ``out`` is left as it was. A symbolic link is followed: the
    folder it points to is the one replaced."""
    target = out.resolve()
    created = make_folders(target.parent)
    staging = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    try:
        staging.mkdir()
        yield staging
        _publish(staging, target, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_folders(created)
        raise


def make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, outermost first (for
    :func:`remove_folders`). None is left behind when one cannot be made."""
    created: list[Path] = []
    try:
        for path in [*reversed(folder.parents), folder]:
            if not path.exists():
                path.mkdir()
                created.append(path)
    except BaseException:
        remove_folders(created)
        raise
    return created


def remove_folders(created: list[Path]) -> None:
    """Remove the folders :func:`make_folders` created, innermost first, as far as they are still empty."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            return


def _publish(staging: Path, target: Path, overwrite: bool) -> None:
    """Rename ``staging`` to ``target``; a ``target`` with files in it is moved aside first (with
    ``overwrite``), put back if the rename fails, and deleted once the new folder is in place."""
    if not (target.is_dir() and any(target.iterdir())):
        os.replace(staging, target)
        return
    if not overwrite:
        raise FileExistsError(f"{target} holds files of an earlier run; pass overwrite=True to replace it")
    old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old)


def write_comparison(results: list[RunResult], out_dir: Path) -> dict[str, Path]:
    """comparison.json and comparison.md: one row per method."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{key: getattr(r, key) for key in ("method", "accuracy_dense", "accuracy", "rel_bops", "group_sparsity",
                                             "params", "size_bits", "wall_s")} for r in results]
    json_path = out_dir / "comparison.json"
    json_path.write_text(json.dumps({"recipe": results[0].recipe, "methods": rows}, indent=2) + "\n")
    budget = (f"Every method starts from the same dense model and gets the same compression budget "
              f"({results[0].settings['epochs']} epochs, {results[0].settings['method_steps']} steps).")
    lines = [f"# {results[0].recipe}: methods compared", "", budget, "",
             "| method | test accuracy | dense accuracy | rel. BOPs | group sparsity | params | size (KiB) "
             "| wall (s) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.method} | {r.accuracy:.4f} | {r.accuracy_dense:.4f} | {_pct(r.rel_bops)} "
              f"| {_pct(r.group_sparsity, 1)} | {r.params:,} | {r.size_bits / 8 / 1024:.2f} | {r.wall_s:.1f} |"
              for r in results]
    md_path = out_dir / "comparison.md"
    md_path.write_text("\n".join(lines) + "\n")
    return {"comparison_json": json_path, "comparison_md": md_path}


def markdown(result: RunResult, files: dict[str, Path], export_error: str = "") -> str:
    """report.md: summary against the dense model, per-layer table, settings and plots."""
    s = result.settings
    budget = (f"Dense stage {s['dense_epochs']} epochs ({s['dense_steps']} steps), then {result.method} for "
              f"{s['epochs']} epochs ({s['method_steps']} steps); wall time {result.wall_s:.1f} s "
              f"(dense stage {result.wall_s_dense:.1f} s).")
    lines = [
        f"# {result.recipe}: {result.method}", "", budget,
        "", "| | dense float | compressed |", "|---|---|---|",
        f"| test accuracy | {result.accuracy_dense:.4f} | {result.accuracy:.4f} |",
        f"| rel. BOPs (vs dense MACs x 32 x 32) | 100% | {_pct(result.rel_bops)} |",
        f"| MACs per example | {result.macs_dense:,.0f} | {result.macs:,.0f} |",
        f"| params | {result.params_dense:,} | {result.params:,} |",
        f"| size | {result.size_bits_dense / 8 / 1024:.2f} KiB | {result.size_bits / 8 / 1024:.2f} KiB |",
        f"| group sparsity | 0% | {_pct(result.group_sparsity, 1)} |",
        *_target_lines(s),
        "", "## Latency", "", *_latency_lines(result.latency),
        "", "## Layers", "",
        "| layer | kind | weight bits | act bits | kept width / dense | MACs | params | full precision |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['name'] or '<root>'} | {r['kind']} | {r['weight_bits']:g} | {r['act_bits']:g} | "
              f"{r['out_width']} / {r['dense_width']} | {r['macs']:,.0f} | {r['params']:,} "
              f"| {r['full_precision_reason']} |"
              for r in result.layers]
    lines += ["", "## Settings", "", "```json", json.dumps(s, indent=2), "```", "", "## Plots", ""]
    lines += [f"![{name}]({path.name})" for name, path in files.items() if path.suffix == ".png"]
    if "safetensors" in files:
        lines += ["", (f"Compact model: `{files['safetensors'].name}` (packed integers; `geta.load(path)` rebuilds it, "
                       "or `geta.load(path, model=MyModel(...))` for a model class of your own) and "
                       f"`{files['onnx'].name}` (ONNX with Q/DQ).")]
    else:
        lines += ["", (f"Compact model: `{files['state_dict'].name}` (a state dict; geta.export cannot save this "
                       f"model: {export_error}).")]
    return "\n".join(lines) + "\n"


def _target_lines(settings: dict) -> list[str]:
    """report.md's line on GETA's target: the sparsity, or the cost budget and how its final plan met it."""
    config = settings.get("qasso_config")
    if config is None:
        return []
    if config["target_sparsity"] is not None:
        return ["", f"Target: group sparsity {_pct(config['target_sparsity'], 1)}."]
    plan = settings.get("allocation")
    name = next(n for n in ("target_rel_bops", "target_size_bytes") if config[n] is not None)
    budget = config[name]
    wanted = f"rel. BOPs at most {_pct(budget)}" if name == "target_rel_bops" else f"size at most {budget:,.0f} bytes"
    if plan is None:
        return ["", f"Target: {wanted}; no plan was made (the joint stage did not start)."]
    exact = _pct(plan["exact"]) if name == "target_rel_bops" else f"{plan['exact']:,.0f} bytes"
    words = {"ok": "within 2% below the budget", "coarse": "within the budget; the group and bit granularity "
             "allows nothing closer", "below_reach": "NOT met: the budget is below the least cost reachable",
             "above_cost": "met with nothing removed at the top bits (the budget is above the dense cost)"}
    return ["", f"Target: {wanted} (group sparsity and bits are outcomes). The final plan "
            f"(`allocation` in the settings): {plan['removed_groups']:,} groups removed, cost {exact}, "
            f"{words.get(plan['status'], plan['status'])}; its per-layer bits are in the table below."]


def _latency_lines(latency: Latency | None) -> list[str]:
    """report.md's latency section: a table per batch size and each ratio in words, or why it was not measured."""
    if latency is None:
        return ["Not measured."]
    if latency.not_measured:
        return [f"Not measured: {latency.not_measured.rstrip('.')}."]
    repeats = sorted({b.repeats for b in latency.batches})
    threads = f"{latency.threads} thread{'s' if latency.threads > 1 else ''}"
    method = (f"Milliseconds per call in {latency.runtime} on the CPU, {threads}: the dense float model (exported "
              "to ONNX for this measurement) and the compressed `model.onnx`, the two called in turn on the same "
              f"inputs, median of {'/'.join(map(str, repeats))} calls each after a warm-up.")
    lines = [method, "", "| batch | dense float (ms) | compressed (ms) | dense / compressed |", "|---|---|---|---|"]
    lines += [f"| {b.batch} | {b.dense_ms:.4f} | {b.artifact_ms:.4f} | {b.ratio:.2f} |" for b in latency.batches]
    lines.append("")
    lines += [f"At batch {b.batch} the compressed model is {b.sentence()}." for b in latency.batches]
    return lines


def _pct(value: float, digits: int = 3) -> str:
    return f"{100 * value:.{digits}f}%"
