"""``geta.GETA``: the entry point that turns a user's model into a quantization-aware one."""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from geta.core.inputs import ExampleInputs, model_device
from geta.core.modes import eval_mode
from geta.errors import ConfigError, GetaError, ModelError
from geta.graph.capture import capture
from geta.graph.dependency import DependencyAnalysis, UnprunableStructure
from geta.graph.nonnegative import layer_inputs, nonnegative_nodes
from geta.graph.partial import analyse_parts
from geta.graph.residual import residual_sources
from geta.metrics.cost import count_macs
from geta.metrics.report import Report, build_report, model_layers
from geta.optim.config import FIELDS as QASSO_FIELDS
from geta.optim.config import QassoConfig
from geta.optim.qasso import QASSO, QassoMetrics, base_optimizer
from geta.pruning.groups import Group, SearchSpace
from geta.pruning.subnet import construct_subnet
from geta.pruning.verify import check_compact, families, probe_reason, verify_space
from geta.quant.calibrate import calibrate
from geta.quant.functional import check_bits
from geta.quant.prepare import (
    QuantizableLayer,
    attach_input_quantizers,
    attach_output_quantizers,
    attach_weight_quantizers,
    find_layers,
    foreign_parametrization,
    remove_input_quantizer,
    remove_output_quantizer,
    resolve_skip,
    share_input_quantizer,
)
from geta.quant.quantizer import Exponent, Quantizer

QuantizeMode = Literal["weights", "weights+activations", "none"]
_MODES = ("weights", "weights+activations", "none")


class GETA:
    """Joint structured pruning and quantization-aware training of ``model``.

    Args:
        model: any ``nn.Module``. It is deep-copied unless ``inplace=True``.
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs that the
            model runs on (in eval mode). Its leading dimension is the batch.
        quantize: ``"weights"`` (weight quantizers only), ``"weights+activations"`` (also each
            layer's input) or ``"none"``.
        skip: modules or name globs of layers kept at full precision; ``geta.FIRST`` and
            ``geta.LAST`` name the first and last layer the model runs.
        initial_weight_bits, initial_act_bits: the bit widths weight and activation quantizers start at
            (QASSO then projects them into its ``weight_bits`` / ``act_bits`` ranges).
        per_channel: quantize weights per output channel instead of per tensor.
        exponent: ``"learned"`` (each quantizer learns its exponent t) or ``"fixed"`` (t stays 1: uniform
            levels, which integer runtimes need for their kernels; see ``geta.export_onnx``).
        quantize_residuals: with ``"weights+activations"``, also quantize the output of each convolution
            (after its batch norm) that goes into a residual add, and each block output that is both an
            operand of a residual add and the input of quantized layers, once where it is produced, those
            layers reading it through that same quantizer; an integer runtime then runs those convolutions
            and the adds with integer kernels too (see ``geta.graph.residual``). Their quantizers are
            activation quantizers like the inputs' (``act_bits``, projected by QASSO), listed in
            ``.output_quantizers``.
        calibration_data: batches (shaped like ``example_inputs``) that set activation ranges;
            defaults to ``example_inputs`` alone.
        inplace: modify ``model`` itself instead of a copy.

    ``.model`` is the quantization-aware model to train. Its ``state_dict`` keeps the original
    parameters' keys; quantizer parameters appear as ``<layer>.<weight>_quantizer.*`` and
    ``<layer>.geta_input_quantizer.*`` (``<module>.geta_output_quantizer.*`` for output quantizers).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: object,
        *,
        quantize: QuantizeMode = "weights",
        skip: object = (),
        initial_weight_bits: int = 16,
        initial_act_bits: int = 16,
        per_channel: bool = False,
        exponent: Exponent = "learned",
        quantize_residuals: bool = False,
        calibration_data: Iterable[object] | None = None,
        inplace: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_not_wrapped(model)
        if quantize not in _MODES:
            raise ConfigError(f"quantize={quantize!r} is not a mode; use one of {', '.join(map(repr, _MODES))}")
        if quantize_residuals and quantize != "weights+activations":
            raise ConfigError(
                f"quantize_residuals=True needs quantize='weights+activations', got quantize={quantize!r}")
        self.quantize_mode = quantize
        self.output_quantizers: dict[str, Quantizer] = {}
        self._optimizer: QASSO | None = None
        self._space: tuple[SearchSpace, list[UnprunableStructure]] | None = None
        self._program: torch.export.ExportedProgram | None = None  # a capture _search_space may reuse
        weight_bits = check_bits(initial_weight_bits, "initial_weight_bits")
        act_bits = check_bits(initial_act_bits, "initial_act_bits")
        try:
            self.model = model if inplace else copy.deepcopy(model)
        except Exception as error:
            raise ModelError(
                f"the model cannot be deep-copied ({type(error).__name__}: {error}); "
                "pass inplace=True to prepare it in place"
            ) from error
        self.example_inputs = ExampleInputs.from_user(example_inputs).to(model_device(self.model))
        self.example_inputs.check_finite("example_inputs")
        check_finite_parameters(self.model)
        self.layers: list[QuantizableLayer] = find_layers(self.model)
        order = self._run_example()
        # skip may name modules of the user's model or of the copy: both map to the same names
        names = {module: name for name, module in model.named_modules()}
        names.update({module: name for name, module in self.model.named_modules()})
        skipped = resolve_skip(skip, self.layers, names, order)
        for layer in self.layers:
            if layer.name in skipped:
                layer.full_precision_reason = "skipped by the user"
            elif foreign_parametrization(layer):
                layer.full_precision_reason = "weight already parametrized (weight_norm, spectral_norm): not quantized"
        active = [layer for layer in self.layers if not layer.full_precision_reason]
        if quantize == "none":
            return
        attach_weight_quantizers(active, weight_bits, per_channel, exponent)
        program = self._program = self._unquantized_program(quantize_residuals) \
            if quantize == "weights+activations" else None
        unsigned = _nonnegative_inputs(program, active) if program is not None else set()
        full_precision = {layer.name for layer in self.layers if layer.full_precision_reason}
        readers = [layer.name for layer in active if layer.spec.inputs]
        residual = residual_sources(program, self.model, full_precision, readers) \
            if program is not None and quantize_residuals else []
        if quantize == "weights+activations":
            attach_input_quantizers(active, act_bits, unsigned, exponent)
            modules = dict(self.model.named_modules())
            quantizers = attach_output_quantizers([modules[s.name] for s in residual], act_bits, exponent,
                                                  unsigned=[modules[s.name] for s in residual if s.unsigned])
            self.output_quantizers = {source.name: quantizer for source, quantizer in zip(residual, quantizers)}
            by_name = {layer.name: layer for layer in active}
            for source, quantizer in zip(residual, quantizers):
                for reader in source.readers:  # these layers read the source's quantized output as their input
                    share_input_quantizer(by_name[reader], quantizer, source.name)
            self.calibrate(calibration_data if calibration_data is not None else [example_inputs])

    def calibrate(self, batches: Iterable[object]) -> None:
        """Set activation ranges from ``batches``; a layer whose input is never seen goes full precision,
        and an output quantizer that sees nothing is taken out."""
        inputs = [(layer, q) for layer in self.layers if (q := layer.input_quantizer) is not None]
        # a shared input quantizer is an output quantizer too: each calibrated once
        every = list({id(q): q for q in [q for _, q in inputs] + list(self.output_quantizers.values())}.values())
        unseen = set(calibrate(self.model, every, batches))
        for layer, quantizer in inputs:
            if quantizer in unseen:
                remove_input_quantizer(
                    layer,
                    "input not quantized: the layer is never called as a module (its weight is used "
                    "functionally by its parent), so its input cannot be intercepted",
                )
        modules = dict(self.model.named_modules())
        for name, quantizer in list(self.output_quantizers.items()):
            if quantizer in unseen:
                remove_output_quantizer(modules[name])
                del self.output_quantizers[name]

    def report(self) -> Report:
        """MACs, BOPs, relative BOPs, size and per-layer bits and widths of the model as
        ``construct_subnet()`` would compact it (zeroed groups removed, bits kept), rel. BOPs over the
        dense model's MACs x 32 x 32; a warning says so when QASSO has not finished its schedule."""
        self._warn_if_unfinished("report()")
        # The model as construct_subnet() would compact it: zeroed groups of the search space (once
        # it is built) removed, bits kept; rel. BOPs over this model's own, dense MACs.
        dense = count_macs(self.model, self.example_inputs, self.layers)
        removed = self.groups.zero_mask() if self._space is not None else None
        if removed is None or not removed.any():
            return build_report(self.model, self.layers, dense, group_sparsity=self.group_sparsity())
        compact = construct_subnet(self.model, self.groups, removed, share_unchanged=True)
        layers = model_layers(compact, dict(self.unquantized()))
        macs = count_macs(compact, self.example_inputs, layers)
        return build_report(compact, layers, macs, group_sparsity=self.group_sparsity(), dense_macs=dense.total)

    @property
    def groups(self) -> SearchSpace:
        """The pruning search space: every minimally removable structure (found on first use).

        A sequence of :class:`~geta.pruning.groups.Group`; its methods act on many groups at once."""
        return self._search_space()[0]

    def unprunable(self) -> list[UnprunableStructure]:
        """Structures left out of the search space, each with its reasons (and how many alike)."""
        return self._search_space()[1]

    def group_sparsity(self) -> float:
        """Fraction of groups whose weights are all exactly zero; 0.0 until the search space is built
        (by ``groups``, ``zero_random_groups`` or the optimizer) or when there are no groups."""
        if self._space is None:
            return 0.0
        groups = self.groups
        return float(groups.zero_mask().float().mean()) if len(groups) else 0.0

    def zero_random_groups(self, fraction: float, seed: int = 0, round_to: int = 1) -> list[Group]:
        """Zero a random ``fraction`` of the groups (a testing aid); returns the zeroed groups.

        Groups are drawn in random order, passing over any that would empty a tensor dimension.
        ``round_to`` > 1 zeroes whole chunks only, so that widths stay multiples of it (see
        ``SearchSpace.select``); then up to ``fraction`` of the groups are zeroed."""
        if not 0 <= fraction <= 1:
            raise ConfigError(f"fraction={fraction} must lie in [0, 1]")
        groups = self.groups
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(groups), generator=generator)
        mask = groups.select(order, round(fraction * len(groups)), round_to)
        groups.zero_(mask)
        return [groups[i] for i in mask.nonzero().flatten().tolist()]

    def qasso(
        self,
        optimizer: str | type[torch.optim.Optimizer] = "sgd",
        *,
        lr: float,
        config: QassoConfig | None = None,
        callback: Callable[[QassoMetrics], None] | None = None,
        **settings: Any,
    ) -> QASSO:
        """The QASSO optimizer over ``.model``: trains it once to its target with every weight (activation)
        quantizer's bit width inside ``weight_bits`` (``act_bits``). The target is exactly one of
        ``target_sparsity`` (that fraction of the groups zeroed), ``target_rel_bops`` or
        ``target_size_bytes`` (a cost budget: QASSO then decides which groups go and each quantizer's
        width, ``geta.optim.allocation``, and ``opt.allocation`` holds the plan).

        Args:
            optimizer: the base optimizer that takes every step: ``"sgd"``, ``"adam"``, ``"adamw"`` or a
                ``torch.optim.Optimizer`` subclass; keyword arguments that are not QASSO settings
                (``momentum``, ``weight_decay``, ``betas``, ...) go to it.
            lr: learning rate of the weights.
            config: a :class:`geta.QassoConfig` holding every QASSO setting; or give the settings as
                keyword arguments instead (the config's fields):
            target_sparsity: fraction of groups to remove, in [0, 1); round(target x #groups) end zero.
            target_rel_bops: instead, the relative BOPs the compact model ends at, in (0, 1] (its BOPs
                over the dense model's MACs x 32 x 32, as ``report()`` gives them): at most this, and within
                2% under it where the granularity of groups and bits allows (a warning says when it does
                not, or when the budget is out of reach). The group sparsity and the per-layer widths
                are outcomes: at each pruning period start the groups (in saliency order) and every
                quantizer's width are planned from squared-gradient sensitivities, and each quantizer is
                projected onto its planned width.
            target_size_bytes: instead, a budget in bytes for the compact model's packed parameters
                (the report's ``size_bits / 8``), met the same way.
            total_steps: the step budget the stages are laid out over (see ``geta.optim.schedule``):
                warm-up 10%, projection 20%, joint 30%, cool-down the rest by default; ``stage_shares``
                (warm-up, projection, joint fractions) changes those shares.
            weight_bits, act_bits: (low, high) bit ranges, (4, 8) by default; both are projected.
            lr_quant: learning rate of the quantizers' d, q_m, t (default ``min(lr, 1e-3)``);
                quantizer parameters get no weight decay.
            others: ``warmup_steps``, ``projection_periods`` (B), ``projection_steps`` (K_b),
                ``bit_reduction`` (b_r), ``pruning_periods`` (P), ``pruning_steps`` (K_p), ``eps``,
                ``eta``, ``xi`` (Eq. 13 and 14), ``saliency_weights`` (criterion -> weight, see
                ``geta.optim.saliency``), ``round_to`` (remove groups in whole chunks so that every
                width that is a multiple of it stays one, e.g. 16 for a CPU's vector width; the
                target count becomes what whole chunks reach).
            callback: called with ``QassoMetrics`` after each step.
        """
        own = {name: settings.pop(name) for name in list(settings) if name in QASSO_FIELDS}
        if config is None:
            config = QassoConfig.from_settings(own)
        elif own:
            raise ConfigError(f"pass the QASSO settings {sorted(own)} in config=QassoConfig(...) or as keywords, "
                              "not both")
        base = base_optimizer(optimizer, lr, **settings)
        self._optimizer = QASSO(
            self.model, self.groups, self.layers, self.example_inputs, config, base,
            output_quantizers=list(self.output_quantizers.values()), callback=callback,
        )
        return self._optimizer

    def _warn_if_unfinished(self, what: str) -> None:
        """Warn when the latest QASSO optimizer has not taken its ``total_steps`` steps: its target
        sparsity and bit ranges are only reached at the end of its schedule."""
        opt = self._optimizer
        if opt is not None and not opt.finished:
            budget = opt.config.budget
            target = f"{opt.target_groups} groups removed" if budget is None else f"{budget[0]}={budget[1]:g}"
            warnings.warn(
                f"{what}: QASSO has taken {opt.steps_done} of its {opt.schedule.total_steps} steps, so its target "
                f"({target}, bits in the target ranges) is not reached yet; "
                f"{int(opt.pruned.sum())} groups are pruned so far", RuntimeWarning, stacklevel=3,
            )

    def construct_subnet(self) -> nn.Module:
        """A new compact module with every zeroed group physically removed; ``.model`` is untouched.

        The result is checked on the example inputs against ``.model``; a compact model that fails
        or computes something else raises :class:`GetaError` naming the family of groups at fault. It
        warns when QASSO (from :meth:`qasso`) has not finished its schedule."""
        self._warn_if_unfinished("construct_subnet()")
        removed = self.groups.zero_mask()
        compact = construct_subnet(self.model, self.groups, removed)
        reason = check_compact(self.model, compact, self.example_inputs)
        if reason is not None:
            raise GetaError(f"{reason}, after removing {int(removed.sum())} zeroed groups; "
                            f"{self._culprit(removed)} This is a bug in geta's analysis of this model: "
                            "please report it with the model.")
        return compact

    def _culprit(self, removed: Tensor) -> str:
        """Which family of the ``removed`` groups breaks the compact model, as a sentence."""
        family = families(self.groups)
        for f in np.unique(family[removed.numpy()]).tolist():
            alone = removed & torch.from_numpy(family == f)
            compact = construct_subnet(self.model, self.groups, alone, share_unchanged=True)
            why = check_compact(self.model, compact, self.example_inputs)
            if why is not None:
                first = self.groups[int(alone.nonzero()[0])]
                return f"the family of groups like {first.describe()} is at fault ({why})."
        return "no single family is at fault; they break it only together."

    def _search_space(self) -> tuple[SearchSpace, list[UnprunableStructure]]:
        """The groups and the unprunable structures, built on first use: capture (or the constructor's capture
        reused), dependency analysis, frozen tensors left out, and the probe (``verify_space``)."""
        if self._space is None:
            program, self._program = self._program, None
            quantizers = [m for m in self.model.modules() if isinstance(m, Quantizer)]
            per_tensor = [q for q in quantizers if q.axis is None]
            if program is None or len(per_tensor) < len(quantizers):
                # the dependency analysis labels a per-tensor quantizer's call as the tensor it quantizes, so
                # the groups are the same without the calls (which cost export time); a per-channel one ties
                # its parameters to channels
                try:
                    program = capture(self.model, self.example_inputs, leave_out=per_tensor)
                except ModelError as error:  # not traceable whole: the groups inside the parts that trace alone
                    program, untraceable = None, error
            if program is not None:
                table, unprunable = DependencyAnalysis(program, self.model).run()
            else:
                table, unprunable = analyse_parts(self.model, self.example_inputs, untraceable)
            space = SearchSpace(self.model, table)
            frozen = _frozen_groups(space)
            if frozen:
                for name, groups in frozen.items():
                    reason = (f"frozen: {name} has requires_grad=False, and removing these groups would change it; "
                              "unfreeze it to prune them")
                    unprunable.append(table.structure(groups, reason))
                table = table.without(np.unique(np.concatenate(list(frozen.values()))))
                space = SearchSpace(self.model, table)
            failures = verify_space(self.model, self.example_inputs, space)
            if failures:
                unprunable += [table.structure(f.groups, probe_reason(f.reason)) for f in failures]
                table = table.without(np.concatenate([f.groups for f in failures]))
                space = SearchSpace(self.model, table)
            self._space = (space, unprunable)
        return self._space

    def unquantized(self) -> list[tuple[str, str]]:
        """(layer name, reason) for every quantizable layer left at full precision, weights or input."""
        return [(layer.name, layer.full_precision_reason) for layer in self.layers if layer.full_precision_reason]

    def _run_example(self) -> list[QuantizableLayer]:
        """Run the example once (checking that it works); return the layers in the order they ran."""
        order: list[QuantizableLayer] = []
        by_module = {id(layer.module): layer for layer in self.layers}

        def note(module: nn.Module, _args: object) -> None:
            layer = by_module[id(module)]
            if layer not in order:
                order.append(layer)

        handles = [layer.module.register_forward_pre_hook(note) for layer in self.layers]
        try:
            with eval_mode(self.model), torch.no_grad():
                self.example_inputs.run(self.model)
        except Exception as error:
            raise ModelError(
                f"the model cannot run on example_inputs ({type(error).__name__}: {error}); pass a tensor, a tuple "
                "of positional inputs or a dict of keyword inputs that model(...) accepts"
            ) from error
        finally:
            for handle in handles:
                handle.remove()
        return order

    def _unquantized_program(self, quantize_residuals: bool) -> torch.export.ExportedProgram | None:
        """The graph of the model without its quantizers, for the analyses that place activation quantizers
        (signedness, residual sources) and, while every quantizer is per tensor, for the search space (see
        :meth:`_search_space`); None, with a warning of what is lost, if it cannot be exported.

        The weight quantizers are attached by then and left out of the capture, so that the graph names the
        weights as the model does."""
        quantizers = [m for m in self.model.modules() if isinstance(m, Quantizer)]
        try:
            return capture(self.model, self.example_inputs, leave_out=quantizers)
        except ModelError as error:
            lost = " and no residual is quantized" if quantize_residuals else ""
            warnings.warn(f"{error} Input quantizers are all signed (unsigned ones would gain a bit){lost}.",
                          stacklevel=3)
            return None


def _nonnegative_inputs(program: torch.export.ExportedProgram, layers: list[QuantizableLayer]) -> set[str]:
    """Names of the layers whose every input activation is provably non-negative in ``program``."""
    signature = program.graph_signature
    state = set(signature.inputs_to_parameters) | set(signature.inputs_to_buffers)
    state |= set(signature.inputs_to_lifted_tensor_constants)
    nonnegative = nonnegative_nodes(program.graph)
    result = set()
    for layer in layers:
        inputs = layer_inputs(program.graph, layer.name, state)
        if inputs and all(node in nonnegative for node in inputs):
            result.add(layer.name)
    return result


def _frozen_groups(space: SearchSpace) -> dict[str, np.ndarray]:
    """For each frozen parameter (``requires_grad=False``) that groups cut, those groups.

    A frozen tensor is the user's promise that it stays as it is; pruning would zero its slices. Groups
    found in several frozen tensors are listed under the first."""
    found: dict[str, np.ndarray] = {}
    taken = np.zeros(len(space), dtype=bool)
    for member in space.members:
        if member.trainable and not member.tensor.requires_grad:
            groups = np.unique(member.groups.numpy())
            groups = groups[~taken[groups]]
            if len(groups):
                taken[groups] = True
                found[member.name] = groups
    return found


def check_not_wrapped(model: nn.Module) -> None:
    """Refuse a model wrapped for data parallelism: GETA must see (and copy) the module itself.

    A wrapper's forward scatters, gathers or shards parameters, which torch.export cannot follow, and
    a copy of a DDP wrapper would hold a second process group's handles."""
    wrappers: list[type] = [nn.DataParallel, nn.parallel.DistributedDataParallel]
    fsdp = sys.modules.get("torch.distributed.fsdp")  # a model wrapped in FSDP has imported it
    if fsdp is not None:
        wrappers += [fsdp.FullyShardedDataParallel, fsdp.FSDPModule]
    for wrapper in wrappers:
        if isinstance(model, wrapper):
            raise ModelError(
                f"the model is wrapped in {wrapper.__name__}; pass the module itself to GETA and wrap g.model "
                "afterwards: g = geta.GETA(model.module, x); opt = g.qasso(...); "
                f"wrapped = {wrapper.__name__}(g.model); train wrapped with opt"
            )


def check_finite_parameters(model: nn.Module) -> None:
    """Raise ModelError naming the first floating parameter that holds NaN or inf: its quantizer's range
    and every gradient through it would be non-finite."""
    for name, parameter in model.named_parameters():
        if parameter.is_floating_point() and not bool(torch.isfinite(parameter).all()):
            bad = int((~torch.isfinite(parameter)).sum())
            raise ModelError(f"parameter {name} holds {bad} non-finite values (NaN or inf); load finite weights first")
