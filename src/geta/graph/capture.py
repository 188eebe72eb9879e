"""Graph capture with ``torch.export`` (non-strict, eval mode), the one tracer geta uses."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn
from torch.fx import _lazy_graph_module
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from geta.core.inputs import ExampleInputs
from geta.core.modes import eval_mode
from geta.errors import ModelError
from geta.quant.quantizer import Quantizer


@contextlib.contextmanager
def without_stack_traces() -> Iterator[None]:
    """Tell FX not to record a Python stack trace on every node for the block.

    geta reads shapes and module stacks, never stack traces, and extracting one per node took 10 to
    30% of an export (ResNet50 and BERT-base, plain and quantization-aware)."""
    previous = torch.fx.config.do_not_emit_stack_traces
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        torch.fx.config.do_not_emit_stack_traces = previous


def without_code_generation() -> contextlib.AbstractContextManager[None]:
    """Let the graph modules export makes generate their Python code when first called, not when built.

    geta reads the nodes and never calls the graph, and export regenerates the code of its graph modules
    several times (0.04 of BERT-base's 0.32 s). The switch is torch's own (``torch.fx._lazy_graph_module``,
    which ``torch.compile`` uses); where a torch lacks it, code is generated as usual."""
    lazy = getattr(_lazy_graph_module, "_use_lazy_graph_module", None)
    return lazy(True) if lazy is not None else contextlib.nullcontext()


@contextlib.contextmanager
def quantizers_as_calls(model: nn.Module) -> Iterator[None]:
    """Trace every :class:`Quantizer` of ``model`` as one ``geta::quantizer_call`` node without its
    parameters for the block.

    Dependency analysis needs where a quantizer runs and on which tensor (its module identity comes
    with the node's ``nn_module_stack``), not its arithmetic; how its parameters tie to channels it
    reads off the quantizer itself. Export's cost grows with every traced op and lifted parameter:
    a quantizer's kernel and its three parameters made BERT-base's weights+activations capture
    about twice as long as the plain model's. The parameters are taken off the quantizers and put
    back, the same objects in the same order, when the block ends.
    """
    quantizers = [m for m in model.modules() if isinstance(m, Quantizer)]
    stashed = [(q, dict(q.named_parameters(recurse=False))) for q in quantizers]
    try:
        for quantizer, parameters in stashed:
            for name in parameters:
                delattr(quantizer, name)
            quantizer.traced_as_call = True
        yield
    finally:
        for quantizer, parameters in stashed:
            quantizer.traced_as_call = False
            for name, parameter in parameters.items():
                quantizer.register_parameter(name, parameter)


@contextlib.contextmanager
def passed_through(quantizers: list[Quantizer]) -> Iterator[None]:
    """Make each of ``quantizers`` return its input unchanged for the block (traced, it leaves no node)."""
    previous = [q.passed_through for q in quantizers]
    for quantizer in quantizers:
        quantizer.passed_through = True
    try:
        yield
    finally:
        for quantizer, before in zip(quantizers, previous):
            quantizer.passed_through = before


def capture(
    model: nn.Module, inputs: ExampleInputs, *, leave_out: list[Quantizer] | None = None
) -> torch.export.ExportedProgram:
    """Export ``model`` on ``inputs`` in eval mode, geta's quantizers traced as calls (see
    :func:`quantizers_as_calls`) but those of ``leave_out``, which pass their input through and leave no
    node (a weight one parametrizes reads as its original tensor). Raise ModelError naming the fix if the
    model cannot be traced.

    A forward that branches on a tensor's value (a padding computed with ``.item()``, an
    ``if mask.any():``) stops export at a data-dependent guard. Such a model is exported again with
    real-tensor propagation, which decides each guard from the example's values, as
    ``torch.export.draft_export`` does. The graph then holds for the example only, and that is all the
    analysis needs: its result is checked by running the compact model eagerly (pruning/verify.py)."""
    with (eval_mode(model), without_stack_traces(), without_code_generation(), quantizers_as_calls(model),
          passed_through(leave_out or [])):
        try:
            return torch.export.export(model, inputs.args, kwargs=inputs.kwargs, strict=False)
        except Exception as error:
            if not _data_dependent(error):
                raise _untraceable(error) from error
            try:
                with _real_tensor_propagation():
                    return torch.export.export(model, inputs.args, kwargs=inputs.kwargs, strict=False)
            except Exception as retry_error:
                raise _untraceable(retry_error) from retry_error


def _data_dependent(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) is a guard on a data-dependent value."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, GuardOnDataDependentSymNode):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def _real_tensor_propagation() -> Iterator[None]:
    """Decide data-dependent guards from real values for the block, without the warning torch logs
    for every guard it decides that way."""
    shapes_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = shapes_log.level
    shapes_log.setLevel(logging.ERROR)
    try:
        with torch._functorch.config.patch(fake_tensor_propagate_real_tensors=True):
            yield
    finally:
        shapes_log.setLevel(level)


def _untraceable(error: BaseException) -> ModelError:
    return ModelError(
        f"torch.export could not trace the model ({type(error).__name__}: {error}). "
        "Make the forward pass traceable (no data-dependent Python control flow on tensor values; "
        "for transformers models pass use_cache=False), or pass example inputs that take a traceable path."
    )


def op_of(node: torch.fx.Node) -> object:
    """What ``node`` calls, without the overload (``aten.add`` for ``aten.add.Tensor``); the target itself
    where it has no overloads (``operator.getitem``, a placeholder's name)."""
    return getattr(node.target, "overloadpacket", node.target)


def module_path(stack_entry: tuple[str, object]) -> str:
    """The module's qualified name from an ``nn_module_stack`` entry, without the ``@N`` call suffix."""
    return stack_entry[0].split("@")[0]
