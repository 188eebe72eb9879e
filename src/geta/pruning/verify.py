"""A search space that verifies itself: every family of groups is probed by removing some of its groups.

The dependency analysis reasons from the traced graph, but a module's Python code can hold sizes the
graph does not show (a head count kept as an attribute, a config's ``head_dim``). So the analysis
proposes and a probe disposes. A *family* is the groups that share tensor dimensions (the channels of
one layer and everything tied to them, the heads of one attention block). A probe zeroes a random
proper part of each family under test (families of one size lose different counts), builds the
compact model, runs the example inputs through both, and compares. One probe covers every family;
only when it fails are the families bisected, so a model that passes costs one construction and two
forward passes. Families whose removal crashes the
compact model or changes its output become unprunable, with the exception's first line or the
measured difference as the reason.

The probe passes per-tensor quantizers through (they act on each value alone, with scalar parameters,
so removing structures cannot change what they do); per-channel ones are cut with their channels and
run. Outputs are compared to ``TOLERANCE`` of each output's scale. In :func:`check_compact` (which
``construct_subnet`` uses, quantizers on) activation quantizers round, and a smaller matrix product
sums in another order, so a value on a rounding boundary can move by one level without any structure
being wrong; a difference that disappears when the activation quantizers are passed through (weight
quantizers stay: they act elementwise on the weights and slice exactly) is that, not a wrong model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor, nn

from geta.core.inputs import ExampleInputs
from geta.core.modes import eval_mode
from geta.errors import GetaError, error_summary
from geta.graph.capture import passed_through
from geta.pruning.groups import SearchSpace
from geta.pruning.subnet import construct_subnet
from geta.quant.prepare import activation_quantizers
from geta.quant.quantizer import Quantizer

TOLERANCE = 1e-4


def families(space: SearchSpace) -> np.ndarray:
    """Family number of each group: groups are in one family when they cut a common tensor dimension."""
    if not len(space):
        return np.zeros(0, dtype=np.int64)
    groups = np.concatenate([m.groups.numpy() for m in space.members])
    members = np.concatenate([np.full(len(m.groups), k) for k, m in enumerate(space.members)]) + len(space)
    size = len(space) + len(space.members)
    graph = coo_matrix((np.ones(len(groups), dtype=np.int8), (groups, members)), shape=(size, size))
    label = connected_components(graph, directed=False)[1][: len(space)]
    _, number = np.unique(label, return_inverse=True)
    return number


@dataclass(frozen=True)
class FamilyFailure:
    """A family whose removal breaks the compact model: its groups and why."""

    groups: np.ndarray
    reason: str


def verify_space(model: nn.Module, inputs: ExampleInputs, space: SearchSpace, seed: int = 0) -> list[FamilyFailure]:
    """Probe every family of ``space`` (see the module notes); the families that fail, with their reasons.

    ``model``'s tensors are zeroed for each probe and restored exactly afterwards."""
    family = families(space)
    count = int(family.max()) + 1 if len(family) else 0
    members = [np.flatnonzero(family == f) for f in range(count)]
    generator = np.random.default_rng(seed)
    probe = _Probe(model, inputs, space)
    failures: list[FamilyFailure] = []
    pending = list(range(count))
    # per-tensor quantizers map each value on its own with scalar parameters, so removing structures
    # cannot change what they do: the probe passes them through (and is spared their arithmetic, most of a
    # quantization-aware forward pass); per-channel ones are cut with their channels and stay
    per_tensor = [m for m in model.modules() if isinstance(m, Quantizer) and m.axis is None]
    with _zero_tensors_filled(model, seed), passed_through(per_tensor):
        while pending:
            removed = _sample(space, [members[f] for f in pending], generator)
            reason = probe.failure(removed)
            if reason is None:
                break
            found = _bisect(probe, space, pending, members, generator, reason)
            failures.extend(FamilyFailure(members[f], why) for f, why in found.items())
            pending = [f for f in pending if f not in found]
    return failures


