"""A broad sweep of geta over every transformers model type, each built from a tiny random config.

The model types are those of transformers' auto mappings (base models, causal LMs, sequence and image
classifiers). Each type gets one model class: its base model (``MODEL_MAPPING_NAMES``) where it has one,
else its causal LM, sequence or image classifier. Its default config is shrunk by a general rule (every
width, depth, head count, vocabulary and image size found among a list of common attribute names, in the
config and in its sub-configs), the model is built offline with random weights, and example inputs are
made from its ``main_input_name``. Then the equivalence invariant runs in two quantization modes:
30% of the groups zeroed, the compact model must compute what the zeroed one computes (every floating
output within 1e-4 of its scale). With activations quantized, a difference that disappears when the
activation quantizers are passed through counts as rounding (a value on a level boundary moves one
level when a smaller product sums in another order), as geta's own check has it; the record keeps it.

Each (type, mode) case ends as ``passed``, ``unprunable`` (no groups: the top reasons of
``g.unprunable()``), ``failed`` (geta raised or the invariant broke) or ``not buildable`` (the tiny model
could not be built or run on its inputs before geta was involved; not counted).

Command, from the repository root (the types run in a worker process, restarted if a model kills it)::

    OMP_NUM_THREADS=1 .venv/bin/python -m tests.pruning.transformers_sweep [--types a,b] [--out FILE.json]

``--every 3`` runs every third type; ``--resume`` keeps the records already in ``--out`` and runs the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from torch import nn

MODES = ("none", "weights+activations")
MAPPINGS = (  # the first mapping that has a type gives its model class
    "MODEL_MAPPING_NAMES",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
)
BUILD_LIMIT_S = 120  # building and running the tiny model
CASE_LIMIT_S = 300  # geta on one mode
FRACTION, SEED, TOLERANCE = 0.3, 0, 1e-4
BATCH, LENGTH, IMAGE, VOCAB = 2, 8, 32, 99
SPECIAL_IDS = 90  # special token ids at or above this are moved into [90, 99); input ids stay below it

# Integer config attributes set to one small value each: hidden 32, 4 heads of 8, 2 layers, FFN 64.
_INT_SIZES: dict[str, int] = {
    **dict.fromkeys(["hidden_size", "d_model", "n_embd", "dim", "embed_dim", "embedding_size",
                     "word_embed_proj_dim"], 32),
    **dict.fromkeys(["num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
                     "num_encoder_layers", "num_decoder_layers"], 2),
    **dict.fromkeys(["num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads",
                     "decoder_attention_heads"], 4),
    **dict.fromkeys(["num_key_value_heads", "num_kv_heads", "multi_query_group_num"], 2),
    **dict.fromkeys(["head_dim", "attention_head_size", "kv_channels"], 8),
    "rotary_dim": 4,  # the rotary part of a head
    # multi-head latent attention (DeepSeek-V2/V3): low-rank projections, the rotary part = head_dim
    **dict.fromkeys(["kv_lora_rank", "q_lora_rank"], 16),
    **dict.fromkeys(["qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"], 8),
    **dict.fromkeys(["intermediate_size", "d_ff", "ffn_dim", "n_inner", "encoder_ffn_dim", "decoder_ffn_dim",
                     "ffn_hidden_size"], 64),
    **dict.fromkeys(["moe_intermediate_size", "shared_expert_intermediate_size"], 32),
    **dict.fromkeys(["num_experts", "num_local_experts", "n_routed_experts"], 4),
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "mamba_n_heads": 4,  # Mamba-2 heads must divide mamba_expand x hidden
    "vocab_size": VOCAB,
    **dict.fromkeys(["max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "max_sequence_length",
                     "seq_length", "max_source_positions", "max_target_positions"], 64),
    "image_size": IMAGE,
    "patch_size": 4,
    "num_channels": 3,
    "window_size": 4,  # Swin-like windows must fit the 8x8 patch grid of a 32x32 image
}
# Set even where the default is None (None there means "as many as the attention heads").
_ALSO_NONE = {"num_key_value_heads", "head_dim"}
# List-valued attributes (one entry per stage of a hierarchical model): keep the stage count, shrink each.
_LIST_SIZES: dict[str, Any] = {
    "depths": lambda i: 1,
    "hidden_sizes": lambda i: 16 * 2**i,
    "num_heads": lambda i: 2,
    "num_attention_heads": lambda i: 2,
}
# Per-type config overrides, applied after the general rule, for types the rule leaves unbuildable.
_TWO_STAGES = {"depths": [1, 1], "num_heads": [2, 4]}  # four stages would shrink a 32x32 image below one window
OVERRIDES: dict[str, dict[str, Any]] = {
    "swin": _TWO_STAGES,
    "donut-swin": _TWO_STAGES,
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},  # expands to one type per layer: 2 layers
    "mamba2": {"head_dim": 16, "n_groups": 1},  # SSM: num_heads x head_dim = expand x hidden; groups divide heads
    "esmc": {"num_key_value_heads": 4},  # ESMC has no grouped-query attention
}


def model_types() -> list[str]:
    """Every model type of the four auto mappings, sorted."""
    from transformers.models.auto import modeling_auto

    return sorted({t for mapping in MAPPINGS for t in getattr(modeling_auto, mapping)})


def model_class_name(model_type: str) -> str:
    """The class the sweep builds for ``model_type``: its base model, else its first task model."""
    from transformers.models.auto import modeling_auto

    for mapping in MAPPINGS:
        names = getattr(modeling_auto, mapping)
        if model_type in names:
            name = names[model_type]
            return name[0] if isinstance(name, (tuple, list)) else name
    raise KeyError(model_type)


class CaseTimeout(Exception):
    """A case ran past its time limit."""


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in the main thread after ``seconds`` (SIGALRM; a no-op elsewhere)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(_signum: int, _frame: object) -> None:
        raise CaseTimeout(f"ran past the {seconds} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _shrunk_value(name: str, value: Any) -> Any:
    """The tiny value of config attribute ``name`` (currently ``value``), or ``value`` if not a size."""
    if isinstance(value, bool):
        return value
    if (isinstance(value, int) or (value is None and name in _ALSO_NONE)) and name in _INT_SIZES:
        return _INT_SIZES[name]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        if name in _LIST_SIZES:
            return [_LIST_SIZES[name](i) for i in range(len(value))]
        if name in ("image_size", "patch_size") and name in _INT_SIZES:
            return [_INT_SIZES[name]] * len(value)
    return value


def _token_overrides(config: Any) -> dict[str, Any]:
    """Special token ids (``*_token_id``, ``*_token_index``) of ``config`` moved below the tiny vocabulary."""
    overrides: dict[str, Any] = {}
    free = iter(range(SPECIAL_IDS, VOCAB))
    moved: dict[int, int] = {}

    def move(token: int) -> int:
        if token < SPECIAL_IDS:
            return token
        if token not in moved:
            moved[token] = next(free, VOCAB - 1)
        return moved[token]

    for name, value in sorted(vars(config).items()):
        if not (name.endswith("_token_id") or name.endswith("_token_index") or name.endswith("_token_ids")):
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value >= SPECIAL_IDS:
            overrides[name] = move(value)
        elif (isinstance(value, list) and value and all(isinstance(v, int) for v in value)
              and any(v >= SPECIAL_IDS for v in value)):
            overrides[name] = [move(v) for v in value]
    return overrides


def tiny_config(config: Any, extra: dict[str, Any] | None = None) -> Any:
    """A new config of ``config``'s class with every known size shrunk, recursively into sub-configs.

    The config is re-created from keyword arguments (not edited in place) so that attributes derived
    from the sizes in ``__init__`` (``layer_types``, default ``head_dim`` ...) follow them."""
    from transformers import PretrainedConfig

    overrides: dict[str, Any] = {}
    for name, value in vars(config).items():
        if name.startswith("_"):
            continue
        if isinstance(value, PretrainedConfig):
            overrides[name] = tiny_config(value)
            continue
        small = _shrunk_value(name, value)
        if small is not value:
            overrides[name] = small
    if "vocab_size" in vars(config) or any(k.endswith("_token_id") for k in vars(config)):
        overrides.update(_token_overrides(config))
    if "kv_lora_rank" in vars(config) and "num_key_value_heads" in vars(config):
        overrides["num_key_value_heads"] = _INT_SIZES["num_attention_heads"]  # latent attention: one KV head per head
    if "use_cache" in vars(config):
        overrides["use_cache"] = False  # decoders return no KV cache
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and ("mrope_section" in rope or "mrope_section" in getattr(
            type(config), "ignore_keys_at_rope_validation", ())):
        overrides["rope_parameters"] = {**rope, "mrope_section": [2, 1, 1]}  # multimodal RoPE: sums to head_dim / 2
    overrides.update(extra or {})
    return type(config)(**overrides)


def _forward_parameters(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _sub_value(config: Any, names: Sequence[str], default: Any) -> Any:
    """The first of ``names`` set on ``config`` or on one of its sub-configs."""
    from transformers import PretrainedConfig

    for holder in [config, *(v for v in vars(config).values() if isinstance(v, PretrainedConfig))]:
        for name in names:
            value = getattr(holder, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return default


def _text_inputs(parameters: set[str]) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, SPECIAL_IDS, (BATCH, LENGTH), generator=generator)
    inputs: dict[str, Any] = {"input_ids": ids}
    if "attention_mask" in parameters:
        mask = torch.ones_like(ids)
        mask[-1, -2:] = 0  # the last sequence is padded
        inputs["attention_mask"] = mask
    return inputs


def _image_inputs(config: Any) -> dict[str, Any]:
    channels = _sub_value(config, ["num_channels"], 3)
    generator = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(BATCH, channels, IMAGE, IMAGE, generator=generator)}


def example_inputs(model: nn.Module, config: Any, alternative: bool = False) -> dict[str, Any]:
    """Inputs for ``model`` made from its ``main_input_name``. The ``alternative`` to try when those fail:
    the image (text) input added to a text (image) model that accepts it, as multimodal models need both;
    a channel dimension for raw audio; audio features as (frames, bins) instead of (bins, frames)."""
    parameters = _forward_parameters(model)
    main = getattr(model, "main_input_name", "input_ids")
    generator = torch.Generator().manual_seed(2)
    if main == "input_ids":
        inputs = _text_inputs(parameters)
        if alternative and "pixel_values" in parameters:
            inputs.update(_image_inputs(config))
    elif main == "pixel_values":
        inputs = _image_inputs(config)
        if alternative and "input_ids" in parameters:
            inputs.update(_text_inputs(parameters))
    elif main == "input_values":
        shape = (BATCH, 1, 1600) if alternative else (BATCH, 1600)
        inputs = {"input_values": torch.randn(*shape, generator=generator)}
    elif main == "input_features":
        bins = _sub_value(config, ["num_mel_bins", "input_feat_per_channel", "feature_size"], 80)
        frames = 2 * _sub_value(config, ["max_source_positions"], 32)  # Whisper wants exactly 2x positions
        shape = (BATCH, frames, bins) if alternative else (BATCH, bins, frames)
        inputs = {"input_features": torch.randn(*shape, generator=generator)}
    else:
        raise ValueError(f"no example inputs for main input {main!r}")
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in parameters:
        inputs["decoder_input_ids"] = torch.randint(0, SPECIAL_IDS, (BATCH, LENGTH), generator=generator)
    if "use_cache" in parameters:
        inputs["use_cache"] = False
    return inputs


def _run(model: nn.Module, inputs: dict[str, Any]) -> Any:
    with torch.no_grad():
        return model(**inputs)


def float_outputs(output: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every floating tensor of a model output by path; KV caches are left out (pruned heads shrink them)."""
    if isinstance(output, torch.Tensor):
        return {prefix or "output": output} if output.is_floating_point() else {}
    if "past" in prefix or "cache" in prefix:
        return {}
    if isinstance(output, dict):  # also ModelOutput
        items = list(output.items())
    elif isinstance(output, (tuple, list)):
        items = list(enumerate(output))
    else:
        return {}
    found: dict[str, torch.Tensor] = {}
    for key, value in items:
        found.update(float_outputs(value, f"{prefix}.{key}" if prefix else str(key)))
    return found


