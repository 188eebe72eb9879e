"""The end-to-end harness: dense training, then GETA (QASSO) or a baseline from the dense weights.

Compression starts from the trained dense model: the dense stage trains ``dense_epochs`` (cosine
learning-rate decay), then every method gets the same ``epochs`` from those weights with the same
batch order and the same learning rates: ``compress_lr`` (the recipe's unless set) until QASSO's
cool-down starts, then a cosine decay to zero, and the same loss (cross-entropy, or with ``distill``
distillation from the dense model; the dense baseline always trains on the labels alone). The
methods are GETA (QASSO), continued dense training, prune-then-PTQ (fine-tuning) and quantize-only
(QASSO without pruning). Rel. BOPs compare the final model with the dense float model (dense MACs x
32 x 32).
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from geta.data.split import select
from geta.errors import ConfigError
from geta.optim.config import BUDGETS
from geta.optim.qasso import base_optimizer
from geta.quant.prepare import find_layers, resolve_skip
from geta.recipes.recipe import Recipe, get_recipe
from geta.run import baselines
from geta.run.budget import INITIAL_BITS, check_budget
from geta.run.costs import dense_cost, model_report
from geta.run.progress import Display
from geta.run.result import DenseModel, Recorder, RunResult, make_result, measure_every
from geta.run.settings import Settings
from geta.train import (
    accuracy,
    batches_per_epoch,
    constant_then_cosine,
    shuffled_batches,
    train,
)

BASELINES = ("dense", "prune-then-ptq", "quantize-only")
METHODS = ("geta", *BASELINES)
EXAMPLE_BATCH = 2
CALIBRATION_BATCH = 256


def check_run(recipe: Recipe | str, settings: Settings | None = None) -> None:
    """Check, before the run loads its data or trains, what a run of ``recipe`` needs: the
    settings, that the data can be found (``recipe.check_data``) and that every ``skip`` entry names
    a layer of the model (built by ``recipe.build_model``). Raises :class:`geta.GetaError` (a
    :class:`ConfigError` for a wrong setting) with what to do."""
    recipe = _recipe(recipe)
    resolved = (settings or Settings()).resolve(recipe)
    if recipe.check_data is not None:
        recipe.check_data()
    if recipe.build_model is not None:
        check_skip(recipe.build_model(), resolved.skip)


def check_skip(model: torch.nn.Module, skip: tuple[str, ...]) -> None:
    """ConfigError unless every ``skip`` entry matches a quantizable layer of ``model``, as
    :class:`geta.GETA` checks them (which the methods only build after the dense stage). Module order
    stands in for the order the layers run in: only whether ``FIRST`` / ``LAST`` find a layer counts."""
    layers = find_layers(model)
    resolve_skip(skip, layers, {}, layers)


def run_recipe(
    recipe: Recipe | str, settings: Settings | None = None, *, dense: DenseModel | None = None,
    display: Display | None = None,
) -> RunResult:
    """Train the recipe's model densely, compress it with QASSO and evaluate the compact model.

    ``dense`` (from :func:`train_dense`) skips the dense stage: compression starts from it with the
    method settings (epochs, sparsity, bits) of ``settings``, so that several runs share one dense model."""
    dense = _dense_for(recipe, settings, dense, display)
    return compress(dense, display=display)


def run_baseline(
    recipe: Recipe | str, settings: Settings | None, baseline: str, *, dense: DenseModel | None = None,
    display: Display | None = None,
) -> list[RunResult]:
    """Run one baseline of :data:`BASELINES` under the same data, model and budget as :func:`run_recipe`.

    prune-then-ptq gives two results (uniform 8 and 4 bits after the same pruning and fine-tuning);
    the others give one. ``dense`` skips the dense stage as in :func:`run_recipe`."""
    if baseline not in BASELINES:
        raise ConfigError(f"unknown baseline {baseline!r}; choose from {', '.join(BASELINES)}")
    dense = _dense_for(recipe, settings, dense, display)
    if baseline == "dense":
        return [baselines.dense_training(dense, display=display)]
    if baseline == "prune-then-ptq":
        return baselines.prune_then_ptq(dense, display=display)
    return [compress(dense, display=display, sparsity=0.0, method="quantize-only")]


def run_methods(
    recipe: Recipe | str, settings: Settings | None, methods: list[str], *, display: Display | None = None
) -> list[RunResult]:
    """Train densely once and run every method of ``methods`` (names of :data:`METHODS`) from it."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    budgeted = settings is not None and any(getattr(settings, name) is not None for name in BUDGETS)
    stages = sum(len(baselines.PTQ_BITS) if budgeted and m == "prune-then-ptq" else 1 for m in methods)
    dense = train_dense(recipe, settings, display=display, methods=stages)
    results: list[RunResult] = []
    for method in methods:
        if method == "geta":
            results.append(compress(dense, display=display))
        else:
            results += run_baseline(dense.recipe, None, method, dense=dense, display=display)
    return results


def train_dense(
    recipe: Recipe | str, settings: Settings | None = None, *, display: Display | None = None, methods: int = 1
) -> DenseModel:
    """Build the recipe's model and data (seeded) and train it densely for ``dense_epochs``.

    ``methods``: how many method stages will follow (for the display's time left; prune-then-ptq under a
    budget fine-tunes once per bit width)."""
    recipe = _recipe(recipe)
    resolved = (settings or Settings()).resolve(recipe)
    display = display or Display()
    start = time.perf_counter()
    torch.manual_seed(resolved.seed)
    model, split = recipe.setup()
    check_skip(model, resolved.skip)
    per_epoch = batches_per_epoch(split.train_y, recipe.batch_size, resolved.limit_batches)
    check_budget(resolved, per_epoch, recipe.quantize)
    steps = resolved.dense_epochs * per_epoch
    display.set_total(steps + methods * resolved.epochs * per_epoch)
    start_from = "fine-tuning the pretrained model" if recipe.pretrained else "training from scratch"
    display.message(f"{recipe.name}: {len(split.train_y)} training / {len(split.test_y)} test examples; "
                    f"dense stage {resolved.dense_epochs} epochs ({steps} steps), {start_from}")
    optimizer = base_optimizer(recipe.optimizer, resolved.lr, **recipe.optimizer_kwargs)(list(model.parameters()))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    batches = shuffled_batches(split.train_inputs, split.train_y, recipe.batch_size,
                               torch.Generator().manual_seed(resolved.seed), resolved.limit_batches)
    recorder = Recorder(display)
    every = measure_every(steps)

    def on_step(step: int, loss: float) -> None:
        dense_point = {"group_sparsity": 0.0, "rel_bops": 1.0}
        recorder.record("dense", loss, (lambda: dense_point) if step % every == 0 or step == steps else None)

    train(model, optimizer, batches, steps, scheduler=scheduler, on_step=on_step)
    example = select(split.train_inputs, slice(0, EXAMPLE_BATCH))
    dense_accuracy = accuracy(model, split.test_inputs, split.test_y)
    display.message(f"dense model: test accuracy {dense_accuracy:.4f}")
    return DenseModel(
        recipe=recipe, settings=resolved, model=model, split=split, example=example,
        calibration=[select(split.train_inputs, slice(0, CALIBRATION_BATCH))], accuracy=dense_accuracy,
        cost=dense_cost(model, example), steps_per_epoch=per_epoch, curve=recorder.points,
        wall_s=time.perf_counter() - start,
    )


def compress(
    dense: DenseModel, *, display: Display | None = None, sparsity: float | None = None, method: str = "geta"
) -> RunResult:
    """QASSO from the dense weights for the compression budget, then the compact model, evaluated.

    The target is ``sparsity`` when given (quantize-only gives 0), else the settings' budget or sparsity."""
    recipe, settings = dense.recipe, dense.settings
    display = display or Display()
    start = time.perf_counter()
    display.set_stage("setup")
    g = baselines.quantization_aware(dense, dense.model, INITIAL_BITS)
    steps = dense.method_steps
    config = settings.qasso_config(steps, sparsity)
    optimizer = g.qasso(recipe.optimizer, lr=settings.compress_lr, config=config, **recipe.optimizer_kwargs)
    budget = config.budget
    target = f"target sparsity {config.target_sparsity:.2f}" if budget is None else f"target {budget[0]}={budget[1]:g}"
    display.message(f"{method}: QASSO over {len(g.groups)} groups for {settings.epochs} epochs ({steps} steps), "
                    f"{target}, weight bits {settings.weight_bits}, act bits {settings.act_bits}")
    recorder = Recorder(display, first_step=dense.steps)
    every = measure_every(steps)
    previous = [""]

    def measure() -> dict[str, float | None]:
        metrics = optimizer.metrics()
        return {"group_sparsity": metrics.group_sparsity, "weight_bits": metrics.weight_bits_mean,
                "act_bits": metrics.act_bits_mean, "rel_bops": metrics.rel_bops}

    def on_step(step: int, loss: float) -> None:
        stage = optimizer.schedule.position(max(optimizer.steps_done - 1, 0)).stage.value
        boundary = stage != previous[0] or step == steps or step % every == 0
        previous[0] = stage
        recorder.record(stage, loss, measure if boundary else None)

    batches = shuffled_batches(dense.split.train_inputs, dense.split.train_y, recipe.batch_size,
                               torch.Generator().manual_seed(settings.seed + 1), settings.limit_batches)
    scheduler = constant_then_cosine(optimizer, optimizer.schedule.cooldown_start, steps)
    train(g.model, optimizer, batches, steps, scheduler=scheduler, on_step=on_step,
          distillation=dense.distillation())
    compact = g.construct_subnet().eval()
    reasons = dict(g.unquantized())
    report = model_report(compact, dense.example, reasons, group_sparsity=g.group_sparsity())
    allocation = asdict(optimizer.allocation) if optimizer.allocation is not None else None
    return make_result(dense, method, compact, report, dense.test_accuracy(compact), recorder, start,
                       group_sparsity=g.group_sparsity(),
                       extra={"qasso_config": config.to_dict(), "allocation": allocation})


def _dense_for(
    recipe: Recipe | str, settings: Settings | None, dense: DenseModel | None, display: Display | None
) -> DenseModel:
    """``dense`` with ``settings`` when given (it must come from ``recipe``), else a newly trained one."""
    if dense is None:
        return train_dense(recipe, settings, display=display)
    name = recipe if isinstance(recipe, str) else recipe.name
    if name != dense.recipe.name:
        raise ConfigError(f"the dense model comes from the recipe {dense.recipe.name!r}, not {name!r}")
    return dense.with_settings(settings)


def _recipe(recipe: Recipe | str) -> Recipe:
    return get_recipe(recipe) if isinstance(recipe, str) else recipe
