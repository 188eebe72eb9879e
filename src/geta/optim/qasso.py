"""QASSO: one optimizer that trains a quantization-aware model to an exact group sparsity with every
layer's bit width inside a range (paper Sec. 5, Algorithm 2; docs/design.md Sec. 2), or to a cost budget
(relative BOPs or packed size, ``allocation.py``) with the groups and the bit widths it takes chosen.

It wraps a base optimizer (SGD, Adam, AdamW or any ``torch.optim.Optimizer`` class) and lets it take
every step; around that step it

* projects each quantizer's step d onto the current bit range (PPSG, Algorithm 3), weights and
  activations each with their own range and bit schedule (``schedule.py``);
* in the joint stage, ranks the groups by saliency at each period start (``saliency.py``), chooses
  the period's share of redundant groups and forgets them (``forget.py``); at the period end they
  are exactly zero and stay so;
* in the cool-down, freezes the quantization parameters and keeps the pruned groups at zero.

With a budget (``target_rel_bops`` or ``target_size_bytes``) it also gathers the squared gradients the
allocation's sensitivities come from, and at each joint period start plans the number of groups and each
quantizer's width (``allocation.allocate``): the period takes its share of the planned groups in the
saliency order, and every planned quantizer is projected onto its own width [b, b] from then on.

Decisions depend only on weights and gradients, so under ``DistributedDataParallel`` (gradients
averaged) every rank takes the same ones.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from geta.core.inputs import ExampleInputs
from geta.errors import ConfigError
from geta.metrics.cost import MacCount, count_macs
from geta.metrics.report import FULL_PRECISION_BITS, CompactCost
from geta.optim.allocation import Allocation, BudgetKind, ModelProblem, Plan, Sensitivities, allocate
from geta.optim.config import DEFAULT_LR_QUANT, QassoConfig, finite_number, schedule_for
from geta.optim.forget import Forgetting
from geta.optim.saliency import group_macs, saliency
from geta.optim.schedule import BitSchedule, Position, Schedule, Stage
from geta.pruning.groups import SearchSpace
from geta.quant.prepare import QuantizableLayer
from geta.quant.quantizer import Quantizer, quantizer_parameter_ids

BASE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}
# what QASSO calls with its parameter groups to make the base optimizer (an Optimizer class, or a
# functools.partial of one with its arguments)
BaseFactory = Callable[[list[Any]], torch.optim.Optimizer]


def base_optimizer(optimizer: str | type[torch.optim.Optimizer], lr: float, **kwargs: Any) -> BaseFactory:
    """A factory of the base optimizer ``optimizer`` (a name of :data:`BASE_OPTIMIZERS` or an Optimizer
    class) at learning rate ``lr`` with its own ``kwargs`` (``momentum``, ``weight_decay``, ...), checked."""
    if not finite_number(lr) or not lr > 0:
        raise ConfigError(f"lr={lr} must be a finite positive number")
    for name, value in kwargs.items():
        numbers = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, (float, Tensor)) and not _finite(v) for v in numbers):
            raise ConfigError(f"{name}={value!r} for the base optimizer must be finite")
    made: Callable[..., torch.optim.Optimizer] = _base_class(optimizer)
    return functools.partial(made, lr=lr, **kwargs)


@dataclass(frozen=True)
class QassoMetrics:
    """What a step left behind: stage, sparsity, bit widths (Eq. 3, continuous) and relative BOPs.

    Bit statistics are over quantizers (a per-channel quantizer counts with its mean); None where
    the model has no quantizer of that kind. ``rel_bops``: the compact model's BOPs (zeroed groups
    removed) over the dense model's MACs x 32 x 32 (one meaning everywhere: ``geta.metrics.report``).
    ``skipped_steps`` counts the calls of ``step()`` so far that found no usable gradient."""

    step: int
    stage: Stage
    group_sparsity: float
    redundant_groups: int
    pruned_groups: int
    weight_bits_mean: float | None
    weight_bits_min: float | None
    weight_bits_max: float | None
    act_bits_mean: float | None
    act_bits_min: float | None
    act_bits_max: float | None
    rel_bops: float
    skipped_steps: int = 0


class QASSO(torch.optim.Optimizer):
    """The QASSO optimizer; create it with :meth:`geta.GETA.qasso`, which documents the arguments.

    ``param_groups`` are the base optimizer's (weights, weight-quantizer and activation-quantizer
    parameters, each group tagged with its ``"role"``), so LR schedulers, gradient clipping and
    ``GradScaler`` work on it as on the base optimizer.
    """

    def __init__(
        self,
        model: nn.Module,
        space: SearchSpace,
        layers: Sequence[QuantizableLayer],
        example_inputs: ExampleInputs,
        config: QassoConfig,
        base: BaseFactory,
        *,
        output_quantizers: Sequence[Quantizer] = (),
        callback: Callable[[QassoMetrics], None] | None = None,
    ) -> None:
        """QASSO over ``model``: its search ``space``, its quantizable ``layers`` (their weight and input
        quantizers) and further activation quantizers ``output_quantizers``, ``example_inputs`` (for MAC
        counts), a checked ``config`` and the ``base`` optimizer's factory (see :func:`base_optimizer`),
        called with QASSO's parameter groups. ``callback`` gets the metrics after every step."""
        if not isinstance(config, QassoConfig):
            raise ConfigError(f"config must be a QassoConfig, got {type(config).__name__}")
        self.model, self.space, self.layers, self.example_inputs = model, space, list(layers), example_inputs
        self.config = config
        self.callback = callback

        self.weight_quantizers = _unique(layer.weight_quantizer for layer in self.layers)
        self.act_quantizers = _unique([layer.input_quantizer for layer in self.layers] + list(output_quantizers))
        self._quantizer_of = {
            id(w): layer.weight_quantizer
            for layer in self.layers if layer.weight_quantizer is not None for w in layer.weights()
        }
        weight_start = _start_bits(self.weight_quantizers, config.weight_bits)
        act_start = _start_bits(self.act_quantizers, config.act_bits)
        self.schedule = schedule_for(config, weight_start, act_start)
        periods = self.schedule.projection_periods
        self.weight_schedule = BitSchedule.create(config.weight_bits, weight_start, periods, config.bit_reduction)
        self.act_schedule = BitSchedule.create(config.act_bits, act_start, periods, config.bit_reduction)

        self._macs: MacCount | None = None
        self._budget = config.budget
        if self._budget is None:
            sparsity = float(config.target_sparsity or 0.0)
            self.target_groups = round(sparsity * len(space))
            if self.target_groups:
                # raises when out of reach; in whole chunks the target becomes the count they reach
                reachable = space.select(torch.arange(len(space)), self.target_groups, config.round_to)
                self.target_groups = int(reachable.sum())
            if not self.target_groups and sparsity > 0:
                chunks = f" in whole chunks of round_to={config.round_to}" if config.round_to > 1 else ""
                warnings.warn(
                    f"target_sparsity={sparsity} of {len(space)} groups rounds to 0 groups{chunks}: nothing "
                    "is pruned (see GETA.unprunable() for what was left out)", stacklevel=3,
                )
        else:
            self.target_groups = 0  # planned at each joint period start
            if self._budget[0] == "target_rel_bops" and not self._layer_macs().total > 0:
                raise ConfigError("target_rel_bops needs MACs, and the model has none on the example inputs; give "
                                  "target_size_bytes or target_sparsity instead")

        self.base = _made(base, self._parameter_groups(model))
        super().__init__(self.base.param_groups, self.base.defaults)
        self.param_groups = self.base.param_groups
        self.state = self.base.state
        # the budget's plan: per quantizer (by identity) its width, the record, the gradients behind it
        self.allocation: Allocation | None = None
        self._planned_bits: dict[int, int] = {}
        self._sensitivity: Sensitivities | None = self._new_sensitivities() if self._budget is not None else None
        self._budget_warned: set[str] = set()

        self.steps_done = 0
        self.skipped_steps = 0
        self.pruned = torch.zeros(len(self.space), dtype=torch.bool)
        self.redundant = torch.zeros(len(self.space), dtype=torch.bool)
        self.chosen_period: int | None = None  # the joint period whose redundant groups are chosen
        self._forgetting = Forgetting([])
        self._warned_skip = False
        self._costs: Tensor | None = None
        self._compact_cost: CompactCost | None = None

    # ------------------------------------------------------------------ stepping

    @property
    def stage(self) -> Stage:
        """The stage the next step belongs to."""
        return self.schedule.position(self.steps_done).stage

    @property
    def finished(self) -> bool:
        """Whether ``total_steps`` calls of :meth:`step` are done: the target sparsity and bit ranges hold."""
        return self.steps_done >= self.schedule.total_steps

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One QASSO step: the base step plus this stage's projection, forgetting and zeroing.

        Every call advances the schedule. A call that finds no usable gradient (inf or NaN, or none at
        all: no backward since ``zero_grad``) skips the base step and the forgetting, but keeps the
        schedule's events: the bit projection, the choice of a period's groups (made at the period's
        first usable step, at its last step at the latest) and their removal at the period end. So
        after ``total_steps`` calls the target sparsity and the bit ranges hold exactly, however many
        steps were skipped."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        problem = self._gradient_problem()
        if self._sensitivity is not None:
            if problem is None:
                self._sensitivity.update()
            else:
                self._sensitivity.discard()
        if problem is not None:
            self.skipped_steps += 1
            if not self._warned_skip:
                warnings.warn(f"step {self.steps_done}: {problem}; QASSO skips the base step of such calls but keeps "
                              "its schedule (this warning is shown once)", RuntimeWarning, stacklevel=2)
                self._warned_skip = True
        position = self.schedule.position(self.steps_done)
        joint = position.stage is Stage.JOINT
        period_end = joint and position.step == self.schedule.pruning_steps - 1
        if joint and self.chosen_period != position.period and (problem is None or period_end):
            self._choose_redundant(position.period)
        if position.stage is Stage.COOLDOWN:
            for quantizer in self.weight_quantizers + self.act_quantizers:
                for parameter in quantizer.parameters():
                    parameter.grad = None
        if problem is None:
            self._base_step(position)
        self._project_bits(position)
        if period_end:
            self.pruned |= self.redundant
            self.redundant.zero_()
            self._forgetting = Forgetting([])
        if self.pruned.any():
            self.space.zero_(self.pruned)
        self.steps_done += 1
        if self.steps_done == self.schedule.total_steps and self.skipped_steps:
            warnings.warn(
                f"QASSO skipped the base step of {self.skipped_steps} of its {self.steps_done} steps (no usable "
                "gradient); the target sparsity and bit ranges hold, but those steps did not train the model",
                RuntimeWarning, stacklevel=2,
            )
        if self.callback is not None:
            self.callback(self.metrics())
        return loss

    def _base_step(self, position: Position) -> None:
        """The base optimizer's step, the quantizers kept valid, and this step's forgetting (Eq. 6, 14)."""
        forgetting = position.stage is Stage.JOINT and bool(self._forgetting)
        if forgetting:
            self._forgetting.snapshot()
        self.base.step()
        for quantizer in self.weight_quantizers + self.act_quantizers:
            quantizer.constrain_()
        if forgetting:
            weight_bounds = self.weight_schedule.bounds(position, self.schedule.projection_periods - 1)
            steps_left = self.schedule.pruning_steps - position.step
            self._forgetting.forget_(steps_left=steps_left, eps=self.config.eps, eta=self.config.eta, xi=self.config.xi,
                                     bits=weight_bounds)

    def _gradient_problem(self) -> str | None:
        """Why this step's gradients cannot be used, or None."""
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return "no parameter has a gradient (call loss.backward() before opt.step())"
        # the largest |g| (one fused pass) is inf or NaN exactly when some element is
        if not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=math.inf))):
            return "a gradient is not finite (inf or NaN)"
        return None

    def _project_bits(self, position: Position) -> None:
        last = self.schedule.projection_periods - 1
        kinds = ((self.weight_quantizers, self.weight_schedule), (self.act_quantizers, self.act_schedule))
        for quantizers, schedule in kinds:
            low, high = schedule.bounds(position, last)
            for quantizer in quantizers:
                planned = self._planned_bits.get(id(quantizer))
                if planned is None:
                    quantizer.project_bits_(low, high)
                else:
                    quantizer.project_bits_(planned, planned)

    def _choose_redundant(self, period: int) -> None:
        """Rank the remaining groups and mark this period's share redundant (cumulative target); with a
        budget, plan the target first (:meth:`_allocate`)."""
        candidates = ~self.pruned
        scores = saliency(self.space, self.config.criterion_weights, candidates, self._group_costs())
        candidate_index = candidates.nonzero().flatten()
        ranked = candidate_index[torch.argsort(scores[candidate_index], stable=True)]
        order = torch.cat([self.pruned.nonzero().flatten(), ranked])
        if self._budget is None:
            wanted = round(self.target_groups * (period + 1) / self.schedule.pruning_periods)
            chosen = self.space.select(order, wanted, self.config.round_to)
        else:
            chosen = self._allocate(order, period)
        self.redundant = chosen & ~self.pruned
        self.chosen_period = period
        self._forgetting = self._forget_plan(self.redundant)

    def _allocate(self, order: Tensor, period: int) -> Tensor:
        """Plan the budget with the groups in ``order`` (the pruned ones first, forced) and return the groups
        this period ends with removed: its cumulative share of the plan, all of it at the last period."""
        assert self._budget is not None and self._sensitivity is not None
        name, value = self._budget
        kind: BudgetKind = "rel_bops" if name == "target_rel_bops" else "size_bytes"
        dense = self._layer_macs()
        unit = dense.total * FULL_PRECISION_BITS**2 if kind == "rel_bops" else 8.0
        pruned = int(self.pruned.sum())
        problem = ModelProblem(
            model=self.model, space=self.space, layers=self.layers, weight_quantizers=self.weight_quantizers,
            act_quantizers=self.act_quantizers, weight_bits=self.config.weight_bits, act_bits=self.config.act_bits,
            sensitivities=self._sensitivity, order=order, forced=pruned, round_to=self.config.round_to, kind=kind,
            dense=dense, inputs=self.example_inputs,
        )
        plan = allocate(problem, value * unit)
        final = period == self.schedule.pruning_periods - 1
        self.target_groups = plan.count
        if final:
            chosen = problem.removed(plan.asked)
        else:
            wanted = max(round(plan.count * (period + 1) / self.schedule.pruning_periods), pruned)
            chosen = self.space.select(order, wanted, self.config.round_to)
        bits_of = dict(zip(map(id, problem.variables), plan.bits, strict=True))
        self._planned_bits = dict(bits_of)
        self.allocation = Allocation(
            target=name, budget=value, period=period, final=final, removed_groups=plan.count,
            weight_bits={layer.name: bits_of[id(layer.weight_quantizer)] for layer in self.layers
                         if layer.weight_quantizer is not None},
            act_bits={layer.name: bits_of[id(layer.input_quantizer)] for layer in self.layers
                      if layer.input_quantizer is not None and id(layer.input_quantizer) in bits_of},
            planned=plan.planned_cost / unit, exact=plan.cost / unit, estimated_loss=plan.loss, status=plan.status,
        )
        self._warn_budget(plan, unit, final)
        if final:
            self._sensitivity.close()
            self._sensitivity = None
        return chosen

    def _warn_budget(self, plan: Plan, unit: float, final: bool) -> None:
        """Say so, once, when the budget is out of reach (or above the cost), or the plan ends more than 2% under it."""
        assert self._budget is not None
        name, value = self._budget
        suffix = "" if name == "target_rel_bops" else " bytes"

        def show(cost: float) -> str:
            return f"{cost / unit:.6g}{suffix}"

        messages = {
            "below_reach": f"{name}={value:g} is below what removing every removable group at the lowest bits "
                           f"reaches ({show(plan.least)}): QASSO removes {plan.count} groups with every costly bit "
                           f"width at its range bottom and ends above the target, at {show(plan.cost)}",
            "above_cost": f"{name}={value:g} is above the cost with no (more) groups removed and every bit width at "
                          f"its range top ({show(plan.most)}): nothing more is pruned and the bit widths stay at "
                          "their tops",
            "coarse": f"{name}={value:g}: the closest plan that the groups' and the bits' granularity allows ends at "
                      f"{show(plan.cost)}, more than 2% under the target",
        }
        if plan.status in messages and plan.status not in self._budget_warned and (final or plan.status != "coarse"):
            self._budget_warned.add(plan.status)
            warnings.warn(messages[plan.status], stacklevel=4)

    def _new_sensitivities(self) -> Sensitivities:
        """The squared-gradient EMAs behind a budget's plan, over the trainable weights and activation quantizers."""
        weights = [p for group in self.param_groups if group["role"] == "weights" for p in group["params"]]
        return Sensitivities(weights, self.act_quantizers)

    def _group_costs(self) -> Tensor | None:
        """Each group's MACs (for the ``macs`` saliency criterion), counted once on the model; None when unused."""
        if not self.config.criterion_weights["macs"]:
            return None
        if self._costs is None:
            self._costs = group_macs(self.space, self.layers, self._layer_macs())
        return self._costs

    def _layer_macs(self) -> MacCount:
        if self._macs is None:
            self._macs = count_macs(self.model, self.example_inputs, self.layers)
        return self._macs

    def _forget_plan(self, redundant: Tensor) -> Forgetting:
        """The trainable tensors holding redundant positions, with the weight quantizer of each."""
        masks: dict[int, tuple[Tensor, Tensor, Quantizer | None]] = {}
        for member in self.space.members:
            if not member.trainable:
                continue
            chosen = member.positions[redundant[member.groups]]
            if not len(chosen):
                continue
            key = id(member.tensor)
            if key not in masks:
                mask = torch.zeros_like(member.tensor, dtype=torch.bool)
                masks[key] = (member.tensor, mask, self._quantizer_of.get(key))
            masks[key][1].index_fill_(member.dim, chosen.to(member.tensor.device), True)
        return Forgetting(list(masks.values()))

    # ------------------------------------------------------------------ observability

    def metrics(self) -> QassoMetrics:
        """Stage, group sparsity, bit statistics and relative BOPs after the last step; rel. BOPs are the
        compact model's (zeroed groups removed), as ``GETA.report()`` gives them. Its MACs are counted
        again only when the zeroed groups change (at period ends), so a call stays cheap."""
        zero = self.space.zero_mask() if len(self.space) else torch.zeros(0, dtype=torch.bool)
        if self._compact_cost is None:
            self._compact_cost = CompactCost(self.model, self.space, self.example_inputs, self._layer_macs())
        rel_bops = self._compact_cost.rel_bops(zero, self.layers)
        weight = _bit_stats(self.weight_quantizers)
        act = _bit_stats(self.act_quantizers)
        return QassoMetrics(
            step=self.steps_done,
            stage=self.schedule.position(max(self.steps_done - 1, 0)).stage,
            group_sparsity=float(zero.float().mean()) if len(zero) else 0.0,
            redundant_groups=int(self.redundant.sum()),
            pruned_groups=int(self.pruned.sum()),
            weight_bits_mean=weight[0], weight_bits_min=weight[1], weight_bits_max=weight[2],
            act_bits_mean=act[0], act_bits_min=act[1], act_bits_max=act[2],
            rel_bops=rel_bops,
            skipped_steps=self.skipped_steps,
        )

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state and QASSO's own: step count, schedules, redundant and pruned sets."""
        return {
            "base": self.base.state_dict(),
            "qasso": {
                "steps_done": self.steps_done,
                "groups": len(self.space),
                "target_groups": self.target_groups,
                "pruned": self.pruned.clone(),
                "redundant": self.redundant.clone(),
                "schedule": asdict(self.schedule),
                "weight_schedule": asdict(self.weight_schedule),
                "act_schedule": asdict(self.act_schedule),
                "skipped_steps": self.skipped_steps,
                "chosen_period": self.chosen_period,
                "warned_skip": self._warned_skip,
                "config": self.config.to_dict(),
                **({"budget": self._budget_state()} if self._budget is not None else {}),
            },
        }

    def _budget_state(self) -> dict[str, Any]:
        quantizers = self.weight_quantizers + self.act_quantizers
        return {
            "sensitivities": self._sensitivity.state_dict() if self._sensitivity is not None else None,
            "bits": [self._planned_bits.get(id(q)) for q in quantizers],
            "allocation": asdict(self.allocation) if self.allocation is not None else None,
            "warned": sorted(self._budget_warned),
        }

    def _load_budget_state(self, saved: Mapping[str, Any] | None) -> None:
        if saved is None:
            raise ConfigError("the checkpoint holds no budget state (it is not of a target_rel_bops or "
                              "target_size_bytes run)")
        quantizers = self.weight_quantizers + self.act_quantizers
        if len(saved["bits"]) != len(quantizers):
            raise ConfigError(f"the checkpoint plans {len(saved['bits'])} quantizers but this model has "
                              f"{len(quantizers)}")
        if saved["sensitivities"] is None:
            if self._sensitivity is not None:
                self._sensitivity.close()
            self._sensitivity = None
        else:
            if self._sensitivity is None:
                self._sensitivity = self._new_sensitivities()
            self._sensitivity.load_state_dict(saved["sensitivities"])
        self._planned_bits = {id(q): int(b) for q, b in zip(quantizers, saved["bits"], strict=True) if b is not None}
        self.allocation = Allocation(**saved["allocation"]) if saved["allocation"] is not None else None
        self._budget_warned = set(saved["warned"])

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a checkpoint of :meth:`state_dict`, made by an optimizer with an equal :class:`QassoConfig`.

        A setting that differs (target sparsity, step budget or stage lengths, bit ranges, lr_quant,
        eps/eta/xi, saliency weights, round_to) is refused by name: the checkpoint's schedule and chosen
        groups follow from its own settings. The schedules are taken from the checkpoint, since they also
        depend on the quantizers' bit widths when the run started."""
        if "qasso" not in state_dict or "base" not in state_dict:
            raise ConfigError("not a QASSO checkpoint: expected the keys 'base' and 'qasso' (from QASSO.state_dict())")
        own = state_dict["qasso"]
        if own["groups"] != len(self.space):
            raise ConfigError(
                f"the checkpoint has {own['groups']} groups but this model has {len(self.space)}; "
                "resume with the same model and GETA settings"
            )
        if "config" not in own:
            raise ConfigError("the checkpoint holds no QASSO config (made by an older geta); it cannot be checked, "
                              "so it is not resumed")
        differences = self.config.differences(own["config"])
        if differences:
            raise ConfigError(
                "the checkpoint was made with other QASSO settings (" + "; ".join(differences) + "); "
                "build the optimizer with the checkpoint's settings to resume it"
            )
        self.base.load_state_dict(state_dict["base"])
        self.param_groups = self.base.param_groups
        self.state = self.base.state
        self.steps_done = int(own["steps_done"])
        self.target_groups = int(own["target_groups"])
        self.pruned = own["pruned"].clone().to(torch.bool)
        self.redundant = own["redundant"].clone().to(torch.bool)
        self.schedule = Schedule(**own["schedule"])
        self.weight_schedule = BitSchedule(**own["weight_schedule"])
        self.act_schedule = BitSchedule(**own["act_schedule"])
        self.skipped_steps = int(own["skipped_steps"])
        self.chosen_period = None if own["chosen_period"] is None else int(own["chosen_period"])
        self._warned_skip = bool(own["warned_skip"])
        if self._budget is not None:
            self._load_budget_state(own.get("budget"))
        self._forgetting = self._forget_plan(self.redundant)

    # ------------------------------------------------------------------ construction helpers

    def _parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """The weights, then the weight and the activation quantizers' parameters (no weight decay, at
        ``lr_quant`` when the config sets one; else see :func:`_made`), each group tagged with its role."""
        quantizer_params = quantizer_parameter_ids(model)
        weights = [p for p in model.parameters() if id(p) not in quantizer_params and p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": weights, "role": "weights"}]
        kinds = (("weight_quantizers", self.weight_quantizers), ("act_quantizers", self.act_quantizers))
        for role, quantizers in kinds:
            params = [p for q in quantizers for p in q.parameters()]
            if params:
                rate = {} if self.config.lr_quant is None else {"lr": self.config.lr_quant}
                groups.append({"params": params, "weight_decay": 0.0, "role": role, **rate})
        if not weights:
            raise ConfigError("the model has no trainable parameters outside its quantizers")
        return groups


def _made(base: BaseFactory, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The base optimizer from ``base(groups)``; quantizer groups without a rate of their own get the
    smaller of the weights' lr and DEFAULT_LR_QUANT (tiny steps d are overshot at the weights' rate)."""
    default_rate = [group["role"] != "weights" and "lr" not in group for group in groups]
    optimizer = base(groups)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"the base optimizer factory returned a {type(optimizer).__name__}, "
                          "not a torch.optim.Optimizer")
    for group, default in zip(optimizer.param_groups, default_rate, strict=False):
        if default:
            group["lr"] = min(float(group["lr"]), DEFAULT_LR_QUANT)
    return optimizer


def _base_class(optimizer: object) -> type[torch.optim.Optimizer]:
    if isinstance(optimizer, str):
        if optimizer.lower() not in BASE_OPTIMIZERS:
            raise ConfigError(f"optimizer={optimizer!r} is not known; use one of {sorted(BASE_OPTIMIZERS)} "
                              "or an Optimizer class")
        return BASE_OPTIMIZERS[optimizer.lower()]
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer
    raise ConfigError(f"optimizer must be a name or a torch.optim.Optimizer subclass, got {optimizer!r}")


def _finite(value: object) -> bool:
    """Whether a float or a one-element tensor is finite."""
    if isinstance(value, Tensor):
        return value.numel() == 1 and bool(torch.isfinite(value).all())
    return finite_number(value)


def _unique(items: object) -> list:
    seen: dict[int, object] = {}
    for item in items:  # type: ignore[attr-defined]
        if item is not None:
            seen.setdefault(id(item), item)
    return list(seen.values())


def _start_bits(quantizers: list[Quantizer], target: tuple[int, int]) -> int:
    """The initial upper bound: the quantizers' largest bit width, rounded up (the target's if none)."""
    if not quantizers:
        return target[1]
    largest = max(float(q.bit_width().max()) for q in quantizers)
    return max(math.ceil(largest - 1e-6), target[0])


def _bit_stats(quantizers: list[Quantizer]) -> tuple[float | None, float | None, float | None]:
    if not quantizers:
        return None, None, None
    bits = torch.stack([q.bit_width().float().mean() for q in quantizers])
    return float(bits.mean()), float(bits.min()), float(bits.max())
