"""QASSO: one optimizer that trains a quantization-aware model to an exact group sparsity with every
layer's bit width inside a range (paper Sec. 5, Algorithm 2; DESIGN Sec. 4).

It wraps a base optimizer (SGD, Adam, AdamW or any ``torch.optim.Optimizer`` class) and lets it take
every step; around that step it

* projects each quantizer's step d onto the current bit range (PPSG, Algorithm 3), weights and
  activations each with their own range and bit schedule (``schedule.py``);
* in the joint stage, ranks the groups by saliency at each period start (``saliency.py``), chooses
  the period's share of redundant groups and forgets them (``forget.py``); at the period end they
  are exactly zero and stay so;
* in the cool-down, freezes the quantization parameters and keeps the pruned groups at zero.

Decisions depend only on weights and gradients, so under ``DistributedDataParallel`` (gradients
averaged) every rank takes the same ones.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from geta.errors import ConfigError
from geta.metrics.cost import MacCount, count_macs
from geta.metrics.report import CompactCost
from geta.optim.forget import Forgetting
from geta.optim.saliency import check_weights, group_macs, saliency
from geta.optim.schedule import BitSchedule, Position, Schedule, Stage
from geta.pruning.groups import check_round_to
from geta.quant.functional import check_bit_range
from geta.quant.quantizer import Quantizer

if TYPE_CHECKING:
    from geta.api import GETA

# Quantizer steps d are tiny at high bit widths (q_m / 32767 at 16 bits), so a step of the weights' size
# overshoots them: on digits (SGD, lr 0.05, 600 steps) lr_quant = lr ended at 92.8% test accuracy, 1e-3 at 98.3%.
DEFAULT_LR_QUANT = 1e-3

BASE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


@dataclass(frozen=True)
class QassoMetrics:
    """What a step left behind: stage, sparsity, bit widths (Eq. 3, continuous) and relative BOPs.

    Bit statistics are over quantizers (a per-channel quantizer counts with its mean); None where
    the model has no quantizer of that kind. ``rel_bops`` is the compact model's BOPs (zeroed groups
    removed) over the dense model's MACs x 32 x 32.
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


@dataclass(frozen=True)
class QassoSettings:
    """The settings a QASSO run was made with, as given; a checkpoint resumes only under the same ones.

    Learning rates are left out: they live in the base optimizer's ``param_groups`` (which the
    checkpoint restores) and schedulers change them on purpose."""

    target_sparsity: float
    total_steps: int
    weight_bits: tuple[int, int]
    act_bits: tuple[int, int]
    warmup_steps: int | None
    projection_periods: int | None
    projection_steps: int | None
    bit_reduction: int | None
    pruning_periods: int | None
    pruning_steps: int | None
    stage_shares: tuple[float, ...] | None
    eps: float
    eta: float
    xi: float
    saliency_weights: tuple[tuple[str, float], ...]
    round_to: int

    def differences(self, saved: Mapping[str, Any]) -> list[str]:
        """``name: saved -> current`` for every setting ``saved`` (from a checkpoint) holds differently."""
        current = asdict(self)
        found = []
        for name, value in current.items():
            before = saved.get(name, "missing")
            if _plain(before) != _plain(value):
                found.append(f"{name}: checkpoint {_plain(before)!r}, this optimizer {_plain(value)!r}")
        return found


