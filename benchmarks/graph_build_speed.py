"""Time to build the pruning search space: geta against Torch-Pruning and Only-Train-Once.

What is measured, for two models (random init, eval mode, CPU, float32):

* ``resnet50``: ``transformers.ResNetForImageClassification(ResNetConfig(num_labels=1000))`` on one
  1x3x224x224 image: ResNet-50 v1.5 with its 1000-class head, the architecture of
  ``torchvision.models.resnet50()`` (the same 25,557,032 parameters and 11,456 geta groups), built
  from transformers since the benchmarks' venv (.venv) has no torchvision;
* ``bert``: ``transformers.BertModel(BertConfig())`` (BERT-base) on ``input_ids`` of shape 1x128;

and for each model, these candidates:

* ``geta/none``, ``geta/weights``, ``geta/weights+activations``: ``geta.GETA(model, inputs,
  quantize=MODE)`` is constructed outside the timed region (it deep-copies the model, attaches and
  calibrates quantizers); the timed region is the first access of ``g.groups``, i.e. the
  ``torch.export`` capture, the dependency analysis, the construction of the groups and the probe that
  verifies them (``geta/pruning/verify.py``: a compact model built with part of every family removed and
  the example inputs run through both it and the model; its share is the ``probe s`` column). With
  ``weights+activations`` the constructor makes the capture (the analyses that place activation
  quantizers read it, and the search space reuses it), and its time is added to the sample: a sample
  is every capture geta makes plus the rest of the build (the captures' share is the ``graph s``
  column). The inputs
  are a tensor for ResNet50 and ``{"input_ids": ...}`` for BERT. A fresh ``GETA`` is built for
  every sample, so each sample is a cold build of the search space (``groups`` is cached);
* ``torch-pruning``: ``torch_pruning.DependencyGraph().build_dependency(model,
  example_inputs=...)`` on the plain model (the same tensor / dict as geta; Torch-Pruning calls
  ``model(**inputs)`` on a dict);
* ``oto``: ``only_train_once.OTO(model, dummy_input)``, which traces the model, builds its
  pruning dependency graph and partitions it into node groups. OTO passes ``dummy_input``
  positionally to ``torch.jit`` tracing, so BERT gets the ``input_ids`` tensor itself.

Every sample runs on a fresh deep copy of the model, made outside the timed region (geta's
constructor makes one; for Torch-Pruning and OTO the benchmark does). One sample is one call
timed with ``time.perf_counter``, after a ``gc.collect()`` outside the timed region; warnings and
the tools' own prints are silenced for every candidate alike. A first, warm-up round is excluded from the
statistics (it pays one-off costs: lazy imports, registration of ONNX symbolics, first use of
``torch.export``); its time is shown in the ``first s`` column. Machines are noisy, so the
measurements are interleaved: every round takes one sample of every (model, candidate) pair, in
an order shuffled each round, and the table reports the median and the minimum over the
rounds (contention from other processes only ever adds time). For each geta row it also shows
the ratio of geta's median to Torch-Pruning's and to OTO's median on the same model. A candidate
that raises is reported as ``failed: <reason>`` and dropped; the others go on.

The ``result`` column is a sanity check that each tool did its work, counted in the tool's own
unit, so it is NOT comparable across tools: geta counts minimally removable structures
(``len(g.groups)``), Torch-Pruning its coupled pruning groups (``DG.get_all_groups()``), OTO its
node groups.

Target: geta builds the search space in under 1 s (median) on each model, both plain
(``none``) and quantization-aware (``weights``, ``weights+activations``).

Only-Train-Once 3.0.1 targets older torch: it imports ``torch.onnx._globals`` and calls
``torch.onnx._optimize_graph``, both moved in torch 2.13 to
``torch.onnx._internal.torchscript_exporter``, and it expects the ONNX symbolic functions to be
registered on import of ``torch.onnx``, which torch 2.13 only does when an export starts (without
it BERT's ``scaled_dot_product_attention`` "is not supported"). ``_shim_torch_onnx_for_oto`` below
aliases the two names and triggers the registration, in this benchmark only.

Benchmark-only dependencies (not needed by geta itself), from the repository root:

    .venv/bin/pip install -c constraints.txt torch-pruning only_train_once

Run from the repository root (default: 5 rounds after the warm-up, both models; about five
minutes on two CPU threads):

    .venv/bin/python benchmarks/graph_build_speed.py [--rounds N] [--models resnet50,bert]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import geta
from geta.run.latency import shuffled_rounds

MODELS = ("resnet50", "bert")
GETA_MODES = ("none", "weights", "weights+activations")
TP = "torch-pruning"
OTO = "oto"
TARGET_S = 1.0


def _shim_torch_onnx_for_oto() -> list[str]:
    """BENCHMARK-ONLY compatibility shim so that only_train_once 3.0.1 runs on torch 2.13.

    Returns what it changed. Call before importing ``only_train_once``. Nothing in geta needs it.
    """
    done: list[str] = []
    import torch.onnx
    from torch.onnx._internal.torchscript_exporter import _globals
    from torch.onnx._internal.torchscript_exporter import utils as torchscript_utils

    # OTO: `from torch.onnx._globals import GLOBALS` (moved in torch 2.13).
    if "torch.onnx._globals" not in sys.modules:
        sys.modules["torch.onnx._globals"] = _globals
        torch.onnx._globals = _globals
        done.append("torch.onnx._globals -> torch.onnx._internal.torchscript_exporter._globals")
    # OTO: `torch.onnx._optimize_graph(trace_graph, OperatorExportTypes.ONNX)` (moved in torch 2.13).
    if not hasattr(torch.onnx, "_optimize_graph"):
        torch.onnx._optimize_graph = torchscript_utils._optimize_graph
        done.append("torch.onnx._optimize_graph -> torch.onnx._internal.torchscript_exporter.utils")
    # OTO runs the `_jit_pass_onnx` conversion itself, outside torch.onnx.export, so the symbolic
    # functions (e.g. aten::scaled_dot_product_attention for BERT) must be registered beforehand.
    torchscript_utils._trigger_symbolic_function_registration()
    done.append("ONNX symbolics registered (torchscript_exporter.utils._trigger_symbolic_function_registration)")
    return done


@contextlib.contextmanager
def _quiet():
    """Silence warnings and prints (OTO prints on every call; tracers warn) for every candidate alike."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@dataclass
