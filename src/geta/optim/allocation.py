"""A cost budget as QASSO's target: which groups go, and each quantizer's bit width, so that the compact
model ends at the requested relative BOPs (``target_rel_bops``) or packed size (``target_size_bytes``).

What is decided
    A count k of groups, taken in QASSO's saliency order by ``SearchSpace.select(order, k, round_to)``
    (so whole chunks of ``round_to`` hold, and no tensor dimension is emptied), and one integer bit width
    per quantizer (a *variable*) inside its range, ``weight_bits`` or ``act_bits``. A quantizer that costs
    nothing stays at its range top: the output quantizers of residual adds (no MACs of their own), and every
    activation quantizer under a size budget.

Costs
    BOPs = sum over layers of MACs_l x w_l x a_l, plus the MACs outside every layer x 32 x 32, with 32 bits
    where a layer has no quantizer (``metrics.report``). BOPs are bilinear in the bits; size = sum over the
    parameters of kept elements x bits (a weight quantizer's bits, the dtype's width for the rest) is linear.
    For *planning*, a layer's MACs are its dense MACs times the kept fractions of its weight's cut dimensions
    (exact for convolutions, depthwise and grouped too, and linear layers, as ``saliency.group_macs``; a layer
    with several weights weighs them by their sizes), and the MACs outside layers (attention's products
    between activations) count at their dense value, an upper bound, until compact models are measured (see
    the rule); the kept elements of a parameter are its size times the kept fractions of its cut
    dimensions (exact). The chosen plan is then *checked exactly*:
    the compact model is built once for its removal set (``construct_subnet``) and its MACs counted, as
    ``CompactCost`` and ``geta.report`` count them; with that count fixed, the bits' fix-up is exact
    arithmetic. A plan is accepted at an exact cost <= B (the budget, less a relative 1e-9 for rounding).

Sensitivities: one currency, the estimated loss increase (diagonal Fisher, second-order Taylor)
    Only when a budget is set, QASSO keeps from its first step (:class:`Sensitivities`) an EMA (decay 0.99,
    bias-corrected) of the squared gradient F of every weight, element by element, and of the summed squared
    gradient A at each activation quantizer's output (a hook on the output's gradient; positions whose input
    is exactly 0, as after a ReLU, round without error and are left out), until the final plan. Then:

        removing group g                      1/2 sum_{i in g} F_i W_i^2
        weight quantizer at b bits            1/2 sum_i F_i (W_i - Q_b(W_i))^2 over the weights it quantizes,
                                              less the removed groups' share (Q_b: the quantizer at its
                                              current q_m and t with step d(b), ``quant.functional``)
        activation quantizer at b bits        1/2 A d(b)^2 / 12 (uniform rounding noise of step d(b)), times
                                              the layer's kept fraction of MACs (fewer inputs carry noise,
                                              fewer outputs receive it; a quantizer that several layers read,
                                              a residual stream's, takes their fractions weighted by their
                                              dense MACs)

    F and A are squared gradients of the training loss as given (the batch mean) alike, so they share a
    scale. Under a ``GradScaler`` the activation sums are unscaled by the scale measured on the quantizers'
    d (their gradient as the hooks saw it over their ``.grad`` at the step); under
    ``DistributedDataParallel`` they are summed over the ranks (each rank's batch) as the gradient of the
    ranks' mean loss, so every rank takes the same decisions.

Rule (:func:`allocate`)
    Bits for a count k (:func:`fit_bits`): start every variable at its range top; while the cost exceeds B,
    lower the one bit with the least loss increase per cost saved; then, while any fits, raise back the bit
    with the largest loss decrease per cost added; if the cost is then under 0.98 B, trade one bit up for
    one down where that lands in [0.98 B, B] (the trade with the least loss increase). A plan's estimated
    loss is the removed groups' plus the bits'. Counts: a grid of 17 from the groups already pruned (forced,
    first in the order) to the most that can be removed, refined around the best until adjacent counts are
    evaluated; then the bit patterns of the 8 best plans are each tried with the fewest groups they fit
    with (a binary search over the count), since a pattern that fits with room to spare wastes budget. The
    best plan: the least estimated loss among those whose cost lies in [0.98 B, B], else among those within
    B, else the least cost. It is checked exactly: an exact cost above B lowers more bits, and bits are
    raised (and traded) while the exact cost stays within B. When that does not land in [0.98 B, B] (or
    cannot meet B), planning takes the measured MACs outside layers of that count (interpolated linearly in
    the count between the counts measured, dense at 0) and the search repeats, the next-best count checked
    when the plan stays; at most 6 exact checks, the best checked plan wins.
    QASSO runs this at the start of each pruning period of the joint stage; a period removes its cumulative
    share round(k (p + 1) / P) of the planned k, every quantizer is projected onto its planned width [b, b]
    from then on, and the last period's plan is final, so after ``total_steps`` the compact model holds it.

Limits
    The estimates are diagonal and first-order in the removal (a weight element in two removed groups, one
    cutting each of its dimensions, has its loss counted twice), assume each variable's loss is separable
    from the others', and take squared batch gradients for curvature (an empirical Fisher, which early in
    training also holds the mean gradient); activation noise is modelled as uniform rounding, clipping
    aside. The search is greedy per count (a multiple-choice knapsack solved heuristically), and the groups
    are ranked by QASSO's saliency (its ``macs`` criterion makes it cost-aware), not by the allocation. A
    period's plan assumes the final removal; the bits follow it from that period on, and plans may change
    from period to period as the sensitivities do (groups once pruned stay pruned).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from geta.core.inputs import ExampleInputs
from geta.errors import GetaError
from geta.metrics.cost import MacCount, count_macs
from geta.metrics.report import FULL_PRECISION_BITS, model_layers
from geta.pruning.groups import SearchSpace
from geta.pruning.subnet import construct_subnet
from geta.quant.functional import MAX_BITS, quantize_reference, step_for_bits
from geta.quant.prepare import QuantizableLayer, original_parameter
from geta.quant.quantizer import Quantizer, quantizer_parameter_ids

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
BudgetKind = Literal["rel_bops", "size_bytes"]

FISHER_DECAY = 0.99  # EMA decay of the squared gradients
WINDOW = 0.98  # a plan aims at [WINDOW x budget, budget]
GRID_POINTS = 17  # candidate counts per round of the search
SNAPPED = 8  # bit patterns of the best plans that are also tried with the fewest groups they fit with
MAX_EXACT_CHECKS = 6  # compact models built per allocation, at most
SAFETY = 1e-9  # relative margin under the budget, for the rounding of sums in another order
STATUSES = ("ok", "coarse", "below_reach", "above_cost")


# ---------------------------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class CostModel:
    """cost(bits) = constant + sum_t coefficient[t] x bits[first[t]] x bits[second[t]], where a variable index
    of -1 counts as 1: BOPs (a layer's MACs, its weight and its activation variable) or size (elements, one
    variable). The two variables of a term differ, so the cost is linear in each variable."""

    constant: float
    coefficient: Floats
    first: Ints
    second: Ints

    def cost(self, bits: Ints) -> float:
        values = _with_one(bits)
        return float(self.constant + float((self.coefficient * values[self.first] * values[self.second]).sum()))

    def slope(self, bits: Ints) -> Floats:
        """Per variable, the cost of one bit more (exactly: the cost is linear in each variable)."""
        values = _with_one(bits)
        n = len(bits)
        first = np.where(self.first < 0, n, self.first)
        second = np.where(self.second < 0, n, self.second)
        out = np.bincount(first, weights=self.coefficient * values[self.second], minlength=n + 1)
        out += np.bincount(second, weights=self.coefficient * values[self.first], minlength=n + 1)
        return np.asarray(out[:n], dtype=np.float64)

    def cross(self, n: int) -> Floats:
        """The (n, n) matrix of the cost's mixed terms: for variables i != j, the cost of one bit more of
        both beyond one more of each alone (so cost(b + e_i - e_j) = cost + slope_i - slope_j - cross_ij)."""
        matrix = np.zeros((n, n))
        both = (self.first >= 0) & (self.second >= 0)
        np.add.at(matrix, (self.first[both], self.second[both]), self.coefficient[both])
        np.add.at(matrix, (self.second[both], self.first[both]), self.coefficient[both])
        return matrix


def _with_one(bits: Ints) -> Floats:
    return np.append(np.asarray(bits, dtype=np.float64), 1.0)


@dataclass(frozen=True)
class Candidate:
    """What removing a count of groups gives: the count actually removed (whole chunks may take fewer), the
    removal's estimated loss, every variable's estimated loss at each bit width (rows: variables; columns:
    0..32 bits, used inside the variable's range only) and the planning cost model."""

    removed: int
    removal_loss: float
    bit_loss: Floats
    cost: CostModel


class Problem(Protocol):
    """An allocation problem: variables with bit ranges [low, high], candidate counts, their planning
    models and the exact cost model of a count's compact model."""

    low: Ints
    high: Ints

    def counts(self) -> tuple[int, int]:
        """The fewest (forced) and the most groups that can be removed."""
        ...

    def candidate(self, count: int) -> Candidate:
        """The planning view of removing the first ``count`` groups."""
        ...

    def exact(self, count: int) -> CostModel:
        """The exact cost model of the compact model without the first ``count`` groups."""
        ...

    def recalibrate(self, count: int) -> bool:
        """Adjust planning after the exact check of ``count``; whether anything changed."""
        ...


@dataclass(frozen=True)
class Choice:
    """One count evaluated: the count asked for and the count removed, the bits, the cost and estimated loss."""

    count: int
    removed: int
    bits: tuple[int, ...]
    cost: float
    loss: float


@dataclass(frozen=True)
class Plan:
    """The result of :func:`allocate`: ``count`` groups removed (those of the problem's count ``asked``) and
    one width per variable. ``cost`` is the exact cost of the compact model (``planned_cost``
    the planning estimate of the same plan); ``least``: the planned cost with every removable group removed
    at the lowest bits; ``most``: the planned cost with nothing more removed at the top bits. ``status``:
    ``ok`` (cost in [0.98 B, B]), ``coarse`` (within B, but no plan closer), ``below_reach`` (B below even
    the least cost: the least-cost plan) or ``above_cost`` (B above the cost with nothing removed at the
    top bits)."""

    count: int
    asked: int
    bits: tuple[int, ...]
    planned_cost: float
    cost: float
    loss: float
    status: str
    least: float
    most: float
    exact_checks: int


@dataclass(frozen=True)
class Allocation:
    """The budget plan QASSO follows (``QASSO.allocation``), made at a pruning period start of the joint
    stage and final from the last one on (``final``).

    ``target`` names the budget (``target_rel_bops`` or ``target_size_bytes``) and ``budget`` is its
    value; ``removed_groups`` is the planned k (``QASSO.target_groups``); ``weight_bits`` / ``act_bits``
    give the planned width of each layer's weight / input quantizer by layer name (further activation
    quantizers, of residual adds, stay at their range top); ``planned`` and ``exact`` are the plan's cost
    in the budget's unit (rel. BOPs, or bytes) as planned and as the compact model has it exactly;
    ``estimated_loss`` is the plan's loss estimate; ``status`` one of ``Plan.status``."""

    target: str
    budget: float
    period: int
    final: bool
    removed_groups: int
    weight_bits: dict[str, int]
    act_bits: dict[str, int]
    planned: float
    exact: float
    estimated_loss: float
    status: str


def bit_loss_of(table: Floats, bits: Ints) -> float:
    """Sum of each variable's estimated loss at its width."""
    if not len(bits):
        return 0.0
    return float(table[np.arange(len(bits)), bits].sum())


def fit_bits(cost: CostModel, loss: Floats, low: Ints, high: Ints, budget: float, start: Ints | None = None,
             floor: float | None = None) -> Ints:
    """Bits within [low, high] for ``budget`` by the greedy rule: from ``start`` (default: every range
    top), lower the bit with the least loss increase per cost saved while the cost exceeds the budget, then
    raise the bit with the largest loss decrease per cost added while one fits. A variable that costs
    nothing is never lowered (and is raised whenever below its top). The cost may still exceed the budget
    when every costly variable is at its bottom. With ``floor``, a result under it then trades one bit up
    for one bit down where that lands in [floor, budget], the trade with the least loss increase (and
    raises back again)."""
    bits = np.array(high if start is None else np.clip(start, low, high), dtype=np.int64)
    rows = np.arange(len(bits))
    if not len(bits):
        return bits
    value = cost.cost(bits)
    while value > budget:
        slope = cost.slope(bits)
        able = (bits > low) & (slope > 0)
        if not able.any():
            break
        increase = np.maximum(loss[rows, np.maximum(bits - 1, 0)] - loss[rows, bits], 0.0)
        ratio = np.where(able, increase / np.where(able, slope, 1.0), np.inf)
        j = int(np.argmin(ratio))
        bits[j] -= 1
        value = cost.cost(bits)
    while True:
        slope = cost.slope(bits)
        fits = (bits < high) & (value + slope <= budget)
        if not fits.any():
            break
        gain = loss[rows, bits] - loss[rows, np.minimum(bits + 1, MAX_BITS)]
        ratio = np.where(slope > 0, gain / np.where(slope > 0, slope, 1.0), np.inf)
        j = int(np.argmax(np.where(fits, ratio, -np.inf)))
        bits[j] += 1
        value = cost.cost(bits)
    if floor is not None and value < floor:
        traded = _trade(cost, loss, low, high, bits, value, floor, budget)
        if traded is not None:
            return fit_bits(cost, loss, low, high, budget, start=traded)
    return bits


def _trade(cost: CostModel, loss: Floats, low: Ints, high: Ints, bits: Ints, value: float, floor: float,
           budget: float) -> Ints | None:
    """``bits`` with one variable a bit up and another a bit down, landing the cost in [floor, budget] at the
    least loss increase; None when no such trade exists."""
    n = len(bits)
    rows = np.arange(n)
    slope = cost.slope(bits)
    after = value + slope[:, None] - slope[None, :] - cost.cross(n)
    up = loss[rows, np.minimum(bits + 1, MAX_BITS)] - loss[rows, bits]
    down = loss[rows, np.maximum(bits - 1, 0)] - loss[rows, bits]
    able = ((bits < high)[:, None] & (bits > low)[None, :] & ~np.eye(n, dtype=bool)
            & (after >= floor) & (after <= budget))
    if not able.any():
        return None
    change = np.where(able, up[:, None] + down[None, :], np.inf)
    i, j = np.unravel_index(int(np.argmin(change)), change.shape)
    traded = bits.copy()
    traded[i] += 1
    traded[j] -= 1
    return traded


def allocate(problem: Problem, budget: float, *, window: float = WINDOW,
             max_exact_checks: int = MAX_EXACT_CHECKS) -> Plan:
    """The plan for ``budget`` (in the problem's cost units) by the module docstring's rule."""
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"budget={budget} must be a finite positive number")
    limit = budget * (1 - SAFETY)
    floor = budget * window
    low, high = problem.low, problem.high
    first, last = problem.counts()
    planned: dict[int, Choice] = {}

    def evaluate(count: int) -> Choice:
        if count not in planned:
            candidate = problem.candidate(count)
            bits = fit_bits(candidate.cost, candidate.bit_loss, low, high, limit, floor=floor)
            planned[count] = Choice(count, candidate.removed, tuple(int(b) for b in bits), candidate.cost.cost(bits),
                                    candidate.removal_loss + bit_loss_of(candidate.bit_loss, bits))
        return planned[count]

    def preference(choice: Choice) -> tuple[int, float, int]:
        if choice.cost <= limit:
            return (0 if choice.cost >= floor else 1), choice.loss, choice.removed
        return 2, choice.cost, -choice.removed

    def snap(bits: tuple[int, ...]) -> None:
        """The fewest groups with which ``bits`` fit (a binary search: fewer groups cost more), raised back."""
        fixed = np.array(bits, dtype=np.int64)
        if problem.candidate(last).cost.cost(fixed) > limit:
            return
        low_count, high_count = first, last
        while low_count < high_count:
            middle = (low_count + high_count) // 2
            if problem.candidate(middle).cost.cost(fixed) <= limit:
                high_count = middle
            else:
                low_count = middle + 1
        candidate = problem.candidate(low_count)
        raised = fit_bits(candidate.cost, candidate.bit_loss, low, high, limit, start=fixed, floor=floor)
        choice = Choice(low_count, candidate.removed, tuple(int(b) for b in raised), candidate.cost.cost(raised),
                        candidate.removal_loss + bit_loss_of(candidate.bit_loss, raised))
        if low_count not in planned or preference(choice) < preference(planned[low_count]):
            planned[low_count] = choice

    def search() -> list[Choice]:
        _search(evaluate, first, last, preference)
        feasible = sorted((c for c in planned.values() if c.cost <= limit), key=preference)
        for bits in list(dict.fromkeys(c.bits for c in feasible))[:SNAPPED]:
            snap(bits)
        return sorted(planned.values(), key=preference)

    least = problem.candidate(last).cost.cost(low)
    most = problem.candidate(first).cost.cost(high)
    checked: dict[int, tuple[Choice, Choice]] = {}  # removed count -> (planned, exact)
    ranking: list[Choice] = []
    for _ in range(max_exact_checks):
        if not planned:
            ranking = search()
        todo = next((choice for choice in ranking if choice.removed not in checked), None)
        if todo is None:
            break
        candidate = problem.candidate(todo.count)
        exact = problem.exact(todo.count)
        bits = fit_bits(exact, candidate.bit_loss, low, high, limit, start=np.array(todo.bits, dtype=np.int64),
                        floor=floor)
        result = Choice(todo.count, todo.removed, tuple(int(b) for b in bits), exact.cost(bits),
                        candidate.removal_loss + bit_loss_of(candidate.bit_loss, bits))
        checked[todo.removed] = (todo, result)
        if floor <= result.cost <= limit or (todo.cost > limit and result.cost > limit):
            break  # in the window, or nothing fits the budget, as planned or exactly
        if problem.recalibrate(todo.count):
            planned.clear()
    before, best = min(checked.values(), key=lambda pair: preference(pair[1]))
    if best.cost > limit:
        status = "below_reach"
    elif most < floor:
        status = "above_cost"
    elif best.cost < floor:
        status = "coarse"
    else:
        status = "ok"
    return Plan(best.removed, best.count, best.bits, before.cost, best.cost, best.loss, status, least, most,
                len(checked))