def compare_outputs(expected: Any, actual: Any) -> str | None:
    """Why ``actual`` differs from ``expected`` (each floating output within TOLERANCE of its scale), or None."""
    want, got = float_outputs(expected), float_outputs(actual)
    if not want:
        return "the model output has no floating tensor"
    for key, tensor in want.items():
        if key not in got:
            return f"compact output lacks {key!r}"
        if got[key].shape != tensor.shape:
            return f"compact output {key!r} has shape {tuple(got[key].shape)}, expected {tuple(tensor.shape)}"
        scale = tensor.abs().max().item()
        error = (got[key] - tensor).abs().max().item()
        if not error <= TOLERANCE * scale:
            return f"compact model computes something else: {key!r} max |diff| {error:.3g} > {TOLERANCE} x {scale:.3g}"
    return None


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def coverage(g: Any) -> float:
    """Share of the model's weights (numel; quantizer parameters excluded) in tensors some group cuts."""
    from geta.quant.quantizer import Quantizer

    quantizer = {id(p) for m in g.model.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    weights = {id(p): p.numel() for p in g.model.parameters() if id(p) not in quantizer}
    grouped = {id(s.tensor) for group in g.groups for s in group.slices if s.is_parameter and not s.is_quantizer}
    total = sum(weights.values())
    return sum(n for key, n in weights.items() if key in grouped) / total if total else 0.0


def top_reasons(g: Any, count: int = 3) -> list[str]:
    """The most frequent reasons structures were left out of the search space, as 'reason (xN)'."""
    tally: Counter[str] = Counter()
    for structure in g.unprunable():
        for reason in structure.reasons:
            tally[reason] += structure.count
    return [f"{reason} (x{n})" for reason, n in tally.most_common(count)]


def first_line(error: BaseException, cause: bool = False) -> str:
    """``Type: first line of the message``; with ``cause``, followed by the direct cause's."""
    lines = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {lines[0] if lines else ''}"
    if cause and error.__cause__ is not None:
        line += f" <- {first_line(error.__cause__)}"
    return line[:300]


def geta_frame(error: BaseException) -> str:
    """The innermost traceback frame inside geta's sources (``geta/...py:line in function``), or ''."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f"{os.sep}geta{os.sep}" in f.filename]
    if not frames:
        return ""
    frame = frames[-1]
    return f"geta{frame.filename.rsplit(f'{os.sep}geta', 1)[1]}:{frame.lineno} in {frame.name}"


def error_kind(reason: str) -> str:
    """``reason`` with numbers, quoted names and shapes blanked, to group failures of one kind."""
    kind = re.sub(r"'[^'\s]*[._\d][^'\s]*'|\"[^\"\s]*[._\d][^\"\s]*\"", "'…'", reason)
    kind = re.sub(r"\b[A-Za-z_]\w*(\.\w+)+\b", "<name>", kind)  # module and parameter names
    kind = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", kind)
    return kind


def build(model_type: str) -> tuple[nn.Module, dict[str, Any], Any, str]:
    """The tiny eval-mode model of ``model_type``, its example inputs, its output and its class name.

    Raises whatever building or running it raises (the case is then not buildable)."""
    import transformers

    class_name = model_class_name(model_type)
    model_class = getattr(transformers, class_name)
    config = tiny_config(transformers.AutoConfig.for_model(model_type), OVERRIDES.get(model_type))
    torch.manual_seed(0)
    model = model_class(config).eval()
    try:
        inputs = example_inputs(model, config)
        output = _run(model, inputs)
    except Exception as error:
        inputs = example_inputs(model, config, alternative=True)
        try:
            output = _run(model, inputs)
        except Exception:
            raise error from None
    outputs = float_outputs(output)
    if not outputs:
        raise ValueError("the model output has no floating tensor")
    if not all(bool(torch.isfinite(t).all()) for t in outputs.values()):
        raise ValueError("the random model's output is not finite")
    if compare_outputs(output, _run(model, inputs)) is not None:
        raise ValueError("the model's output differs between two runs on the same inputs")
    return model, inputs, output, class_name


def check_case(model: nn.Module, inputs: dict[str, Any], mode: str, record: dict[str, Any]) -> None:
    """geta on ``model`` in ``mode`` and the invariant; fills ``record`` (status, groups, coverage, sizes).

    Raises when geta raises or the invariant breaks (the case failed; ``record`` keeps what was found)."""
    import geta

    g = geta.GETA(model, inputs, quantize=mode)
    record["groups"] = len(g.groups)
    if not record["groups"]:
        record.update(status="unprunable", reasons=top_reasons(g))
        return
    record["coverage"] = round(coverage(g), 4)
    zeroed = g.zero_random_groups(FRACTION, seed=SEED)
    record["zeroed"] = len(zeroed)
    g.model.eval()
    expected = _run(g.model, inputs)
    compact = g.construct_subnet().eval()
    actual = _run(compact, inputs)
    record["params"], record["compact_params"] = _parameters(g.model), _parameters(compact)
    problem = compare_outputs(expected, actual)
    if problem is not None and mode == "weights+activations":
        # geta's own rule (geta/pruning/verify.py): a difference that disappears with the activation
        # quantizers passed through is a value on a rounding boundary moving one level, not a wrong cut
        from geta.pruning.verify import activations_unquantized

        with activations_unquantized(g.model), activations_unquantized(compact):
            if compare_outputs(_run(g.model, inputs), _run(compact, inputs)) is None:
                record["rounding"] = problem
                problem = None
    if problem is not None:
        raise AssertionError(problem)
    if zeroed and record["compact_params"] >= record["params"]:
        raise AssertionError(f"{len(zeroed)} groups zeroed but the compact model has as many parameters")
    record["status"] = "passed"


def sweep_type(model_type: str, modes: Sequence[str] = MODES, build_limit: int = BUILD_LIMIT_S,
               case_limit: int = CASE_LIMIT_S) -> Iterator[dict[str, Any]]:
    """One record per mode of ``model_type``; never raises for the model's sake."""
    base: dict[str, Any] = {"type": model_type}
    start = time.perf_counter()
    try:
        base["class"] = model_class_name(model_type)
        with deadline(build_limit), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, inputs, _, _ = build(model_type)
        base["model_params"] = _parameters(model)
    except Exception as error:
        seconds = round(time.perf_counter() - start, 1)
        for mode in modes:
            reason = first_line(error, cause=True)
            yield {**base, "mode": mode, "status": "not buildable", "reason": reason, "seconds": seconds}
        return
    base["build_seconds"] = round(time.perf_counter() - start, 1)
    for mode in modes:
        start = time.perf_counter()
        record: dict[str, Any] = {**base, "mode": mode}
        try:
            with deadline(case_limit), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                check_case(model, inputs, mode, record)
        except Exception as error:
            reason = first_line(error)
            record.update(status="failed", reason=reason, kind=error_kind(reason), where=geta_frame(error))
        record["seconds"] = round(time.perf_counter() - start, 1)
        yield record


# -- the command: a worker process runs the types, the parent restarts it when a model kills it --------------

_TAG = "@@sweep "


def _worker(types: Sequence[str], modes: Sequence[str], build_limit: int, case_limit: int) -> None:
    """Print one tagged JSON line when each type starts and per finished record."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    for model_type in types:
        print(_TAG + json.dumps({"start": model_type}), flush=True)
        for record in sweep_type(model_type, modes, build_limit, case_limit):
            print(_TAG + json.dumps(record), flush=True)


def _spawn(types: Sequence[str], modes: Sequence[str], build_limit: int, case_limit: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.pruning.transformers_sweep", "--worker", "--types", ",".join(types),
               "--modes", ",".join(modes), "--build-limit", str(build_limit), "--case-limit", str(case_limit)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)


def run_sweep(types: Sequence[str], modes: Sequence[str], build_limit: int, case_limit: int,
              on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Records of every (type, mode), from worker processes; a type that kills its worker or runs past
    ``build_limit + len(modes) * case_limit + 60`` seconds is recorded as failed (or not buildable when it
    had no record yet) and the worker is restarted on the remaining types."""
    records: list[dict[str, Any]] = []
    remaining = list(types)
    hard_limit = build_limit + len(modes) * case_limit + 60
    while remaining:
        worker = _spawn(remaining, modes, build_limit, case_limit)
        current: str | None = None
        done_modes: list[str] = []
        started = time.monotonic()
        crash: str | None = None
        while True:
            ready, _, _ = select.select([worker.stdout], [], [], 5.0)
            if not ready:
                if current is not None and time.monotonic() - started > hard_limit:
                    worker.kill()
                    crash = f"CaseTimeout: killed after {hard_limit} s (stuck outside Python)"
                    break
                if worker.poll() is not None:
                    break
                continue
            line = worker.stdout.readline()
            if not line:
                break
            if not line.startswith(_TAG):
                continue
            message = json.loads(line[len(_TAG):])
            if "start" in message:
                current, done_modes, started = message["start"], [], time.monotonic()
                remaining.remove(current)
                continue
            records.append(message)
            done_modes.append(message["mode"])
            if on_record is not None:
                on_record(message)
        code = worker.wait()
        if current is not None and len(done_modes) < len(modes):
            reason = crash or f"WorkerDied: the worker process exited with code {code}"
            status = "failed" if done_modes else "not buildable"
            for mode in modes:
                if mode not in done_modes:
                    record = {"type": current, "mode": mode, "status": status, "reason": reason,
                              "kind": error_kind(reason), "where": ""}
                    records.append(record)
                    if on_record is not None:
                        on_record(record)
        elif code != 0 and remaining and current is None:
            raise RuntimeError(f"the sweep worker failed to start (exit code {code})")
    return records


def _row(record: dict[str, Any]) -> str:
    detail = record.get("reason") or "; ".join(record.get("reasons", []))
    if record["status"] == "passed":
        detail = f"{record['zeroed']} zeroed, params {record['params']} -> {record['compact_params']}"
    groups = record.get("groups", "")
    cover = f"{record['coverage']:.2f}" if "coverage" in record else ""
    return (f"{record['type']:<28} {record.get('class', ''):<34} {record['mode']:<20} {record['status']:<14} "
            f"{groups!s:>6} {cover:>5} {record.get('seconds', ''):>6}  {detail[:150]}")


def summarize(records: list[dict[str, Any]]) -> str:
    """Counts per status (and per mode), the failures grouped by kind, the unprunable reasons."""
    lines = []
    statuses = ("passed", "unprunable", "failed", "not buildable")
    modes = sorted({r["mode"] for r in records})
    for mode in [None, *modes]:
        chosen = [r for r in records if mode is None or r["mode"] == mode]
        counts = Counter(r["status"] for r in chosen)
        label = "all cases" if mode is None else f"mode {mode}"
        lines.append(f"{label:<26} " + ", ".join(f"{s}: {counts.get(s, 0)}" for s in statuses))
    types = {r["type"] for r in records}
    buildable = {r["type"] for r in records if r["status"] != "not buildable"}
    grouped = {r["type"] for r in records if r.get("groups")}
    share = len(grouped & buildable) / len(buildable) if buildable else 0.0
    lines.append(f"types: {len(types)}, buildable: {len(buildable)}, with groups: {len(grouped)} ({share:.0%})")
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        lines.append("\nfailed, by kind (cases, types):")
        kinds: dict[str, list[dict[str, Any]]] = {}
        for r in failed:
            kinds.setdefault(error_kind(r["reason"]), []).append(r)
        for kind, hits in sorted(kinds.items(), key=lambda item: -len(item[1])):
            names = sorted({r["type"] for r in hits})
            where = Counter(r.get("where", "") for r in hits).most_common(1)[0][0]
            lines.append(f"  {len(hits):>4} {len(names):>4}  {kind[:200]}  [{where}]")
            lines.append(f"            {', '.join(names)[:400]}")
    unprunable = [r for r in records if r["status"] == "unprunable"]
    if unprunable:
        lines.append("\nunprunable, by top reason (cases):")
        tally = Counter(re.sub(r" \(x\d+\)$", "", (r.get("reasons") or ["(no reason given)"])[0]) for r in unprunable)
        for reason, n in tally.most_common():
            lines.append(f"  {n:>4}  {reason[:200]}")
    return "\n".join(lines)


def _write(path: str, records: list[dict[str, Any]], wall: float) -> None:
    import transformers

    data = {"transformers": transformers.__version__, "torch": torch.__version__, "wall_s": round(wall, 1),
            "records": records}
    with open(path, "w") as file:
        json.dump(data, file, indent=1)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m tests.pruning.transformers_sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", help="comma-separated model types (default: every type of the mappings)")
    parser.add_argument("--every", type=int, default=1, help="take every N-th type only")
    parser.add_argument("--offset", type=int, default=0, help="with --every: start at this type index")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated quantize modes")
    parser.add_argument("--out", help="write the per-case records as JSON here")
    parser.add_argument("--resume", action="store_true", help="keep --out's records and skip their types")
    parser.add_argument("--build-limit", type=int, default=BUILD_LIMIT_S, help="seconds to build a model")
    parser.add_argument("--case-limit", type=int, default=CASE_LIMIT_S, help="seconds for geta on one mode")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    types = args.types.split(",") if args.types else model_types()[args.offset::args.every]
    if args.worker:
        _worker(types, modes, args.build_limit, args.case_limit)
        return 0
    records: list[dict[str, Any]] = []
    previous_wall = 0.0
    if args.resume and args.out and os.path.exists(args.out):
        with open(args.out) as file:
            data = json.load(file)
        records, previous_wall = data["records"], data.get("wall_s", 0.0)
        done = {r["type"] for r in records}
        types = [t for t in types if t not in done]
    start = time.perf_counter()
    print(f"{'type':<28} {'class':<34} {'mode':<20} {'status':<14} {'groups':>6} {'cover':>5} {'s':>6}  detail")
    for record in records:
        print(_row(record))

    def on_record(record: dict[str, Any]) -> None:
        records.append(record)
        print(_row(record), flush=True)
        if args.out:
            _write(args.out, records, previous_wall + time.perf_counter() - start)

    run_sweep(types, modes, args.build_limit, args.case_limit, on_record)
    wall = previous_wall + time.perf_counter() - start
    if args.out:
        _write(args.out, records, wall)
    print()
    print(summarize(records))
    print(f"wall time: {wall / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
