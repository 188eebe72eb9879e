"""A cost budget as QASSO's target (``geta.optim.allocation``): the allocation rule as properties over small
synthetic problems, and end-to-end runs on tiny models whose compact model ends at the budget."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import geta
from geta.errors import ConfigError
from geta.metrics.cost import count_macs
from geta.metrics.report import model_layers
from geta.optim.allocation import (
    MAX_EXACT_CHECKS,
    WINDOW,
    Candidate,
    CostModel,
    ModelProblem,
    allocate,
    fit_bits,
)
from geta.optim.qasso import QASSO
from geta.pruning.subnet import construct_subnet
from geta.quant.kernel import set_fused_kernel

MAX_BITS = 32


# ---------------------------------------------------------------------------------------------- synthetic problems


class Synthetic:
    """Layers with MACs, a weight variable each and optionally an activation variable (else 32 bits); groups
    that each remove a share of one layer's MACs, taken in index order; variable j loses s_j 4^-b at b bits
    (uniform rounding noise) times its layer's kept share. ``other`` MACs outside layers shrink by
    ``shrink`` x the removed share in the exact count (planning counts them dense)."""

    def __init__(self, macs: list[float], sensitivity: list[float], act: list[float | None], groups: list[int],
                 shares: list[float], removal: list[float], weight_bits: tuple[int, int], act_bits: tuple[int, int],
                 other: float = 0.0, shrink: float = 0.0) -> None:
        self.macs, self.groups, self.shares, self.removal = np.array(macs), groups, shares, removal
        self.other, self.shrink = other, shrink
        self.sens = list(sensitivity) + [a for a in act if a is not None]
        self.act_var = []
        index = len(macs)
        for a in act:
            self.act_var.append(index if a is not None else -1)
            index += a is not None
        self.layer_of_var = list(range(len(macs))) + [i for i, a in enumerate(act) if a is not None]
        count_w, count_a = len(macs), index - len(macs)
        self.low = np.array([weight_bits[0]] * count_w + [act_bits[0]] * count_a, dtype=np.int64)
        self.high = np.array([weight_bits[1]] * count_w + [act_bits[1]] * count_a, dtype=np.int64)
        self.checks = 0

    def counts(self) -> tuple[int, int]:
        return 0, len(self.groups)

    def kept(self, count: int) -> np.ndarray:
        kept = np.ones(len(self.macs))
        for g in range(count):
            kept[self.groups[g]] -= self.shares[g]
        return np.maximum(kept, 0.0)

    def _cost(self, count: int, other: float) -> CostModel:
        second = np.array(self.act_var, dtype=np.int64)
        scale = self.macs * self.kept(count) * np.where(second < 0, 32.0, 1.0)
        return CostModel(other * 1024, scale, np.arange(len(self.macs), dtype=np.int64), second)

    def candidate(self, count: int) -> Candidate:
        kept = self.kept(count)
        table = np.full((len(self.sens), MAX_BITS + 1), np.inf)
        for j, s in enumerate(self.sens):
            for b in range(int(self.low[j]), int(self.high[j]) + 1):
                table[j, b] = s * 4.0 ** (-b) * kept[self.layer_of_var[j]]
        return Candidate(count, float(sum(self.removal[:count])), table, self._cost(count, self.other))

    def exact(self, count: int) -> CostModel:
        self.checks += 1
        removed_share = count / max(len(self.groups), 1)
        return self._cost(count, self.other * (1 - self.shrink * removed_share))

    def recalibrate(self, count: int) -> bool:
        return False


@st.composite
def problems(draw: st.DrawFn) -> tuple[Synthetic, float]:
    layers = draw(st.integers(1, 4))
    macs = draw(st.lists(st.floats(1, 1000), min_size=layers, max_size=layers))
    sensitivity = draw(st.lists(st.floats(0, 1e4), min_size=layers, max_size=layers))
    act = draw(st.lists(st.one_of(st.none(), st.floats(0, 1e4)), min_size=layers, max_size=layers))
    groups = draw(st.lists(st.integers(0, layers - 1), max_size=12))
    shares = [draw(st.floats(0.01, 0.2)) for _ in groups]
    removal = [draw(st.floats(0, 10)) for _ in groups]
    low = draw(st.integers(2, 8))
    weight_bits = (low, low + draw(st.integers(0, 4)))
    low = draw(st.integers(2, 8))
    act_bits = (low, low + draw(st.integers(0, 4)))
    other = draw(st.sampled_from([0.0, 10.0, 100.0]))
    shrink = draw(st.sampled_from([0.0, 0.5]))
    problem = Synthetic(macs, sensitivity, act, groups, shares, removal, weight_bits, act_bits, other, shrink)
    least = problem.exact(len(groups)).cost(problem.low)
    most = problem.exact(0).cost(problem.high)
    problem.checks = 0
    budget = draw(st.floats(0.5, 1.2)) * draw(st.sampled_from([least, most, (least + most) / 2]))
    return problem, max(budget, 1e-6)


@settings(max_examples=150, deadline=None)
@given(case=problems())
def test_a_plan_is_never_above_the_budget_and_keeps_every_range(case: tuple[Synthetic, float]) -> None:
    problem, budget = case
    plan = allocate(problem, budget)
    bits = np.array(plan.bits, dtype=np.int64)
    assert ((problem.low <= bits) & (bits <= problem.high)).all()
    exact = problem.exact(plan.count)
    assert plan.cost == pytest.approx(exact.cost(bits), rel=1e-12)
    least = problem.exact(problem.counts()[1]).cost(problem.low)
    if least <= budget * (1 - 1e-9):
        assert plan.cost <= budget and plan.status != "below_reach"
    else:
        assert plan.status == "below_reach" and plan.count == problem.counts()[1]
    if plan.status == "ok":
        assert WINDOW * budget <= plan.cost <= budget
    assert plan.exact_checks <= MAX_EXACT_CHECKS


@settings(max_examples=100, deadline=None)
@given(case=problems(), low=st.floats(1e-3, 10), factor=st.floats(1.5, 1e3))
def test_a_more_sensitive_twin_layer_never_ends_at_fewer_bits(case: tuple[Synthetic, float], low: float,
                                                               factor: float) -> None:
    """Two weight-only layers alike in everything but sensitivity: the more sensitive one keeps at least as many
    bits, whatever the rest of the problem is."""
    problem, budget = case
    twins = Synthetic(
        [*problem.macs.tolist(), 300.0, 300.0], [*problem.sens[:len(problem.macs)], low, low * factor],
        [problem.sens[v] if v >= 0 else None for v in problem.act_var] + [None, None], problem.groups,
        problem.shares, problem.removal, (int(problem.low[0]), int(problem.high[0])),
        (2, 8) if len(problem.low) == len(problem.macs) else (int(problem.low[-1]), int(problem.high[-1])),
        problem.other, problem.shrink,
    )
    plan = allocate(twins, budget + 300 * 32 * 2 * 6)
    layers = len(problem.macs)
    assert plan.bits[layers] <= plan.bits[layers + 1]


def test_layers_of_different_sensitivity_end_at_different_widths() -> None:
    """Equal MACs, sensitivities 1 and 10^4: the budget of one layer at 2 bits and the other at 8 is met exactly
    by lowering the insensitive one alone."""
    problem = Synthetic([100.0, 100.0], [1.0, 1e4], [None, None], [], [], [], (2, 8), (2, 8))
    budget = 100 * 32 * (2 + 8)
    plan = allocate(problem, budget * (1 + 1e-8))
    assert plan.bits == (2, 8) and plan.status == "ok"


def test_fine_groups_reach_the_window() -> None:
    """Many small groups: the search over counts lands in [0.98 B, B] where bits alone cannot."""
    groups = [0, 1] * 40
    problem = Synthetic([500.0, 700.0], [1.0, 5.0], [2.0, None], groups, [0.01] * 80, [0.01] * 80, (4, 8), (4, 8))
    for budget in np.linspace(0.3, 0.95, 8) * problem.exact(0).cost(problem.high):
        plan = allocate(problem, float(budget))
        assert plan.status == "ok" and WINDOW * budget <= plan.cost <= budget, (budget, plan)


def test_exact_costs_below_the_plan_are_filled_by_raising_bits() -> None:
    """Planning counts the MACs outside layers dense; the exact check gives back what they shrank as bits."""
    problem = Synthetic([1000.0], [1.0], [1.0], [0] * 10, [0.05] * 10, [1.0] * 10, (2, 8), (2, 8), other=30.0,
                        shrink=0.9)
    budget = problem.exact(0).cost(problem.high) * 0.2
    plan = allocate(problem, budget)
    assert plan.cost <= budget and plan.cost <= plan.planned_cost


def test_fit_bits_lowers_the_cheapest_loss_per_cost_then_raises_back() -> None:
    cost = CostModel(0.0, np.array([10.0, 10.0]), np.array([0, 1]), np.array([-1, -1]))
    loss = np.full((2, MAX_BITS + 1), np.inf)
    loss[0, 2:9] = [4.0**-b for b in range(2, 9)]
    loss[1, 2:9] = [1e4 * 4.0**-b for b in range(2, 9)]
    bits = fit_bits(cost, loss, np.array([2, 2]), np.array([8, 8]), budget=10 * (3 + 8))
    assert bits.tolist() == [3, 8]
    free = CostModel(0.0, np.array([10.0]), np.array([0]), np.array([-1]))  # variable 1 costs nothing
    assert fit_bits(free, loss, np.array([2, 2]), np.array([8, 8]), budget=25).tolist() == [2, 8]


# ---------------------------------------------------------------------------------------------- end to end


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 3))


class Branches(nn.Module):
    """main(x) + 0.05 side(x): two layers alike in shape and MACs, the side one's output weighed 20x less."""

    def __init__(self) -> None:
        super().__init__()
        self.main, self.side = nn.Linear(24, 24), nn.Linear(24, 24)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x) + 0.05 * self.side(x)