class Candidate:
    """One tool (or geta mode) on one model: ``prepare`` runs untimed and returns the timed call."""

    model: str
    name: str
    prepare: Callable[[], Callable[[], object]]
    count: Callable[[object], int]
    samples: list[float] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)
    captures: list[float] = field(default_factory=list)
    first: float | None = None
    result: int | None = None
    error: str | None = None

    def sample(self) -> float:
        _CAPTURE_SECONDS.clear()
        with _quiet():
            call = self.prepare()
        built = sum(_CAPTURE_SECONDS)  # the captures geta's constructor made: part of the search space's build
        gc.collect()
        _PROBE_SECONDS.clear()
        with _quiet():
            start = time.perf_counter()
            out = call()
            elapsed = time.perf_counter() - start
            if self.result is None:
                self.result = self.count(out)
        del out, call
        self.probes.append(sum(_PROBE_SECONDS))
        self.captures.append(sum(_CAPTURE_SECONDS))
        return elapsed + built


_PROBE_SECONDS: list[float] = []
_verify_space = geta.api.verify_space


def _timed_verify_space(*args: object, **kwargs: object) -> object:
    """geta's probe of the search space (inside the timed region), its time recorded for the table."""
    start = time.perf_counter()
    try:
        return _verify_space(*args, **kwargs)
    finally:
        _PROBE_SECONDS.append(time.perf_counter() - start)


geta.api.verify_space = _timed_verify_space
_CAPTURE_SECONDS: list[float] = []
_capture = geta.api.capture


def _timed_capture(*args: object, **kwargs: object) -> object:
    """geta's torch.export capture (in the constructor or in the timed region), its time recorded."""
    start = time.perf_counter()
    try:
        return _capture(*args, **kwargs)
    finally:
        _CAPTURE_SECONDS.append(time.perf_counter() - start)


geta.api.capture = _timed_capture


def _build_model(name: str) -> tuple[nn.Module, object, object]:
    """(model, inputs for geta and Torch-Pruning, dummy input for OTO)."""
    torch.manual_seed(0)
    import transformers

    if name == "resnet50":
        x = torch.randn(1, 3, 224, 224)
        return transformers.ResNetForImageClassification(transformers.ResNetConfig(num_labels=1000)).eval(), x, x
    config = transformers.BertConfig()
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, 128))
    return model, {"input_ids": ids}, ids