def _search(evaluate: Callable[[int], Choice], first: int, last: int, preference: Callable[[Choice], Any]) -> None:
    """Evaluate a grid of counts in [first, last], refined around the best until adjacent counts are evaluated."""
    low, high = first, last
    while True:
        counts = sorted({round(float(c)) for c in np.linspace(low, high, GRID_POINTS)})
        choices = [evaluate(c) for c in counts]
        if high - low <= GRID_POINTS - 1:
            break
        best = min(range(len(counts)), key=lambda i: preference(choices[i]))
        low, high = counts[max(best - 1, 0)], counts[min(best + 1, len(counts) - 1)]


# ---------------------------------------------------------------------------------------------- sensitivities


class _Inert:
    """What a probe becomes in a copy of the model (``construct_subnet``) or a pickle: nothing."""

    def __call__(self, *args: object) -> None:
        return None


class _OutputProbe:
    """Forward hook of an activation quantizer: adds sum(grad^2) at its output (where its input is not 0)
    to ``sums[index]`` during the backward pass."""

    def __init__(self, sums: Tensor, index: int) -> None:
        self.sums, self.index = sums, index

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...], output: object) -> None:
        if not (isinstance(output, Tensor) and output.requires_grad):
            return None
        source = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
        carries = source.detach() != 0 if source is not None and source.shape == output.shape else None
        sums, index = self.sums, self.index

        def record(grad: Tensor) -> None:
            with torch.no_grad():
                squared = grad.detach().float().square()
                if carries is not None:
                    squared = squared * carries
                sums[index] += squared.sum().to(sums.device)

        output.register_hook(record)
        return None

    def __deepcopy__(self, memo: dict[int, object]) -> _Inert:
        return _Inert()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return _Inert, ()


