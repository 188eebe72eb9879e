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
    the model has no quantizer of that kind. ``rel_bops`` uses the dense model's MACs."""

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
        if not lr > 0:
            raise ConfigError(f"lr={lr} must be positive")
        lr_quant = min(lr, DEFAULT_LR_QUANT) if lr_quant is None else lr_quant
        if not lr_quant >= 0:
            raise ConfigError(f"lr_quant={lr_quant} must be non-negative")
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
        self.pruned = torch.zeros(len(self.space), dtype=torch.bool)
        self.redundant = torch.zeros(len(self.space), dtype=torch.bool)
        self._forgetting = Forgetting([])
        self._warned_nonfinite = False
        self._macs: MacCount | None = None
        self._costs: Tensor | None = None

    # ------------------------------------------------------------------ stepping

    @property
    def stage(self) -> Stage:
        """The stage the next step belongs to."""
        return self.schedule.position(self.steps_done).stage

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One QASSO step: the base step plus this stage's projection, forgetting and zeroing."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._gradients_finite():
            if not self._warned_nonfinite:
                warnings.warn(
                    f"step {self.steps_done}: a gradient is not finite (inf or NaN); QASSO skips such steps "
                    "(this warning is shown once)", RuntimeWarning, stacklevel=2,
                )
                self._warned_nonfinite = True
            return loss
        position = self.schedule.position(self.steps_done)
        if position.stage is Stage.JOINT and position.step == 0:
            self._choose_redundant(position.period)
        if position.stage is Stage.COOLDOWN:
            for quantizer in self.weight_quantizers + self.act_quantizers:
                for parameter in quantizer.parameters():
                    parameter.grad = None
        forgetting = position.stage is Stage.JOINT and bool(self._forgetting)
        if forgetting:
            self._forgetting.snapshot()
        self.base.step()
        for quantizer in self.weight_quantizers + self.act_quantizers:
            quantizer.constrain_()
        weight_bounds = self.weight_schedule.bounds(position, self.schedule.projection_periods - 1)
        if forgetting:
            steps_left = self.schedule.pruning_steps - position.step
            self._forgetting.forget_(steps_left=steps_left, eps=self.eps, eta=self.eta, xi=self.xi, bits=weight_bounds)
        self._project_bits(position)
        if position.stage is Stage.JOINT and position.step == self.schedule.pruning_steps - 1:
            self.pruned |= self.redundant
            self.redundant.zero_()
            self._forgetting = Forgetting([])
        if self.pruned.any():
            self.space.zero_(self.pruned)
        self.steps_done += 1
        if self.callback is not None:
            self.callback(self.metrics())
        return loss

    def _gradients_finite(self) -> bool:
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        # the largest |g| (one fused pass) is inf or NaN exactly when some element is
        return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=math.inf))) if grads else True

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
        """Stage, group sparsity, bit statistics and relative BOPs after the last step."""
        from geta.metrics.report import build_report

        zero = self.space.zero_mask() if len(self.space) else torch.zeros(0, dtype=torch.bool)
        report = build_report(self.compressor.model, self.compressor.layers, self._layer_macs())
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
            rel_bops=report.rel_bops,
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
                "warned_nonfinite": self._warned_nonfinite,
            },
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Restore a checkpoint of :meth:`state_dict`; its schedules replace the ones computed at construction."""
        if "qasso" not in state_dict or "base" not in state_dict:
            raise ConfigError("not a QASSO checkpoint: expected the keys 'base' and 'qasso' (from QASSO.state_dict())")
        own = state_dict["qasso"]
        if own["groups"] != len(self.space):
            raise ConfigError(
                f"the checkpoint has {own['groups']} groups but this model has {len(self.space)}; "
                "resume with the same model and GETA settings"
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
        self._warned_nonfinite = bool(own["warned_nonfinite"])
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