def _candidates(name: str, oto_cls: type | None, oto_error: str | None) -> list[Candidate]:
    model, inputs, oto_input = _build_model(name)
    out: list[Candidate] = []
    def geta_prepare(mode: str) -> Callable[[], Callable[[], object]]:
        def prepare() -> Callable[[], object]:
            g = geta.GETA(model, inputs, quantize=mode)  # a fresh one per sample, untimed
            return lambda: g.groups  # timed: the first access builds (and caches) the search space

        return prepare

    for mode in GETA_MODES:
        out.append(Candidate(name, f"geta/{mode}", prepare=geta_prepare(mode), count=len))
    import torch_pruning as tp

    def tp_prepare() -> Callable[[], object]:
        copied = copy.deepcopy(model)  # a fresh copy per sample, untimed, as geta makes one
        return lambda: tp.DependencyGraph().build_dependency(copied, example_inputs=inputs)

    def oto_prepare() -> Callable[[], object]:
        copied = copy.deepcopy(model)
        return lambda: oto_cls(copied, oto_input)

    out.append(Candidate(name, TP, prepare=tp_prepare, count=lambda dg: len(list(dg.get_all_groups()))))
    oto = Candidate(name, OTO, prepare=oto_prepare, count=lambda o: len(o._graph.node_groups))
    if oto_cls is None:
        oto.error = oto_error
    out.append(oto)
    return out


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:150]}"


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after the warm-up round (default 5)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ",".join(MODELS))
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models or args.rounds < 1:
        parser.error(f"--models takes a comma-separated subset of {','.join(MODELS)}; --rounds >= 1")

    oto_cls, oto_error, shimmed = None, None, []
    try:
        shimmed = _shim_torch_onnx_for_oto()
        with _quiet():
            from only_train_once import OTO as oto_cls
    except Exception as error:  # reported in the table
        oto_error = _reason(error)

    def version(dist: str) -> str:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as v

        try:
            return v(dist)
        except PackageNotFoundError:
            return "not installed"

    print("graph build speed: geta search space vs Torch-Pruning DependencyGraph vs OTO graph")
    print(
        f"torch {torch.__version__}, geta {version('geta')}, torch-pruning {version('torch-pruning')}, "
        f"only_train_once {version('only_train_once')}, python {platform.python_version()}"
    )
    print(
        f"cpu: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"rounds: 1 warm-up (excluded, 'first s') + {args.rounds} timed, interleaved, order shuffled per round")
    if shimmed:
        print("OTO benchmark-only shim:")
        for line in shimmed:
            print("  " + line)
    print(f"target: geta median < {TARGET_S:.0f} s on each model, plain and quantization-aware\n")

    candidates: list[Candidate] = []
    for name in models:
        candidates += _candidates(name, oto_cls, oto_error)

    started = time.perf_counter()
    for round_, order in enumerate(shuffled_rounds(candidates, args.rounds + 1)):
        for cand in order:
            if cand.error is not None:
                continue
            try:
                elapsed = cand.sample()
            except Exception as error:
                cand.error = _reason(error)
                continue
            if round_ == 0:
                cand.first = elapsed
            else:
                cand.samples.append(elapsed)
        label = "warm-up" if round_ == 0 else f"round {round_}/{args.rounds}"
        print(f"  {label} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    header = (
        f"{'model':<9} {'tool/mode':<26} {'median s':>9} {'min s':>7} {'graph s':>8} {'probe s':>8} {'first s':>8} "
        f"{'/TP':>6} {'/OTO':>6} {'result':>7}"
    )
    print(header)
    print("-" * len(header))
    verdicts = []
    for name in models:
        rows = [c for c in candidates if c.model == name]
        medians = {c.name: statistics.median(c.samples) for c in rows if c.error is None and c.samples}
        for c in rows:
            if c.error is not None:
                print(f"{name:<9} {c.name:<26} failed: {c.error}")
                continue
            med = medians[c.name]
            ratios = ["", ""]
            if c.name.startswith("geta/"):
                ratios = [f"{med / medians[ref]:.2f}" if ref in medians else "-" for ref in (TP, OTO)]
            shares = [_fmt(statistics.median(part[1:])) if c.name.startswith("geta/") and part[1:] else "-"
                      for part in (c.captures, c.probes)]
            print(
                f"{name:<9} {c.name:<26} {_fmt(med):>9} {_fmt(min(c.samples)):>7} {shares[0]:>8} {shares[1]:>8} "
                f"{_fmt(c.first):>8} "
                f"{ratios[0]:>6} {ratios[1]:>6} {c.result if c.result is not None else '-':>7}"
            )
        for mode in GETA_MODES:
            key = f"geta/{mode}"
            ok = key in medians and medians[key] < TARGET_S
            got = f"{medians[key]:.3f} s" if key in medians else "failed"
            verdicts.append(f"{name} geta/{mode}: median {got} -> {'PASS' if ok else 'FAIL'}")
    print(
        "\ngraph s: the median part of geta's time spent in torch.export captures, the constructor's included\n"
        "(included in median s).\n"
        "probe s: the median part of geta's time spent probing the search space (one compact model built and\n"
        "two forward passes when every family passes; included in median s).\n"
        "/TP, /OTO: geta's median over the tool's median on the same model (< 1 means geta is faster).\n"
        "result: the tool's own count (geta: removable structures; TP: pruning groups; OTO: node groups)."
    )
    print(f"\ntarget geta median < {TARGET_S:.0f} s:")
    for line in verdicts:
        print("  " + line)


if __name__ == "__main__":
    main()