class QASSO(torch.optim.Optimizer):
    """The QASSO optimizer; create it with :meth:`geta.GETA.qasso`, which documents the arguments.

    ``param_groups`` are the base optimizer's (weights, weight-quantizer and activation-quantizer
    parameters, each group tagged with its ``"role"``), so LR schedulers, gradient clipping and
    ``GradScaler`` work on it as on the base optimizer.
    """

    def __init__(
        self,
        compressor: GETA,
        optimizer: str | type[torch.optim.Optimizer] = "sgd",
        *,
        lr: float,
        target_sparsity: float,
        total_steps: int,
        lr_quant: float | None = None,
        weight_bits: tuple[int, int] = (4, 8),
        act_bits: tuple[int, int] = (4, 8),
        warmup_steps: int | None = None,
        projection_periods: int | None = None,
        projection_steps: int | None = None,
        bit_reduction: int | None = None,
        pruning_periods: int | None = None,
        pruning_steps: int | None = None,
        stage_shares: tuple[float, float, float] | None = None,
        eps: float = 1e-8,
        eta: float = 0.5,
        xi: float = 0.5,
        saliency_weights: Mapping[str, float] | None = None,
        round_to: int = 1,
        callback: Callable[[QassoMetrics], None] | None = None,
        **base_kwargs: Any,
    ) -> None:
        if isinstance(target_sparsity, bool) or not isinstance(target_sparsity, (int, float)) or not 0 <= target_sparsity < 1:
            raise ConfigError(f"target_sparsity={target_sparsity!r} must lie in [0, 1)")
        if not _finite_number(lr) or not lr > 0:
            raise ConfigError(f"lr={lr} must be a finite positive number")
        lr_quant = min(lr, DEFAULT_LR_QUANT) if lr_quant is None else lr_quant
        if not _finite_number(lr_quant) or not lr_quant >= 0:
            raise ConfigError(f"lr_quant={lr_quant} must be a finite non-negative number")
        for name, value in base_kwargs.items():
            numbers = value if isinstance(value, (tuple, list)) else (value,)
            if any(isinstance(v, (float, Tensor)) and not _finite_number(v) for v in numbers):
                raise ConfigError(f"{name}={value!r} for the base optimizer must be finite")
        if not eps >= 0 or not 0 < eta < 1 or not 0 < xi < 1:
            raise ConfigError(f"need eps >= 0 and eta, xi in (0, 1); got eps={eps}, eta={eta}, xi={xi}")
        weight_range = check_bit_range(weight_bits, "weight_bits")
        act_range = check_bit_range(act_bits, "act_bits")
        self.compressor = compressor
        self.space = compressor.groups
        self.eps, self.eta, self.xi = float(eps), float(eta), float(xi)
        self.saliency_weights = check_weights(saliency_weights)
        self.callback = callback

        self.weight_quantizers = _unique(layer.weight_quantizer for layer in compressor.layers)
        self.act_quantizers = _unique(layer.input_quantizer for layer in compressor.layers)
        self._quantizer_of = {
            id(w): layer.weight_quantizer
            for layer in compressor.layers if layer.weight_quantizer is not None for w in layer.weights()
        }
        weight_start = _start_bits(self.weight_quantizers, weight_range)
        act_start = _start_bits(self.act_quantizers, act_range)
        self.schedule = Schedule.from_budget(
            total_steps,
            bits_to_drop=max(weight_start - weight_range[1], act_start - act_range[1], 0),
            warmup_steps=warmup_steps, projection_periods=projection_periods, projection_steps=projection_steps,
            pruning_periods=pruning_periods, pruning_steps=pruning_steps, stage_shares=stage_shares,
        )
        periods = self.schedule.projection_periods
        self.weight_schedule = BitSchedule.create(weight_range, weight_start, periods, bit_reduction)
        self.act_schedule = BitSchedule.create(act_range, act_start, periods, bit_reduction)

        self.round_to = check_round_to(round_to)
        self.settings = QassoSettings(
            float(target_sparsity), self.schedule.total_steps, weight_range, act_range, warmup_steps,
            projection_periods, projection_steps, bit_reduction, pruning_periods, pruning_steps,
            None if stage_shares is None else tuple(float(v) for v in stage_shares), self.eps, self.eta, self.xi,
            tuple(sorted(self.saliency_weights.items())), self.round_to,
        )
        self.target_groups = round(target_sparsity * len(self.space))
        if self.target_groups:
            # raises when out of reach; in whole chunks the target becomes the count they reach
            reachable = self.space.select(torch.arange(len(self.space)), self.target_groups, round_to)
            self.target_groups = int(reachable.sum())
        if not self.target_groups and target_sparsity > 0:
            chunks = f" in whole chunks of round_to={round_to}" if round_to > 1 else ""
            warnings.warn(
                f"target_sparsity={target_sparsity} of {len(self.space)} groups rounds to 0 groups{chunks}: nothing is "
                "pruned (see GETA.unprunable() for what was left out)", stacklevel=3,
            )

        base_class = _base_class(optimizer)
        self.base = base_class(self._parameter_groups(compressor.model, lr_quant), lr=lr, **base_kwargs)
        super().__init__(self.base.param_groups, self.base.defaults)
        self.param_groups = self.base.param_groups
        self.state = self.base.state

        self.steps_done = 0
        self.skipped_steps = 0
        self.pruned = torch.zeros(len(self.space), dtype=torch.bool)
        self.redundant = torch.zeros(len(self.space), dtype=torch.bool)
        self.chosen_period: int | None = None  # the joint period whose redundant groups are chosen
        self._forgetting = Forgetting([])
        self._warned_skip = False
        self._macs: MacCount | None = None
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
            self._forgetting.forget_(steps_left=steps_left, eps=self.eps, eta=self.eta, xi=self.xi, bits=weight_bounds)

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
        for quantizers, schedule in ((self.weight_quantizers, self.weight_schedule), (self.act_quantizers, self.act_schedule)):
            low, high = schedule.bounds(position, last)
            for quantizer in quantizers:
                quantizer.project_bits_(low, high)

    def _choose_redundant(self, period: int) -> None:
        """Rank the remaining groups and mark this period's share redundant (cumulative target)."""
        wanted = round(self.target_groups * (period + 1) / self.schedule.pruning_periods)
        candidates = ~self.pruned
        scores = saliency(self.space, self.saliency_weights, candidates, self._group_costs())
        candidate_index = candidates.nonzero().flatten()
        order = torch.cat([self.pruned.nonzero().flatten(), candidate_index[torch.argsort(scores[candidate_index], stable=True)]])
        chosen = self.space.select(order, wanted, self.round_to)
        self.redundant = chosen & ~self.pruned
        self.chosen_period = period
        self._forgetting = self._forget_plan(self.redundant)

    def _group_costs(self) -> Tensor | None:
        """Each group's MACs (for the ``macs`` saliency criterion), counted once on the model; None when unused."""
        if not self.saliency_weights["macs"]:
            return None
        if self._costs is None:
            self._costs = group_macs(self.space, self.compressor.layers, self._layer_macs())
        return self._costs

    def _layer_macs(self) -> MacCount:
        if self._macs is None:
            self._macs = count_macs(self.compressor.model, self.compressor.example_inputs, self.compressor.layers)
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
                masks[key] = (member.tensor, torch.zeros_like(member.tensor, dtype=torch.bool), self._quantizer_of.get(key))
            masks[key][1].index_fill_(member.dim, chosen.to(member.tensor.device), True)
        return Forgetting(list(masks.values()))

    # ------------------------------------------------------------------ observability

    def metrics(self) -> QassoMetrics:
        """Stage, group sparsity, bit statistics and relative BOPs after the last step; rel. BOPs are the
        compact model's (zeroed groups removed), as ``GETA.report()`` gives them. Its MACs are counted
        again only when the zeroed groups change (at period ends), so a call stays cheap."""
        zero = self.space.zero_mask() if len(self.space) else torch.zeros(0, dtype=torch.bool)
        if self._compact_cost is None:
            self._compact_cost = CompactCost(
                self.compressor.model, self.space, self.compressor.example_inputs, self._layer_macs()
            )
        rel_bops = self._compact_cost.rel_bops(zero, self.compressor.layers)
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

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
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
                "settings": _plain(asdict(self.settings)),
            },
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Restore a checkpoint of :meth:`state_dict`, made by an optimizer with the same settings.

        A setting that differs (target sparsity, step budget or stage lengths, bit ranges, eps/eta/xi,
        saliency weights, round_to) is refused by name: the checkpoint's schedule and chosen groups
        follow from its own settings. The schedules are taken from the checkpoint, since they also
        depend on the quantizers' bit widths when the run started."""
        if "qasso" not in state_dict or "base" not in state_dict:
            raise ConfigError("not a QASSO checkpoint: expected the keys 'base' and 'qasso' (from QASSO.state_dict())")
        own = state_dict["qasso"]
        if own["groups"] != len(self.space):
            raise ConfigError(
                f"the checkpoint has {own['groups']} groups but this model has {len(self.space)}; "
                "resume with the same model and GETA settings"
            )
        if "settings" not in own:
            raise ConfigError("the checkpoint holds no QASSO settings (made by an older geta); it cannot be checked, "
                              "so it is not resumed")
        differences = self.settings.differences(own["settings"])
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
        self._forgetting = self._forget_plan(self.redundant)

    # ------------------------------------------------------------------ construction helpers

    def _parameter_groups(self, model: nn.Module, lr_quant: float) -> list[dict[str, Any]]:
        quantizer_params = {id(p) for q in self.weight_quantizers + self.act_quantizers for p in q.parameters()}
        weights = [p for p in _unique(model.parameters()) if id(p) not in quantizer_params and p.requires_grad]
        groups = [{"params": weights, "role": "weights"}]
        for role, quantizers in (("weight_quantizers", self.weight_quantizers), ("act_quantizers", self.act_quantizers)):
            params = [p for q in quantizers for p in q.parameters()]
            if params:
                groups.append({"params": params, "lr": lr_quant, "weight_decay": 0.0, "role": role})
        if not weights:
            raise ConfigError("the model has no trainable parameters outside its quantizers")
        return groups


def _base_class(optimizer: object) -> type[torch.optim.Optimizer]:
    if isinstance(optimizer, str):
        if optimizer.lower() not in BASE_OPTIMIZERS:
            raise ConfigError(f"optimizer={optimizer!r} is not known; use one of {sorted(BASE_OPTIMIZERS)} or an Optimizer class")
        return BASE_OPTIMIZERS[optimizer.lower()]
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer
    raise ConfigError(f"optimizer must be a name or a torch.optim.Optimizer subclass, got {optimizer!r}")


def _finite_number(value: object) -> bool:
    """Whether ``value`` is a real number (or one-element tensor) that is finite."""
    if isinstance(value, bool):
        return False
    if isinstance(value, Tensor):
        return value.numel() == 1 and bool(torch.isfinite(value).all())
    return isinstance(value, (int, float)) and math.isfinite(value)


def _plain(value: object) -> object:
    """``value`` with tuples as lists, as a checkpoint round trip (e.g. through JSON) gives them back."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


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