class _GradientProbe:
    """Tensor hook on a quantizer's d: adds the gradient each backward pass gives it (before any unscaling)."""

    def __init__(self, total: Tensor) -> None:
        self.total = total

    def __call__(self, grad: Tensor) -> None:
        with torch.no_grad():
            self.total += grad.detach().to(self.total.dtype)


class Sensitivities:
    """EMAs of squared gradients (see the module docstring): of each weight in ``weights``, element by
    element, and at the output of each of ``act_quantizers`` (summed). Hooks are registered on creation and
    removed by :meth:`close`; :meth:`update` folds in one usable step, :meth:`discard` drops a skipped one."""

    def __init__(self, weights: Sequence[Tensor], act_quantizers: Sequence[Quantizer],
                 decay: float = FISHER_DECAY) -> None:
        self.decay = decay
        self.weights = list(weights)
        # float32 at least (a half-precision EMA would lose its small increments); on the weights' devices
        self.weight_ema = [torch.zeros(w.shape, dtype=torch.promote_types(w.dtype, torch.float32), device=w.device)
                           for w in self.weights]
        self.act_quantizers = list(act_quantizers)
        device = self.act_quantizers[0].d.device if self.act_quantizers else torch.device("cpu")
        self.act_ema = torch.zeros(len(self.act_quantizers), dtype=torch.float32, device=device)
        self.steps = 0
        self._sums = torch.zeros_like(self.act_ema)
        self._probed = [q for q in self.act_quantizers if q.d.requires_grad]
        self._seen = [torch.zeros(q.d.shape, dtype=torch.float32, device=q.d.device) for q in self._probed]
        self._handles: list[RemovableHandle] = []
        for index, quantizer in enumerate(self.act_quantizers):
            self._handles.append(quantizer.register_forward_hook(_OutputProbe(self._sums, index)))
        for quantizer, seen in zip(self._probed, self._seen, strict=True):
            self._handles.append(quantizer.d.register_hook(_GradientProbe(seen)))

    @torch.no_grad()
    def update(self) -> None:
        """Fold this step's gradients in (call at a step whose gradients are usable, before the base step)."""
        keep = self.decay
        for weight, ema in zip(self.weights, self.weight_ema, strict=True):
            ema.mul_(keep)
            if weight.grad is not None:
                grad = weight.grad.detach().to(ema.dtype)
                ema.addcmul_(grad, grad, value=1 - keep)
        if self.act_quantizers:
            sums = self._sums.clone()
            seen = torch.cat([s.reshape(-1) for s in self._seen]) if self._seen else sums.new_zeros(0)
            world = _world_size()
            if world > 1:
                packed = torch.cat([sums, seen.to(sums.device)])
                torch.distributed.all_reduce(packed)
                sums, seen = packed[:len(sums)] / world**2, packed[len(sums):] / world
            grads = [q.d.grad.detach().reshape(-1).to(sums.device, torch.float32) if q.d.grad is not None
                     else sums.new_zeros(q.d.numel()) for q in self._probed]
            stepped = torch.cat(grads) if grads else sums.new_zeros(0)
            measured, applied = seen.to(sums.device).square().sum(), stepped.square().sum()
            # the gradients' squared scale as the hooks saw them (a GradScaler's), 1 without one
            scale = torch.where((measured > 0) & (applied > 0), measured / applied.clamp_min(1e-30),
                                torch.ones_like(measured))
            self.act_ema.mul_(keep).add_(sums / scale, alpha=1 - keep)
        self.steps += 1
        self.discard()

    @torch.no_grad()
    def discard(self) -> None:
        """Drop what the hooks gathered since the last step."""
        self._sums.zero_()
        for seen in self._seen:
            seen.zero_()

    def weight(self, index: int) -> Tensor:
        """The bias-corrected EMA of the squared gradient of ``weights[index]``."""
        return self.weight_ema[index] / self._correction()

    def activations(self) -> Floats:
        """The bias-corrected EMA of the summed squared gradient at each activation quantizer's output."""
        return np.asarray((self.act_ema / self._correction()).cpu().numpy(), dtype=np.float64)

    def _correction(self) -> float:
        return 1 - self.decay**self.steps if self.steps else 1.0

    def close(self) -> None:
        """Remove every hook; the EMAs stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def state_dict(self) -> dict[str, Any]:
        """The EMAs and the step count (what the hooks gathered since the last step is not kept)."""
        return {"weight_ema": [e.clone() for e in self.weight_ema], "act_ema": self.act_ema.clone(),
                "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["weight_ema"]) != len(self.weight_ema) or len(state["act_ema"]) != len(self.act_ema):
            raise GetaError("the checkpoint's sensitivities are of another model")
        for ema, saved in zip(self.weight_ema, state["weight_ema"], strict=True):
            ema.copy_(saved)
        self.act_ema.copy_(state["act_ema"])
        self.steps = int(state["steps"])
        self.discard()


def _world_size() -> int:
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return int(distributed.get_world_size())
    return 1


# ---------------------------------------------------------------------------------------------- the model's problem


class ModelProblem:
    """The allocation problem of a model at one point of training (see the module docstring).

    Variables are ``weight_quantizers`` then ``act_quantizers`` (ranges ``weight_bits`` / ``act_bits``);
    ``order`` ranks every group (the ``forced`` already pruned ones first); ``dense`` is the model's MAC
    count on ``inputs``. Cost units: BOPs for ``rel_bops``, bits for ``size_bytes``."""

    def __init__(
        self,
        *,
        model: nn.Module,
        space: SearchSpace,
        layers: Sequence[QuantizableLayer],
        weight_quantizers: Sequence[Quantizer],
        act_quantizers: Sequence[Quantizer],
        weight_bits: tuple[int, int],
        act_bits: tuple[int, int],
        sensitivities: Sensitivities,
        order: Tensor,
        forced: int,
        round_to: int,
        kind: BudgetKind,
        dense: MacCount,
        inputs: ExampleInputs,
    ) -> None:
        self.model, self.space, self.layers = model, space, list(layers)
        self.kind, self.dense, self.inputs = kind, dense, inputs
        self.order = torch.as_tensor(order, dtype=torch.long).cpu()
        self.forced, self.round_to = int(forced), int(round_to)
        self.variables: list[Quantizer] = list(weight_quantizers) + list(act_quantizers)
        self.var_of = {id(q): i for i, q in enumerate(self.variables)}
        count_w = len(weight_quantizers)
        self.low = np.array([weight_bits[0]] * count_w + [act_bits[0]] * len(act_quantizers), dtype=np.int64)
        self.high = np.array([weight_bits[1]] * count_w + [act_bits[1]] * len(act_quantizers), dtype=np.int64)
        self._other: dict[int, float] = {}  # measured MACs outside layers, by count removed
        self._masks: dict[int, Tensor] = {}
        self._views: dict[int, tuple[int, float, Floats, Floats, Floats]] = {}
        self._exact: dict[int, tuple[CostModel, float]] = {}
        self._range: tuple[int, int] | None = None
        self._sequence: Tensor | None = None  # round_to 1: the groups select takes, in the order it takes them
        self._dims(space)
        fisher = {id(w): sensitivities.weight(i) for i, w in enumerate(sensitivities.weights)}
        self._group_loss = self._removal_losses(fisher)
        self._weight_tables(fisher)
        self._act_tables(sensitivities, act_quantizers)
        self._cost_structure()

    # ------------------------------------------------------------------ set-up

    def _dims(self, space: SearchSpace) -> None:
        """Every cut tensor dimension (by tensor identity and dim) with its size, and each member's."""
        keys: dict[tuple[int, int], int] = {}
        sizes: list[int] = []
        self._member_dim: list[int] = []
        for member in space.members:
            key = (id(member.tensor), member.dim)
            if key not in keys:
                keys[key] = len(sizes)
                sizes.append(int(member.tensor.shape[member.dim]))
            self._member_dim.append(keys[key])
        self._dim_keys = keys
        self._dim_size = np.array(sizes, dtype=np.float64)

    def _cut_dims(self, tensor: Tensor) -> list[int]:
        return [k for (tensor_id, _), k in self._dim_keys.items() if tensor_id == id(tensor)]

    def _removal_losses(self, fisher: dict[int, Tensor]) -> Floats:
        """Per group: 1/2 sum F W^2 over its trainable slices."""
        losses = torch.zeros(self.space.count, dtype=torch.float64)
        for member in self.space.members:
            f = fisher.get(id(member.tensor))
            if not member.trainable or f is None:
                continue
            values = (f * member.tensor.detach().to(f.dtype) ** 2 / 2).to(torch.float64)
            per_position = _per_position(values, member.dim)
            losses.index_add_(0, member.groups, per_position[member.positions])
        return np.asarray(losses.numpy(), dtype=np.float64)

    def _weight_tables(self, fisher: dict[int, Tensor]) -> None:
        """Per weight variable and width: 1/2 sum F (W - Q_b W)^2 in all, and each removable position's share."""
        variables = len(self.variables)
        self._base_loss = np.full((variables, MAX_BITS + 1), np.inf)
        self._weight_parts: list[tuple[int, Ints, Floats]] = []  # (variable, groups, losses per row and width)
        tensors: dict[int, list[Tensor]] = {}
        for layer in self.layers:
            if layer.weight_quantizer is not None:
                listed = tensors.setdefault(self.var_of[id(layer.weight_quantizer)], [])
                listed.extend(w for w in layer.weights() if all(w is not v for v in listed))
        quantizer_of = dict(enumerate(self.variables))
        members_of: dict[int, list[int]] = {}
        for k, member in enumerate(self.space.members):
            if member.trainable:
                members_of.setdefault(id(member.tensor), []).append(k)
        for var in range(variables):
            self._base_loss[var, self.low[var]:self.high[var] + 1] = 0.0
        for var, weights in tensors.items():
            quantizer = quantizer_of[var]
            low, high = int(self.low[var]), int(self.high[var])
            widths = range(low, high + 1)
            for weight in weights:
                f = fisher.get(id(weight))
                if f is None:
                    continue
                errors = [_error(weight, quantizer, b) * f / 2 for b in widths]
                for j, b in enumerate(widths):
                    self._base_loss[var, b] += float(errors[j].sum())
                for k in members_of.get(id(weight), []):
                    member = self.space.members[k]
                    table = np.zeros((len(member.positions), MAX_BITS + 1))
                    for j, b in enumerate(widths):
                        table[:, b] = _per_position(errors[j].to(torch.float64), member.dim)[member.positions].numpy()
                    self._weight_parts.append((var, member.groups.numpy().astype(np.int64), table))

    def _act_tables(self, sensitivities: Sensitivities, act_quantizers: Sequence[Quantizer]) -> None:
        """Per activation variable and width: 1/2 A d(b)^2 / 12 (scaled by the layer's kept MACs per count)."""
        sums = sensitivities.activations() if len(act_quantizers) else np.zeros(0)
        index = {id(q): i for i, q in enumerate(sensitivities.act_quantizers)}
        for quantizer in act_quantizers:
            var = self.var_of[id(quantizer)]
            a = float(sums[index[id(quantizer)]]) if id(quantizer) in index else 0.0
            for b in range(int(self.low[var]), int(self.high[var]) + 1):
                step = quantizer.step_for_bits(float(b)).to(torch.float64)
                self._base_loss[var, b] = a * float(step.square().mean()) / 24

    def _cost_structure(self) -> None:
        """Planning terms: per layer (BOPs) or per parameter (size), with their cut dimensions."""
        self._layer_dims: list[list[tuple[float, list[int]]]] = []  # per layer: (share, cut dims) per weight
        for layer in self.layers:
            weights = layer.weights()
            total = sum(w.numel() for w in weights) or 1
            self._layer_dims.append([(w.numel() / total, self._cut_dims(w)) for w in weights])
        # per activation variable: its readers (a residual stream's shared quantizer has several) and their
        # shares of its dense MACs, which weigh their kept fractions
        readers: dict[int, list[int]] = {}
        for i, layer in enumerate(self.layers):
            if layer.input_quantizer is not None and id(layer.input_quantizer) in self.var_of:
                readers.setdefault(self.var_of[id(layer.input_quantizer)], []).append(i)
        self._act_readers: dict[int, tuple[Ints, Floats]] = {}
        for var, indices in readers.items():
            macs = np.array([self.dense.per_layer.get(self.layers[i].name, 0.0) for i in indices], dtype=np.float64)
            share = macs / macs.sum() if macs.sum() > 0 else np.full(len(indices), 1 / len(indices))
            self._act_readers[var] = (np.array(indices, dtype=np.int64), share)
        if self.kind == "rel_bops":
            first, second, scale = [], [], []
            for layer in self.layers:
                w = self._variable(layer.weight_quantizer)
                a = self._variable(layer.input_quantizer)
                first.append(w)
                second.append(a)
                scale.append(self.dense.per_layer.get(layer.name, 0.0) * (FULL_PRECISION_BITS if w < 0 else 1)
                             * (FULL_PRECISION_BITS if a < 0 else 1))
            self._first, self._second = np.array(first, dtype=np.int64), np.array(second, dtype=np.int64)
            self._scale = np.array(scale, dtype=np.float64)
        else:
            quantized = {id(w): self._variable(layer.weight_quantizer) for layer in self.layers for w in layer.weights()
                         if layer.weight_quantizer is not None}
            skip = quantizer_parameter_ids(self.model)
            params = [p for p in self.model.parameters() if id(p) not in skip]
            self._param_dims = [self._cut_dims(p) for p in params]
            self._first = np.array([quantized.get(id(p), -1) for p in params], dtype=np.int64)
            self._second = np.full(len(params), -1, dtype=np.int64)
            self._scale = np.array([p.numel() * (1 if id(p) in quantized else p.element_size() * 8) for p in params],
                                   dtype=np.float64)

    def _variable(self, quantizer: Quantizer | None) -> int:
        return self.var_of.get(id(quantizer), -1) if quantizer is not None else -1

    # ------------------------------------------------------------------ the protocol

    def counts(self) -> tuple[int, int]:
        if self._range is None:
            total = len(self.order)
            if self.round_to > 1:
                most = int(self.removed(total).sum())  # whole chunks: the most they allow, no error
            else:
                most = self._most(total)
                # select takes groups greedily in order, so its choice of any count is the first that many
                # of its choice of the most (every subset of a removable set is removable)
                taken = self.removed(most)
                self._sequence = self.order[taken[self.order]]
            self._range = (min(self.forced, most), most)
        return self._range

    def _most(self, total: int) -> int:
        """The most groups ``select`` can take in order (round_to 1): its error names the count, checked."""
        try:
            self.removed(total)
            return total
        except GetaError as error:
            named = re.search(r"only (\d+) of", str(error))
        if named is not None:
            count = int(named.group(1))
            if self._can_remove(count) and not self._can_remove(count + 1):
                return count
        low, high = self.forced, total  # a binary search, should the error say otherwise
        while low < high:
            middle = (low + high + 1) // 2
            if self._can_remove(middle):
                low = middle
            else:
                high = middle - 1
        return low

    def _can_remove(self, count: int) -> bool:
        try:
            self.removed(count)
            return True
        except GetaError:
            return False

    def removed(self, count: int) -> Tensor:
        """The groups removed for ``count`` (bool per group): ``space.select(order, count, round_to)``."""
        if count not in self._masks:
            if self._sequence is not None and count <= len(self._sequence):
                mask = torch.zeros(self.space.count, dtype=torch.bool)
                mask[self._sequence[:count]] = True
            else:
                mask = self.space.select(self.order, count, self.round_to)
            self._masks[count] = mask
        return self._masks[count]

    def candidate(self, count: int) -> Candidate:
        removed, removal_loss, layer_kept, param_kept, weight_removed = self._view(count)
        table = self._base_loss.copy()
        table -= weight_removed
        np.maximum(table, 0.0, out=table)
        for var, (indices, share) in self._act_readers.items():
            span = slice(int(self.low[var]), int(self.high[var]) + 1)
            table[var, span] = self._base_loss[var, span] * float(share @ layer_kept[indices])
        if self.kind == "rel_bops":
            cost = CostModel(self._other_macs(removed) * FULL_PRECISION_BITS**2, self._scale * layer_kept,
                             self._first, self._second)
        else:
            cost = CostModel(0.0, self._scale * param_kept, self._first, self._second)
        return Candidate(removed, removal_loss, table, cost)

    def _view(self, count: int) -> tuple[int, float, Floats, Floats, Floats]:
        """What ``count`` removes: its size, loss, the layers' kept MAC fractions, the parameters' kept element
        fractions and the weight variables' losses that leave with it (per width)."""
        if count not in self._views:
            mask = self.removed(count)
            kept = 1 - self._removed_positions(mask) / np.maximum(self._dim_size, 1)
            layer_kept = np.array([sum(share * float(np.prod(kept[dims])) for share, dims in weights)
                                   for weights in self._layer_dims], dtype=np.float64)
            param_kept = np.array([float(np.prod(kept[dims])) for dims in getattr(self, "_param_dims", [])],
                                  dtype=np.float64)
            chosen = mask.numpy()
            gone = np.zeros_like(self._base_loss)
            for var, groups, table in self._weight_parts:
                rows = chosen[groups]
                if rows.any():
                    gone[var] += table[rows].sum(0)
            removal = float(self._group_loss[chosen].sum())
            self._views[count] = (int(chosen.sum()), removal, layer_kept, param_kept, gone)
        return self._views[count]

    def _removed_positions(self, mask: Tensor) -> Floats:
        """Per cut dimension: how many of its positions the groups in ``mask`` take."""
        taken = [np.zeros(int(size), dtype=bool) for size in self._dim_size]
        for member, dim in zip(self.space.members, self._member_dim, strict=True):
            taken[dim][member.positions[mask[member.groups]].numpy()] = True
        return np.array([t.sum() for t in taken], dtype=np.float64)

    def exact(self, count: int) -> CostModel:
        if count not in self._exact:
            mask = self.removed(count)
            compact = self.model
            if bool(mask.any()):
                compact = construct_subnet(self.model, self.space, mask, share_unchanged=True)
            self._exact[count] = self._exact_cost(compact)
        return self._exact[count][0]

    def _exact_cost(self, compact: nn.Module) -> tuple[CostModel, float]:
        """The cost model of ``compact`` (a copy of the model, same layer names) and its MACs outside layers."""
        modules = dict(compact.named_modules())
        if self.kind == "rel_bops":
            macs = count_macs(compact, self.inputs, model_layers(compact)) if compact is not self.model else self.dense
            scale = [macs.per_layer.get(layer.name, 0.0) * (FULL_PRECISION_BITS if w < 0 else 1)
                     * (FULL_PRECISION_BITS if a < 0 else 1)
                     for layer, w, a in zip(self.layers, self._first.tolist(), self._second.tolist(), strict=True)]
            model = CostModel(macs.other * FULL_PRECISION_BITS**2, np.array(scale, dtype=np.float64), self._first,
                              self._second)
            return model, macs.other
        quantized: dict[int, int] = {}
        for layer in self.layers:
            var = self._variable(layer.weight_quantizer)
            if var >= 0 and layer.name in modules:
                for name in layer.weight_names:
                    quantized[id(original_parameter(modules[layer.name], name))] = var
        skip = quantizer_parameter_ids(compact)
        constant, scale_list, first = 0.0, [], []
        for p in compact.parameters():
            if id(p) in skip:
                continue
            if id(p) in quantized:
                scale_list.append(float(p.numel()))
                first.append(quantized[id(p)])
            else:
                constant += p.numel() * p.element_size() * 8
        firsts = np.array(first, dtype=np.int64)
        return CostModel(constant, np.array(scale_list, dtype=np.float64), firsts, np.full(len(firsts), -1)), 0.0

    def recalibrate(self, count: int) -> bool:
        """Add the MACs outside layers measured on ``count``'s compact model to those planning interpolates."""
        if self.kind != "rel_bops" or not self.dense.other or count not in self._exact:
            return False
        removed = self._view(count)[0]
        measured = self._exact[count][1]
        before = self._other_macs(removed)
        self._other[removed] = measured
        return abs(measured - before) > 1e-9 * self.dense.other

    def _other_macs(self, removed: int) -> float:
        """The planning value of the MACs outside layers with ``removed`` groups gone: the dense count until
        compact models are measured, then interpolated (linearly in the count) between the measured counts
        (and the dense count at 0), held at the last one beyond it."""
        if not self._other or not self.dense.other:
            return self.dense.other
        points = sorted({0: self.dense.other, **self._other}.items())
        counts = np.array([c for c, _ in points], dtype=np.float64)
        values = np.array([v for _, v in points], dtype=np.float64)
        return float(np.interp(removed, counts, values))


def _per_position(values: Tensor, dim: int) -> Tensor:
    """Sums of ``values`` over every dimension but ``dim`` (on the CPU)."""
    moved = values.movedim(dim, 0)
    return moved.reshape(moved.shape[0], -1).sum(1).to("cpu", torch.float64)


@torch.no_grad()
def _error(weight: Tensor, quantizer: Quantizer, bits: int) -> Tensor:
    """(W - Q_b W)^2 elementwise: ``weight`` quantized at ``bits`` bits at the quantizer's current q_m and t."""
    _, q_m, t = quantizer.constrained_parameters()
    d = step_for_bits(float(bits), q_m, t, signed=quantizer.signed)
    w = weight.detach()
    if quantizer.axis is not None:
        shape = [1] * w.dim()
        shape[quantizer.axis] = -1
        d, q_m, t = d.reshape(shape), q_m.reshape(shape), t.reshape(shape)
    quantized = quantize_reference(w, d.to(w.dtype), q_m.to(w.dtype), t.to(w.dtype), signed=quantizer.signed)
    return (w - quantized) ** 2