def _branched() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), Branches(), nn.ReLU(), nn.Linear(24, 3))


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4),
    )


def _data(shape: tuple[int, ...], count: int, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=generator), torch.randint(0, 3, (shape[0],), generator=generator))
            for _ in range(count)]


def _train(g: geta.GETA, opt: QASSO, data: list[tuple[Tensor, Tensor]]) -> None:
    g.model.train()
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(g.model(x), y).backward()
        opt.step()


def _run(model: nn.Module, example: Tensor, quantize: str, steps: int = 40, **target: float) -> tuple[geta.GETA, QASSO]:
    g = geta.GETA(model, example, quantize=quantize)
    opt = g.qasso("sgd", lr=0.05, momentum=0.9, lr_quant=1e-3, total_steps=steps, **target)
    _train(g, opt, _data(tuple(example.shape), steps))
    return g, opt


def _check_final(g: geta.GETA, opt: QASSO, model: nn.Module, example: Tensor) -> geta.Report:
    """The compact model holds the plan: its bits are the planned ones, inside the ranges, its groups the pruned."""
    allocation = opt.allocation
    assert allocation is not None and allocation.final and opt.finished
    assert torch.equal(g.groups.zero_mask(), opt.pruned) and int(opt.pruned.sum()) == allocation.removed_groups
    compact = g.construct_subnet()
    report = geta.report(compact, example, dense=model)
    for row in report.layers:
        if row.name in allocation.weight_bits:
            assert row.weight_bits == allocation.weight_bits[row.name]
            assert opt.config.weight_bits[0] <= row.weight_bits <= opt.config.weight_bits[1]
        if row.name in allocation.act_bits:
            assert row.act_bits == allocation.act_bits[row.name]
            assert opt.config.act_bits[0] <= row.act_bits <= opt.config.act_bits[1]
    assert report.rel_bops == pytest.approx(opt.metrics().rel_bops, rel=1e-12)
    for quantizer in opt.act_quantizers:  # the sensitivity hooks are gone
        assert not quantizer._forward_hooks and not quantizer.d._backward_hooks
    return report