@contextlib.contextmanager
def _zero_tensors_filled(model: nn.Module, seed: int) -> Iterator[None]:
    """Fill every all-zero floating parameter of ``model`` with small random values for the block.

    A zero-initialized layer (torchvision's ViT head, LoRA's B) makes the output blind to everything
    before it, and a probe comparing outputs would then pass any compact model that does not crash."""
    generator = torch.Generator().manual_seed(seed)
    saved = []
    with torch.no_grad():
        for parameter in {id(p): p for p in model.parameters()}.values():
            if parameter.is_floating_point() and parameter.numel() > 1 and _all_zero(parameter):
                fan_in = parameter[0].numel() if parameter.dim() > 1 else parameter.numel()
                noise = torch.randn(parameter.shape, generator=generator) / fan_in**0.5
                saved.append(parameter)
                parameter.copy_(noise.to(parameter))
        try:
            yield
        finally:
            for parameter in saved:
                parameter.zero_()


def _all_zero(tensor: Tensor) -> bool:
    """Whether every value of ``tensor`` is zero; its first row (a view) is looked at first, since a
    trained or randomly initialized tensor shows a nonzero there and is spared a whole scan."""
    first_row = tensor[(0,) * (tensor.dim() - 1)]
    return not bool(first_row.any()) and not bool(tensor.any())


def probe_reason(reason: str) -> str:
    """The unprunable reason of a family that failed its probe."""
    return (f"probed: with part of this family removed, {reason}. A module that keeps a width or head "
            "count as an attribute can declare it with geta.register_attention (heads) or a width handler")


def check_compact(model: nn.Module, compact: nn.Module, inputs: ExampleInputs) -> str | None:
    """Why ``compact`` does not compute what ``model`` computes on ``inputs``, or None when it does."""
    with eval_mode(model), eval_mode(compact), torch.no_grad():
        expected = inputs.run(model)
        try:
            actual = inputs.run(compact)
        except Exception as error:  # any failure of the user's forward is the finding itself
            return f"the compact model fails: {error_summary(error)}"
        difference = output_difference(expected, actual)
        if difference is None or difference <= TOLERANCE:
            return None
        with activations_unquantized(model), activations_unquantized(compact):
            unquantized = output_difference(inputs.run(model), inputs.run(compact))
    if unquantized is not None and unquantized <= TOLERANCE:
        return None
    return (f"the compact model's output differs by {difference:.3g} of the output's scale "
            f"(tolerance {TOLERANCE:g})")


def output_difference(expected: object, actual: object) -> float | None:
    """Largest difference between two outputs relative to each tensor's scale; inf when their
    structure, shapes or integer values differ; None when there is no tensor to compare."""
    a, b = _tensors(expected), _tensors(actual)
    if len(a) != len(b):
        return float("inf")
    worst: float | None = None
    for x, y in zip(a, b):
        if x.shape != y.shape or x.dtype != y.dtype:
            return float("inf")
        if not (x.is_floating_point() or x.is_complex()):
            error = 0.0 if torch.equal(x, y) else float("inf")
        elif not x.numel():
            error = 0.0
        else:
            both_nan = torch.isnan(x) & torch.isnan(y)
            gap = torch.where(both_nan | (x == y), torch.zeros_like(x), (x - y).abs())
            scale = float(x[torch.isfinite(x)].abs().max()) if torch.isfinite(x).any() else 0.0
            largest = float(gap.max())
            error = largest / scale if scale > 0 else (float("inf") if largest > 0 else 0.0)
        worst = error if worst is None else max(worst, error)
    return worst


@contextlib.contextmanager
def activations_unquantized(model: nn.Module) -> Iterator[None]:
    """Pass every activation quantizer (input and output) of ``model`` through for the block."""
    with passed_through(activation_quantizers(model)):
        yield


