"""Baselines under the same harness, data, model and budget as GETA (see ``harness``).

* dense: the dense model trained on for the compression budget (float, rel. BOPs 1).
* prune-then-ptq: the groups of the same search space ranked by the same saliency on the dense
  model, the least salient ``sparsity`` share removed (in whole chunks with GETA's ``round_to``),
  the compact model fine-tuned for the budget, then post-training quantization at uniform 8 and at 4 bits
  (same quantizers, fixed bits; weight clip chosen by least squared error, activation ranges calibrated on
  training batches). Under GETA's cost budget each bit width instead removes the fewest groups that bring
  its compact model within the budget, so that it is compared at the same BOPs (or size).
* quantize-only: QASSO over the same bit ranges without pruning (``harness.compress`` with
  sparsity 0).
"""

from __future__ import annotations

import copy
import time
from bisect import bisect_left
from itertools import islice

import torch
from torch import nn

import geta
from geta.errors import GetaError
from geta.metrics.cost import count_macs
from geta.optim.qasso import base_optimizer
from geta.optim.saliency import group_macs, saliency
from geta.pruning.subnet import construct_subnet
from geta.quant.functional import quantize_reference
from geta.run.budget import decay_start
from geta.run.costs import model_report
from geta.run.progress import Display, Point
from geta.run.result import DenseModel, Recorder, RunResult, make_result, measure_every
from geta.train import Distillation, constant_then_cosine, logits, shuffled_batches, train

PTQ_BITS = (8, 4)
SALIENCY_BATCHES = 8
CLIP_CANDIDATES = torch.linspace(0.3, 1.0, 15)


def dense_training(dense: DenseModel, *, display: Display | None = None) -> RunResult:
    """The dense model trained on for the compression budget at the compression learning rates."""
    display = display or Display()
    start = time.perf_counter()
    model = copy.deepcopy(dense.model)  # methods never change the shared dense model
    display.message(f"dense: training on for {dense.settings.epochs} epochs ({dense.method_steps} steps)")
    # the plain reference: trained on the labels alone, whatever ``distill`` says
    recorder = _fine_tune(dense, model, "dense", display, {"group_sparsity": 0.0, "rel_bops": 1.0}, None)
    model.eval()
    report = model_report(model, dense.example)
    return make_result(dense, "dense", model, report, dense.test_accuracy(model), recorder, start, group_sparsity=0.0)


def prune_then_ptq(dense: DenseModel, *, display: Display | None = None) -> list[RunResult]:
    """Prune by saliency, fine-tune for the budget, then quantize after training at each of :data:`PTQ_BITS`.

    With a sparsity target every bit width shares one pruned, fine-tuned model. With a cost budget
    (``target_rel_bops`` / ``target_size_bytes``) each bit width gets the fewest groups, in saliency
    order, whose compact model at those uniform bits meets the budget (:func:`budget_count`), and its own
    fine-tuning; a bit width that no removal brings within the budget is left out with a message."""
    recipe, settings = dense.recipe, dense.settings
    display = display or Display()
    start = time.perf_counter()
    display.set_stage("setup")
    g = geta.GETA(dense.model, dense.example, quantize="none")
    space = g.groups
    _accumulate_gradients(g.model, dense)
    config = settings.qasso_config(dense.method_steps)
    weights = config.criterion_weights  # GETA's saliency, macs included
    costs = group_macs(space, g.layers, count_macs(g.model, g.example_inputs, g.layers)) if weights["macs"] else None
    scores = saliency(space, weights, torch.ones(len(space), dtype=torch.bool), costs)
    g.model.zero_grad(set_to_none=True)
    order = torch.argsort(scores, stable=True)
    budget = config.budget
    counts: dict[int, int] = {}
    for bits in PTQ_BITS:
        if budget is None:
            counts[bits] = round(settings.sparsity * len(space))
        elif (count := budget_count(dense, g, order, config.round_to, bits, budget)) is not None:
            counts[bits] = count
        else:
            display.message(f"prune-then-ptq at {bits} bits: no removal meets {budget[0]}={budget[1]:g}; left out")
    setup_s = time.perf_counter() - start
    results = []
    for count in dict.fromkeys(counts.values()):
        tune_start = time.perf_counter()
        removed = space.select(order, count, config.round_to)
        pruned = construct_subnet(g.model, space, removed)
        sparsity = float(removed.float().mean()) if len(space) else 0.0
        display.set_stage("setup")
        display.message(f"prune-then-ptq: removed {int(removed.sum())} of {len(space)} groups by saliency; "
                        f"fine-tuning for {settings.epochs} epochs ({dense.method_steps} steps)")
        pruned_rel_bops = model_report(pruned, dense.example).bops / dense.cost.bops
        recorder = _fine_tune(dense, pruned, "fine-tune", display, {"group_sparsity": sparsity,
                                                                    "rel_bops": pruned_rel_bops},
                              dense.distillation())
        tuned_at = time.perf_counter()
        display.set_stage("ptq")
        for bits in [b for b, c in counts.items() if c == count]:
            ptq_start = time.perf_counter()
            q = quantization_aware(dense, pruned, bits)
            fit_weight_clips(q)
            q.model.eval()
            report = model_report(q.model, dense.example, dict(q.unquantized()), group_sparsity=sparsity)
            result = make_result(dense, f"prune-then-ptq-{bits}bit", q.model, report, dense.test_accuracy(q.model),
                                 recorder, start, group_sparsity=sparsity, extra={"ptq_bits": bits})
            # each result: the shared setup, its own pruning and fine-tuning, its own quantization
            result.wall_s = dense.wall_s + setup_s + (tuned_at - tune_start) + (time.perf_counter() - ptq_start)
            act_bits = bits if recipe.quantize == "weights+activations" else None
            result.curves = [*result.curves, Point(result.curves[-1].step, "ptq", result.curves[-1].loss, sparsity,
                                                   bits, act_bits, result.rel_bops, time.perf_counter() - tuned_at)]
            results.append(result)
            display.message(f"prune-then-ptq at {bits} bits: test accuracy {result.accuracy:.4f}, "
                            f"rel. BOPs {100 * result.rel_bops:.3f}%")
    return results


def budget_count(dense: DenseModel, g: geta.GETA, order: torch.Tensor, round_to: int, bits: int,
                 budget: tuple[str, float]) -> int | None:
    """The fewest groups, taken in ``order`` as :meth:`SearchSpace.select` takes them, whose compact model
    quantized at uniform ``bits`` (as :func:`prune_then_ptq` quantizes it) costs at most ``budget``
    (``("target_rel_bops", R)`` against the dense model's BOPs, or ``("target_size_bytes", S)`` of the
    report's size); None when even the most removable groups do not get there. The cost falls as the
    count grows, so both searches are bisections: first the most groups ``select`` can take, then the count."""
    space = g.groups
    name, value = budget

    def selectable(count: int) -> bool:
        try:
            space.select(order, count, round_to)
        except GetaError:
            return False
        return True

    def fits(count: int) -> bool:
        removed = space.select(order, count, round_to)
        pruned = construct_subnet(g.model, space, removed) if bool(removed.any()) else g.model
        report = model_report(quantization_aware(dense, pruned, bits, calibrate=False).model, dense.example)
        cost = report.bops / dense.cost.bops if name == "target_rel_bops" else report.size_bytes
        return cost <= value * (1 - 1e-9)

    most = bisect_left(range(len(space) + 1), True, key=lambda count: not selectable(count)) - 1
    count = bisect_left(range(most + 1), True, key=fits)  # the first count that fits; most + 1 if none does
    return count if count <= most else None


def quantization_aware(dense: DenseModel, model: nn.Module, bits: int, *, calibrate: bool = True) -> geta.GETA:
    """``model`` quantization-aware at uniform ``bits`` as the recipe quantizes it (same skip, exponent and
    residual quantizers; activation ranges calibrated unless only its cost is wanted): GETA's own set-up in
    ``harness.compress`` and every baseline's."""
    recipe = dense.recipe
    return geta.GETA(model, dense.example, quantize=recipe.quantize, skip=list(dense.settings.skip),
                     initial_weight_bits=bits, initial_act_bits=bits,
                     calibration_data=dense.calibration if calibrate else None,
                     exponent=recipe.exponent, quantize_residuals=recipe.quantize_residuals)


@torch.no_grad()
def fit_weight_clips(g: geta.GETA) -> None:
    """Set each weight quantizer's clip q_m (bits unchanged) to the candidate fraction of max |W| that
    gives the least squared quantization error."""
    for layer in g.layers:
        quantizer = layer.weight_quantizer
        if quantizer is None:
            continue
        weights = torch.cat([w.detach().flatten() for w in layer.weights()])
        largest = weights.abs().max()
        errors = []
        for fraction in CLIP_CANDIDATES:
            quantizer.init_range_(largest * fraction)
            d, q_m, t = quantizer.constrained_parameters()
            errors.append(float(((quantize_reference(weights, d, q_m, t, quantizer.signed) - weights) ** 2).sum()))
        quantizer.init_range_(largest * CLIP_CANDIDATES[min(range(len(errors)), key=errors.__getitem__)])


def _accumulate_gradients(model: torch.nn.Module, dense: DenseModel) -> None:
    """Gradients of the training loss summed over a few batches (what the saliency criteria read)."""
    batches = shuffled_batches(dense.split.train_inputs, dense.split.train_y, dense.recipe.batch_size,
                               torch.Generator().manual_seed(dense.settings.seed + 2))
    model.train()
    model.zero_grad(set_to_none=True)
    for x, y in islice(batches, SALIENCY_BATCHES):
        torch.nn.functional.cross_entropy(logits(model, x), y).backward()


def _fine_tune(
    dense: DenseModel, model: torch.nn.Module, stage: str, display: Display, point: dict[str, float],
    distillation: Distillation | None,
) -> Recorder:
    """Train ``model`` for the compression budget with the base optimizer at GETA's learning rates
    (``compress_lr``, decayed from where QASSO's cool-down starts) and the loss of ``distillation``
    (cross-entropy when None); ``point`` (sparsity, rel. BOPs) goes with every curve point."""
    recipe = dense.recipe
    make = base_optimizer(recipe.optimizer, dense.settings.compress_lr, **recipe.optimizer_kwargs)
    optimizer = make(list(model.parameters()))
    batches = shuffled_batches(dense.split.train_inputs, dense.split.train_y, recipe.batch_size,
                               torch.Generator().manual_seed(dense.settings.seed + 1), dense.settings.limit_batches)
    recorder = Recorder(display, first_step=dense.steps)
    steps = dense.method_steps
    every = measure_every(steps)

    def on_step(step: int, loss: float) -> None:
        recorder.record(stage, loss, (lambda: point) if step % every == 0 or step == steps else None)

    scheduler = constant_then_cosine(optimizer, decay_start(dense.settings, steps, recipe.quantize), steps)
    train(model, optimizer, batches, steps, scheduler=scheduler, on_step=on_step, distillation=distillation)
    return recorder