@pytest.mark.parametrize(("quantize", "target"), [("weights", 0.06), ("weights+activations", 0.03)])
def test_an_mlp_ends_at_the_requested_rel_bops(quantize: str, target: float) -> None:
    model = _mlp()
    example = torch.randn(16, 12)
    g, opt = _run(model, example, quantize, target_rel_bops=target)
    report = _check_final(g, opt, model, example)
    assert WINDOW * target <= report.rel_bops <= target
    assert opt.allocation is not None and opt.allocation.exact == pytest.approx(report.rel_bops, rel=1e-12)
    assert opt.metrics().group_sparsity == g.group_sparsity()


@pytest.mark.parametrize(("quantize", "target"), [("weights", 0.07), ("weights+activations", 0.02)])
def test_a_small_conv_net_ends_at_the_requested_rel_bops(quantize: str, target: float) -> None:
    model = _cnn()
    example = torch.randn(8, 3, 8, 8)
    g, opt = _run(model, example, quantize, target_rel_bops=target)
    report = _check_final(g, opt, model, example)
    assert WINDOW * target <= report.rel_bops <= target


def test_layers_that_matter_less_get_fewer_bits() -> None:
    """Two layers of equal shape and MACs side by side, one's output weighed 20x less: its squared gradients are
    400x smaller, so the plan gives it fewer bits, weights and input alike."""
    model = _branched()
    example = torch.randn(16, 12)
    g, opt = _run(model, example, "weights+activations", steps=60, target_rel_bops=0.03)
    report = _check_final(g, opt, model, example)
    assert WINDOW * 0.03 <= report.rel_bops <= 0.03
    assert opt.allocation is not None
    weights, acts = opt.allocation.weight_bits, opt.allocation.act_bits
    assert weights["2.side"] < weights["2.main"] and acts["2.side"] < acts["2.main"], (weights, acts)


def test_a_size_budget_is_met_in_bytes() -> None:
    model = _mlp()
    example = torch.randn(16, 12)
    dense_bytes = geta.report(model, example).size_bytes
    target = 0.12 * dense_bytes
    g, opt = _run(model, example, "weights+activations", target_size_bytes=target)
    report = _check_final(g, opt, model, example)
    assert WINDOW * target <= report.size_bytes <= target
    assert opt.allocation is not None and opt.allocation.exact == pytest.approx(report.size_bytes, rel=1e-12)
    assert set(opt.allocation.act_bits.values()) == {8}  # activations cost no bytes: they stay at the top


def test_budgets_out_of_reach_warn_and_end_at_the_nearest_end() -> None:
    model = _mlp()
    example = torch.randn(16, 12)
    with pytest.warns(UserWarning, match="below what removing every removable group at the lowest bits"):
        g, opt = _run(model, example, "weights", target_rel_bops=0.001)
    report = geta.report(g.construct_subnet(), example, dense=model)
    assert report.rel_bops > 0.001 and {r.weight_bits for r in report.layers} == {4}
    with pytest.warns(UserWarning, match="above the cost with no \\(more\\) groups removed"):
        g, opt = _run(model, example, "weights", target_rel_bops=1.0)
    assert g.group_sparsity() == 0.0 and set((opt.allocation.weight_bits if opt.allocation else {}).values()) == {8}


def test_a_sparsity_run_has_no_budget_state_or_hooks() -> None:
    g = geta.GETA(_mlp(), torch.randn(16, 12), quantize="weights+activations")
    opt = g.qasso("sgd", lr=0.05, total_steps=20, target_sparsity=0.25)
    assert opt._sensitivity is None and opt.allocation is None
    assert all(not q._forward_hooks and not q.d._backward_hooks for q in opt.act_quantizers)
    assert "budget" not in opt.state_dict()["qasso"]


def _run_with_checkpoint(interrupt: int | None, steps: int = 40) -> tuple[list[Tensor], object]:
    model = _mlp()
    example = torch.randn(16, 12, generator=torch.Generator().manual_seed(3))
    data = _data(tuple(example.shape), steps)

    def fresh() -> tuple[geta.GETA, QASSO]:
        g = geta.GETA(model, example, quantize="weights+activations")
        return g, g.qasso("sgd", lr=0.05, momentum=0.9, lr_quant=1e-3, total_steps=steps, target_rel_bops=0.03)

    g, opt = fresh()
    for step, batch in enumerate(data):
        if step == interrupt:
            buffer = io.BytesIO()
            torch.save({"model": g.model.state_dict(), "opt": opt.state_dict()}, buffer)
            buffer.seek(0)
            checkpoint = torch.load(buffer)
            g, opt = fresh()
            g.model.load_state_dict(checkpoint["model"])
            opt.load_state_dict(checkpoint["opt"])
        _train(g, opt, [batch])
    return [t.detach().clone() for t in g.model.state_dict().values()], opt.allocation


@pytest.mark.parametrize("interrupt", [7, 20, 30])  # projection, joint (between plans), cool-down (plan final)
def test_a_budget_run_resumes_bit_for_bit(interrupt: int) -> None:
    uninterrupted, plan = _run_with_checkpoint(None)
    resumed, resumed_plan = _run_with_checkpoint(interrupt)
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted, resumed, strict=True)) and plan == resumed_plan


def test_activation_sensitivities_are_unscaled_under_a_grad_scaler() -> None:
    """A GradScaler's scale (a power of two) reaches the activations' gradients but not the optimizer's
    .grad: the sums are unscaled by the scale measured on the quantizers' d."""
    sums = []
    for scale in (None, 2.0**12):
        g = geta.GETA(_mlp(), torch.randn(16, 12), quantize="weights+activations")
        opt = g.qasso("sgd", lr=0.05, total_steps=40, target_rel_bops=0.03)
        scaler = torch.amp.GradScaler("cpu", init_scale=scale) if scale else None
        for x, y in _data((16, 12), 5):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(g.model(x), y)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
        assert opt._sensitivity is not None
        sums.append(opt._sensitivity.activations())
    assert (sums[0] > 0).all()
    np.testing.assert_allclose(sums[1], sums[0], rtol=1e-4)


def test_budget_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="exactly one of"):
        geta.GETA(_mlp(), torch.randn(4, 12)).qasso(lr=0.1, total_steps=10, target_sparsity=0.5, target_rel_bops=0.1)
    g = geta.GETA(nn.Sequential(nn.BatchNorm1d(12)), torch.randn(4, 12), quantize="none")
    with pytest.raises(ConfigError, match="needs MACs"):
        g.qasso(lr=0.1, total_steps=10, target_rel_bops=0.1)


def _problem(g: geta.GETA, opt: QASSO, order: Tensor, kind: str) -> ModelProblem:
    assert opt._sensitivity is not None
    return ModelProblem(
        model=g.model, space=g.groups, layers=g.layers, weight_quantizers=opt.weight_quantizers,
        act_quantizers=opt.act_quantizers, weight_bits=(4, 8), act_bits=(4, 8), sensitivities=opt._sensitivity,
        order=order, forced=0, round_to=1, kind=kind, dense=opt._layer_macs(), inputs=g.example_inputs,
    )


@pytest.mark.parametrize("kind", ["rel_bops", "size_bytes"])
def test_planned_costs_are_exact_for_convolutions_and_linear_layers(kind: str) -> None:
    """Planning scales each layer's MACs (each parameter's elements) by the kept fractions of its cut dimensions:
    on a conv net that is what the compact model counts, for every count and bits; and a count's groups are
    what ``select`` takes."""
    g = geta.GETA(_cnn(), torch.randn(4, 3, 8, 8), quantize="weights+activations")
    opt = g.qasso(lr=0.05, total_steps=40, target_rel_bops=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        order = torch.randperm(len(g.groups), generator=generator)
        problem = _problem(g, opt, order, kind)
        first, most = problem.counts()
        assert first == 0 and most < len(g.groups)
        with pytest.raises(geta.GetaError):
            g.groups.select(order, most + 1)
        for count in range(0, most + 1, 3):
            assert torch.equal(problem.removed(count), g.groups.select(order, count))
            bits = torch.randint(4, 9, (len(problem.low),), generator=generator).numpy()
            planned, exact = problem.candidate(count).cost.cost(bits), problem.exact(count).cost(bits)
            assert planned == pytest.approx(exact, rel=1e-12), count


# ---------------------------------------------------------------------------------------------- distributed


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    set_fused_kernel(False)  # the reference kernel: no compilation in each process
    try:
        example = torch.randn(8, 12, generator=torch.Generator().manual_seed(0))
        g = geta.GETA(_mlp(), example, quantize="weights+activations")
        ddp = DistributedDataParallel(g.model)
        opt = g.qasso("sgd", lr=0.05, momentum=0.9, lr_quant=1e-3, target_rel_bops=0.03, total_steps=30)
        for x, y in _data((8, 12), 30, seed=100 + rank):  # every rank sees different data
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
        parameters = {name: p.detach() for name, p in g.model.named_parameters()}
        torch.save({"state": parameters, "allocation": opt.allocation}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_plan_the_same_budget(tmp_path: Path) -> None:
    """Each rank's activation sums are its own batch's: they are summed over the ranks, so the plans (down to
    their estimated loss) and the weights are the same on both."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert first["allocation"] == second["allocation"] and first["allocation"].final
    for key in first["state"]:
        assert torch.equal(first["state"][key], second["state"][key]), key



class _SharedStream(nn.Module):
    """A stem and a block whose input is read by its add and two convs of their own widths (concatenated, then
    mixed): with ``quantize_residuals`` the stem's output gets one quantizer that both convs read."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.wide, self.narrow = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 6, 1)
        self.mix = nn.Conv2d(14, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        y = torch.relu(h + self.mix(torch.relu(torch.cat([self.wide(h), self.narrow(h)], 1))))
        return self.head(y.mean((2, 3)))


def test_a_shared_stream_quantizer_weighs_the_kept_macs_of_all_its_readers() -> None:
    """The rounding noise of a quantizer that several layers read reaches each of them: its estimated loss at a
    count is its loss with nothing removed times its readers' kept MAC fractions, weighted by their dense MACs."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    g = geta.GETA(_SharedStream(), x, quantize="weights+activations", exponent="fixed", quantize_residuals=True)
    shared = g.output_quantizers["stem"]
    readers = [layer for layer in g.layers if layer.input_quantizer is shared]
    assert sorted(layer.name for layer in readers) == ["narrow", "wide"]
    opt = g.qasso(lr=0.05, total_steps=40, target_rel_bops=0.05)
    _train(g, opt, _data((4, 3, 8, 8), 5))
    order = torch.randperm(len(g.groups), generator=torch.Generator().manual_seed(1))
    problem = _problem(g, opt, order, "rel_bops")
    var = problem.var_of[id(shared)]
    dense = opt._layer_macs().per_layer
    full = problem.candidate(0).bit_loss[var]
    assert full[4:9].max() > 0
    seen = set()
    for count in range(1, problem.counts()[1] + 1):
        compact = construct_subnet(g.model, g.groups, problem.removed(count))
        macs = count_macs(compact, g.example_inputs, model_layers(compact)).per_layer
        kept = {layer.name: macs[layer.name] / dense[layer.name] for layer in readers}
        weighted = sum(dense[n] * k for n, k in kept.items()) / sum(dense[n] for n in kept)
        np.testing.assert_allclose(problem.candidate(count).bit_loss[var][4:9], full[4:9] * weighted, rtol=1e-9)
        seen.add(round(kept["wide"] - kept["narrow"], 6))
    assert len(seen) > 1, "the readers' kept fractions differ at some count"