class _Probe:
    """Zeroes chosen groups of ``model`` in place, builds the compact model, compares, restores."""

    def __init__(self, model: nn.Module, inputs: ExampleInputs, space: SearchSpace) -> None:
        self.model, self.inputs, self.space = model, inputs, space

    def failure(self, removed: Tensor) -> str | None:
        with torch.no_grad():
            saved = self._removed_slices(removed)
            try:
                self.space.zero_(removed)
                try:
                    compact = construct_subnet(self.model, self.space, removed, share_unchanged=True)
                except Exception as error:  # a construction that fails is what the probe looks for
                    return f"the compact model cannot be built: {error_summary(error)}"
                return check_compact(self.model, compact, self.inputs)
            finally:
                for tensor, dim, positions, values in saved:
                    tensor.index_copy_(dim, positions, values)

    def _removed_slices(self, removed: Tensor) -> list[tuple[Tensor, int, Tensor, Tensor]]:
        """(tensor, dim, positions, their values) for every slice ``zero_(removed)`` will zero.

        Only the slices are kept, not whole tensors (on BERT-base a whole copy is the size of the model);
        each holds the original values, so writing them back in any order restores the tensor exactly."""
        positions: dict[tuple[int, int], tuple[Tensor, list[Tensor]]] = {}
        for member in self.space.members:
            if member.trainable:
                chosen = member.positions[removed[member.groups]]
                if len(chosen):
                    positions.setdefault((id(member.tensor), member.dim), (member.tensor, []))[1].append(chosen)
        saved = []
        for (_, dim), (tensor, parts) in positions.items():
            index = torch.cat(parts).unique().to(tensor.device)
            saved.append((tensor, dim, index, tensor.index_select(dim, index)))
        return saved


def _sample(space: SearchSpace, families: list[np.ndarray], generator: np.random.Generator) -> Tensor:
    """A random proper part of each family's groups, leaving every tensor dimension a position.

    Families of one size get different counts where the size allows (1 .. size - 1 in a random order,
    repeated), so that code sizing one family's tensors from another (a bias made for one block's
    heads and reused by the next) is caught: equal counts would hide it."""
    counts: dict[int, list[int]] = {}
    for size in sorted({len(groups) for groups in families}):
        same = sum(len(groups) == size for groups in families)
        choices = np.arange(1, size) if size > 1 else np.ones(1, dtype=np.int64)
        counts[size] = np.resize(generator.permutation(choices), same).tolist()
    wanted, rest = [], []
    for groups in families:
        order = generator.permutation(groups)
        take = counts[len(groups)].pop()
        wanted.append(order[:take])
        rest.append(order[take:])
    ranked = torch.from_numpy(np.concatenate(wanted + rest)).long()
    count = sum(len(w) for w in wanted)
    while True:
        try:
            return space.select(ranked, count)
        except GetaError:
            count //= 2


def _bisect(probe: _Probe, space: SearchSpace, families: list[int], members: list[np.ndarray],
            generator: np.random.Generator, reason: str) -> dict[int, str]:
    """Families among ``families`` (which fail together, for ``reason``) to leave out.

    Families that fail on their own are found by halving. When a set fails but each half passes, its
    families fail only together: the second half's are added one by one to the first, and those whose
    addition fails are left out."""
    if len(families) == 1:
        return {families[0]: reason}
    half = len(families) // 2
    found: dict[int, str] = {}
    for part in (families[:half], families[half:]):
        why = probe.failure(_sample(space, [members[f] for f in part], generator))
        if why is not None:
            found.update(_bisect(probe, space, part, members, generator, why))
    if found:
        return found
    accepted = list(families[:half])
    for f in families[half:]:
        why = probe.failure(_sample(space, [members[g] for g in [*accepted, f]], generator))
        if why is None:
            accepted.append(f)
        else:
            found[f] = f"{why} (only when removed together with other families)"
    return found


def _tensors(value: object) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []
