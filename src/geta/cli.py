"""The ``geta`` command line."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from torch import nn

    from geta.recipes import Recipe
    from geta.run import RunResult, Settings

app = typer.Typer(help="geta: joint structured pruning and quantization-aware training for PyTorch models.")


@app.callback()
def main() -> None:
    """geta: joint structured pruning and quantization-aware training for PyTorch models."""


@app.command()
def demo(
    steps: int = typer.Option(600, help="Training steps (batches of 64), the same for the dense run and QASSO."),
    sparsity: float = typer.Option(0.5, help="Fraction of the groups (channels) to remove."),
    bits_low: int = typer.Option(4, help="Lowest bit width allowed for weights and activations."),
    bits_high: int = typer.Option(8, help="Highest bit width allowed for weights and activations."),
    optimizer: str = typer.Option(
        "sgd", help="Base optimizer of QASSO: sgd (momentum 0.9, lr 0.05) or adam (lr 3e-3)."
    ),
    seed: int = typer.Option(0, help="Seed of the initialization and batch order."),
) -> None:
    """Compress a small CNN on sklearn digits with GETA in one run and compare it with dense training.

    The CNN is trained from the same initialization twice for the same steps: densely with the base
    optimizer, and with QASSO (weights and activations quantized, channels pruned to ``sparsity``,
    bits kept in [bits_low, bits_high]). Then the pruned channels are physically removed and the
    compact model is evaluated.
    """
    import torch

    import geta
    from geta.core.inputs import ExampleInputs
    from geta.data.digits import load_digits
    from geta.metrics.cost import count_macs
    from geta.models.cnn import digits_cnn
    from geta.quant.prepare import find_layers
    from geta.train import accuracy, train_steps

    # each optimizer's keyword arguments (to torch's optimizer, then through GETA.qasso's **settings)
    settings: dict[str, dict[str, Any]] = {"sgd": {"lr": 0.05, "momentum": 0.9}, "adam": {"lr": 3e-3}}
    if optimizer not in settings:
        raise typer.BadParameter(f"{optimizer!r} is not one of {', '.join(settings)}", param_hint="--optimizer")
    start = time.perf_counter()
    split = load_digits(seed=0)
    torch.manual_seed(seed)
    initial = digits_cnn()
    dense = digits_cnn()
    dense.load_state_dict(initial.state_dict())
    base = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
    train_steps(dense, base(dense.parameters(), **settings[optimizer]), split, steps=steps, seed=seed)
    dense_accuracy = accuracy(dense, split.test_x, split.test_y)
    typer.echo(f"digits: {len(split.train_y)} train / {len(split.test_y)} test images; dense CNN after {steps} "
               f"{optimizer} steps: test accuracy {dense_accuracy:.4f}")

    g = geta.GETA(initial, split.train_x[:64], quantize="weights+activations", calibration_data=[split.train_x[:256]])
    stage: list[geta.Stage | None] = [None]

    def log(metrics: geta.QassoMetrics) -> None:
        if metrics.stage != stage[0] or metrics.step == steps:
            stage[0] = metrics.stage
            typer.echo(f"  step {metrics.step:>5}  {metrics.stage.value:<10}  "
                       f"group sparsity {metrics.group_sparsity:.3f}  "
                       f"weight bits {metrics.weight_bits_min:.2f}-{metrics.weight_bits_max:.2f}  "
                       f"act bits {metrics.act_bits_min:.2f}-{metrics.act_bits_max:.2f}")

    opt = g.qasso(optimizer, target_sparsity=sparsity, total_steps=steps, lr_quant=1e-3,
                  weight_bits=(bits_low, bits_high), act_bits=(bits_low, bits_high), callback=log,
                  **settings[optimizer])
    typer.echo(f"QASSO over {len(g.groups)} groups, {opt.schedule}")
    train_steps(g.model, opt, split, steps=steps, seed=seed)
    typer.echo(f"QASSO model: test accuracy {accuracy(g.model, split.test_x, split.test_y):.4f}")
    typer.echo(str(g.report()))

    compact = g.construct_subnet()
    example = ExampleInputs.from_user(split.train_x[:1])
    macs = {name: count_macs(model, example, find_layers(model)).total for name, model in
            (("dense", dense), ("compact", compact))}
    params = {"dense": _weight_count(dense), "compact": _weight_count(compact)}
    typer.echo("compact model (pruned channels removed): "
               f"test accuracy {accuracy(compact, split.test_x, split.test_y):.4f}; "
               f"MACs {macs['compact']:.0f} vs {macs['dense']:.0f} dense ({macs['compact'] / macs['dense']:.1%}); "
               f"weights {params['compact']} vs {params['dense']} dense")
    typer.echo(f"done in {time.perf_counter() - start:.1f} s")


@app.command()
def recipes() -> None:
    """List the recipes `geta compress` runs: name, expected run time on this machine, what it does."""
    from geta.recipes import RECIPES

    width = max(len(name) for name in RECIPES)
    for recipe in RECIPES.values():
        typer.echo(f"{recipe.name:<{width}}  {recipe.expected_time:<12}  {recipe.description}")


@app.command()
def compress(
    recipe: str = typer.Argument(..., help="Recipe name; `geta recipes` lists them."),
    epochs: int | None = typer.Option(None, help="Compression epochs (every method gets these after the dense stage)."),
    dense_epochs: int | None = typer.Option(None, help="Epochs of the dense stage that compression starts from."),
    sparsity: float | None = typer.Option(None, help="Fraction of the groups (channels, heads) to remove."),
    target_rel_bops: float | None = typer.Option(
        None, help="GETA's target as a budget instead of --sparsity: the compact model's rel. BOPs, e.g. 0.03 for 3%."
    ),
    target_size: float | None = typer.Option(
        None, metavar="BYTES", help="GETA's target as a budget of the packed weights' size in bytes."
    ),
    weight_bits: tuple[int, int] | None = typer.Option(None, metavar="LO HI", help="Weight bit range."),
    act_bits: tuple[int, int] | None = typer.Option(None, metavar="LO HI", help="Activation bit range."),
    out: Path | None = typer.Option(None, help="Output folder (default: runs/RECIPE)."),
    seed: int = typer.Option(0, help="Seed of the initialization and the batch order."),
    baseline: list[str] = typer.Option(
        ["geta"], metavar="METHOD",
        help="Method to run, repeatable: geta, dense, prune-then-ptq, quantize-only, or all."
    ),
    lr: float | None = typer.Option(None, help="Learning rate of the dense stage (default: the recipe's)."),
    compress_lr: float | None = typer.Option(
        None, help="Learning rate of every method after it (default: the recipe's)."
    ),
    limit_batches: int | None = typer.Option(None, help="Cap on batches per epoch (quick trials)."),
    round_to: int | None = typer.Option(
        None, help="Keep every width that is a multiple of N one (e.g. 16, a CPU's vector width): groups are removed "
                   "in whole chunks by GETA and prune-then-ptq, and the target rounds to what chunks reach."
    ),
    saliency_macs: float = typer.Option(
        0.0, metavar="W", help="Weight of geta's 'macs' saliency criterion (remove costly groups first) beside the "
                               "paper's five at 0.2 each; 0 is the paper's saliency."
    ),
    stages: tuple[float, float, float] | None = typer.Option(
        None, metavar="W P J", help="Fractions of the compression budget for QASSO's warm-up, projection and joint "
                                    "stages; the cool-down gets the rest (default 0.1 0.2 0.3)."
    ),
    distill: float | None = typer.Option(
        None, metavar="W", help="Train the compressing methods with knowledge distillation from the dense model, at "
                                "this weight in (0, 1] beside the labels' cross-entropy (the dense baseline never)."
    ),
    distill_temperature: float = typer.Option(4.0, metavar="T", help="Temperature of --distill's softened logits."),
    skip: list[str] | None = typer.Option(
        None, metavar="LAYER",
        help="Layers kept at full precision, repeatable: 'first', 'last', module names or globs; 'none' "
             "quantizes every layer (default: the recipe's, first and last)."
    ),
    threads: int | None = typer.Option(None, help="CPU threads of torch (default: the recipe's, else torch's)."),
    overwrite: bool = typer.Option(
        False, "--overwrite",
        help="Replace an --out folder that holds files (as a whole, once the new run is complete).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display; only the final lines."),
) -> None:
    """Train RECIPE's model densely, compress it with GETA (QASSO) or run a baseline, evaluate, and write report.json, report.md, PNG plots and the compact model into the output folder.

    Every method starts from the same dense model and gets the same compression budget; unset options take the recipe's values (`geta recipes`). With several methods each gets its own subfolder and comparison.md sums them up.

    Everything is checked before training (a wrong setting, recipe, --skip layer, missing data or --out: exit 2). The run is written into a folder beside --out and renamed into place once complete; Ctrl-C leaves --out as it was (exit 130).
    """  # noqa: E501 (typer prints this help as written: a wrapped line would stay broken at every width)
    from geta.errors import ConfigError, GetaError
    from geta.recipes import get_recipe
    from geta.run import METHODS, Settings
    from geta.run.artifacts import staged_folder
    from geta.run.harness import check_run

    out = out or Path("runs") / recipe
    try:
        try:
            chosen = get_recipe(recipe)
            methods = list(dict.fromkeys(m for name in baseline for m in (METHODS if name == "all" else (name,))))
            settings = Settings(epochs=epochs, dense_epochs=dense_epochs, sparsity=sparsity, weight_bits=weight_bits,
                                act_bits=act_bits, seed=seed, limit_batches=limit_batches, lr=lr,
                                compress_lr=compress_lr,
                                qasso=_qasso(round_to, saliency_macs, stages), skip=_skip(skip),
                                target_rel_bops=target_rel_bops, target_size_bytes=target_size,
                                distill=distill, distill_temperature=distill_temperature)
            settings.resolve(chosen)
            if threads is not None and threads < 1:
                raise ConfigError(f"--threads {threads}: give at least 1")
            if any(m not in METHODS for m in methods):
                raise ConfigError(f"unknown method {next(m for m in methods if m not in METHODS)!r}; "
                                  f"choose from {', '.join(METHODS)} or all")
            _check_out(out, overwrite)
            check_run(chosen, settings)
        except GetaError as error:
            raise _error(error, 2) from None
        results = _run(chosen, settings, methods, threads, quiet)
        try:
            with staged_folder(out, overwrite=overwrite) as staging:
                lines = _write(results, staging, out, threads or 1)
        except OSError as error:
            raise _error(f"--out {out}: cannot write there ({error.strerror or error})", 1) from None
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {out} left as it was", err=True)
        raise typer.Exit(130) from None
    for line in lines:
        typer.echo(line)


@app.command()
def inspect(path: Path = typer.Argument(..., help="A model saved by geta.save (model.safetensors).")) -> None:
    """Print a saved model's layers (weight shape, weight and activation bits, width, bytes) and its size.

    The file is checked as geta.load checks it; a bad file is one line on stderr and exit status 1, and
    warnings (an old file without a checksum) are one line each on stderr."""
    import warnings

    from geta.errors import SavedModelError
    from geta.export.inspect import format_summary, summarize

    try:
        with warnings.catch_warnings(record=True) as caught:
            text = format_summary(summarize(path), path)
    except SavedModelError as error:
        typer.echo(f"error: {' '.join(str(error).splitlines())}", err=True)
        raise typer.Exit(1) from None
    for warning in caught:
        typer.echo(f"warning: {' '.join(str(warning.message).splitlines())}", err=True)
    typer.echo(text)


def _check_out(out: Path, overwrite: bool) -> None:
    """ConfigError unless the run can become folder ``out``: not a file, nor the current folder or one
    above it; holding no files unless ``overwrite``; its parent writable, as the run is staged there
    and renamed (the folders made for that check are removed again)."""
    from geta.errors import ConfigError
    from geta.run.artifacts import make_folders, remove_folders

    target = out.resolve()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--out {out}: not a folder")
    if Path.cwd().is_relative_to(target):
        raise ConfigError(f"--out {out}: holds the current folder; choose another")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out}: holds an earlier run; pass --overwrite to replace it, or choose another --out")
    created: list[Path] = []
    try:
        created = make_folders(target.parent)
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as error:
        raise ConfigError(f"--out {out}: cannot write there ({error.strerror or error})") from None
    finally:
        remove_folders(created)


def _run(recipe: Recipe, settings: Settings, methods: list[str], threads: int | None, quiet: bool) -> list[RunResult]:
    """``run_methods`` on ``threads`` torch threads (the previous number given back after) with the progress
    display. A wrong setting found on the way (a budget too short for the data's batches) is exit 2, another
    GetaError (e.g. data that fails to load) exit 1."""
    import torch

    from geta.errors import ConfigError, GetaError
    from geta.run import Display, run_methods

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or recipe.threads or previous_threads)
    display = Display(mode="quiet" if quiet else "live" if sys.stderr.isatty() else "plain")
    try:
        with display:
            return run_methods(recipe, settings, methods, display=display)
    except ConfigError as error:
        raise _error(error, 2) from None
    except GetaError as error:
        raise _error(error, 1) from None
    finally:
        torch.set_num_threads(previous_threads)


def _write(results: list[RunResult], staging: Path, out: Path, threads: int) -> list[str]:
    """Write ``results`` into ``staging`` (a subfolder each and comparison.md when several), which becomes
    ``out``; returns the lines that sum each up and say where its report is. Latency is timed on
    ``threads`` onnxruntime threads (``--threads``, else one: a figure that does not depend on the machine's
    core count)."""
    from geta.run.artifacts import write_comparison, write_run

    lines = []
    for result in results:
        staged, final = (staging, out) if len(results) == 1 else (staging / result.method, out / result.method)
        paths = write_run(result, staged, threads=threads)
        lines.append(f"{result.method}: test accuracy {result.accuracy:.4f} (dense {result.accuracy_dense:.4f}), "
                     f"rel. BOPs {100 * result.rel_bops:.3f}%, group sparsity {100 * result.group_sparsity:.1f}%, "
                     f"{result.params:,} of {result.params_dense:,} params, {result.wall_s:.1f} s")
        lines.append(f"report: {final / paths['report_md'].name} "
                     f"(and {paths['report_json'].name}, plots, model in {final})")
    if len(results) > 1:
        lines.append(f"comparison: {out / write_comparison(results, staging)['comparison_md'].name}")
    return lines


def _error(message: object, code: int) -> typer.Exit:
    """Print ``message`` as one line on stderr (its lines joined); returns the Exit with ``code`` to raise."""
    typer.echo(f"error: {' '.join(str(message).splitlines())}", err=True)
    return typer.Exit(code)


def _weight_count(model: nn.Module) -> int:
    """Parameters of ``model`` other than its quantizers' d, q_m, t."""
    from geta.quant.quantizer import quantizer_parameter_ids

    quantizer_parameters = quantizer_parameter_ids(model)
    return sum(p.numel() for p in model.parameters() if id(p) not in quantizer_parameters)


def _qasso(round_to: int | None, saliency_macs: float, stages: tuple[float, float, float] | None) -> dict:
    """The Settings.qasso of --round-to, --saliency-macs and --stages."""
    from geta.errors import ConfigError
    from geta.optim.saliency import DEFAULT_WEIGHTS
    from geta.optim.schedule import check_stage_shares

    qasso: dict = {} if round_to is None else {"round_to": round_to}
    if saliency_macs < 0:
        raise ConfigError(f"--saliency-macs {saliency_macs}: give a weight >= 0")
    if saliency_macs:
        qasso["saliency_weights"] = {**DEFAULT_WEIGHTS, "macs": saliency_macs}
    if stages is not None:
        try:
            qasso["stage_shares"] = check_stage_shares(stages)
        except ConfigError as error:
            raise ConfigError(f"--stages {' '.join(f'{v:g}' for v in stages)}: {error}") from None
    return qasso


def _skip(values: list[str] | None) -> tuple[str, ...] | None:
    """--skip values as Settings.skip: None for the recipe's, () for 'none'."""
    if not values:
        return None
    from geta.errors import ConfigError

    if "none" in values:
        if len(values) > 1:
            raise ConfigError(f"--skip none quantizes every layer; it cannot be combined with {values!r}")
        return ()
    return tuple(values)


if __name__ == "__main__":
    app()
