"""``geta.save`` / ``geta.load``: a compact model as one safetensors file with packed integer weights.

The file holds, for each quantized weight ``W`` (key ``k``), its levels ``W^Q / d`` as codes packed at
the quantizer's integer bit width (``k.codes``, channel after channel when bits differ per channel,
see ``packing.py``) and the quantizer's constrained ``d``, ``q_m``, ``t`` (``k.d``, ``k.q_m``,
``k.t``); each input quantizer's constrained ``d``, ``q_m``, ``t`` (what its forward uses, so outputs
are the same); every other parameter and buffer as it is; and, in the safetensors metadata under
``"geta"``, JSON with the architecture (``architecture.py``), each tensor's kind, shape, dtype,
bit widths, sign and axis, and the SHA-256 of the tensor data (:func:`tensor_checksum`). ``load``
checks the checksum, every tensor against that JSON and the JSON itself (``check_tree``) before
rebuilding the module, and reproduces every quantized weight exactly as ``level * d``. A file of
format version 1 (older geta, no checksum) still loads, with a warning, since damage to its tensors
cannot be detected; saving it again adds the checksum.

The loaded model is for inference: its weights are plain tensors holding the quantized values (a
weight quantizer applied again would not give them back when t != 1), and its layers keep their input
quantizers, so its outputs equal the saved model's. Nothing in the file is executed: no pickle, no
``torch.load``, only allow-listed module classes. Any model saves; one with a class outside the
allow-list loads into the user's own dense model (``load(path, model=MyModel(...))``), which the
file's state then replaces.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from geta.errors import ModelError, SavedModelError
from geta.export.architecture import (
    QUANTIZER_PARAMETERS,
    SavedTensor,
    build,
    check_quantizer_parameter,
    check_tree,
    describe,
    load_into,
)
from geta.export.packing import level_offset, level_range, pack, packed_size, unpack

FORMAT = "geta.packed"
VERSION = 2  # version 1 files (no checksum) are read too, with a warning
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit on its JSON header
_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool,
)}


@dataclass
class Levels:
    """A quantized weight as integers: ``value == levels * scale`` (scale broadcast along ``axis``)."""

    levels: Tensor  # int64, the weight's shape
    scale: Tensor  # d: () or (channels,), in the weight's compute dtype
    bits: list[int]  # per channel (one entry per tensor when axis is None)
    signed: bool
    axis: int | None


@dataclass
class SavedFile:
    """A saved model checked as a whole (see :func:`read_checked`): its geta JSON and architecture, its
    tensors by file key (quantized weights as their values), and the bytes each stored tensor and the
    safetensors header take in the file."""

    header: dict
    architecture: dict
    tensors: dict[str, Tensor]
    stored_bytes: dict[str, int]
    header_bytes: int


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (e.g. ``GETA.construct_subnet()``, of any module class) to ``path`` as a packed
    safetensors file: each module's type name, widths and tensors, no pickle."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"geta.save expects a torch.nn.Module, got {type(model).__name__}")
    description = describe(model)
    tensors: dict[str, Tensor] = {}
    entries: dict[str, dict] = {}
    for key, saved in description.tensors.items():
        if saved.quantizer is None:
            tensors[key] = saved.value.detach().cpu().contiguous().clone()
            entries[key] = {"kind": "float", "dtype": _dtype_name(saved.value), "shape": list(saved.value.shape)}
            continue
        levels = quantized_levels(saved)
        tensors[f"{key}.codes"] = torch.from_numpy(_pack_channels(levels))
        for name, value in zip(QUANTIZER_PARAMETERS, saved.quantizer.constrained_parameters()):
            tensors[f"{key}.{name}"] = value.detach().to(levels.scale.dtype).cpu().contiguous().clone()
        entries[key] = {
            "kind": "quantized", "dtype": _dtype_name(saved.value), "shape": list(saved.value.shape),
            "bits": levels.bits, "signed": levels.signed, "axis": levels.axis,
            "scale_dtype": _dtype_name(levels.scale),
        }
    for key, quantizer in description.activation_quantizers.items():
        for name, value in zip(QUANTIZER_PARAMETERS, quantizer.constrained_parameters()):
            value = value.detach().cpu().contiguous().clone()
            tensors[f"{key}.{name}"] = value
            entries[f"{key}.{name}"] = {"kind": "float", "dtype": _dtype_name(value), "shape": list(value.shape)}
    header = {"format": FORMAT, "version": VERSION, "architecture": description.tree, "tensors": entries,
              "tensor_sha256": tensor_checksum(tensors)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"geta": json.dumps(header, separators=(",", ":"))})
    path.chmod(new_file_mode())  # safetensors writes through a private (0600) temporary file
    return path


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process's umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def tensor_checksum(tensors: dict[str, Tensor]) -> str:
    """The SHA-256 (hex) of ``tensors`` as stored: in name order, for each its name, dtype and shape as
    JSON, then its bytes (little-endian, as safetensors stores them), each part preceded by its length."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        record = json.dumps([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)]).encode()
        data = tensor.reshape(-1).view(torch.uint8).numpy()
        digest.update(struct.pack("<QQ", len(record), data.nbytes))
        digest.update(record)
        digest.update(data)  # type: ignore[arg-type]  # an ndarray is a buffer; numpy declares it for Python >= 3.12 only
    return digest.hexdigest()


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """The module saved at ``path`` by :func:`save`, with identical outputs.

    Without ``model`` it is rebuilt from the file, which needs every module class to be allow-listed
    (torch's layers, geta's models, ``geta.register_module``). Otherwise pass ``model``: a
    freshly built dense instance of the saved class with its original constructor arguments. It is
    changed in place (tensors cut to the saved shapes and loaded, widths updated, input quantizers
    attached) and returned; a mismatch (another class or architecture) raises SavedModelError naming the
    module, and is found before ``model`` changes except for a module class that differs only after
    widths are updated.

    Raises SavedModelError, before anything is built, for everything :func:`read_checked` checks (a file
    that is not a geta model, truncated, changed after saving, or whose JSON is malformed or disagrees
    with its tensors), and while building for unknown layer types or widths that disagree with the
    tensors; nothing from the file is executed. A version 1 file (no checksum) loads with a UserWarning.
    """
    if model is not None and not isinstance(model, nn.Module):
        raise ModelError(f"geta.load expects model= to be a torch.nn.Module, got {type(model).__name__}")
    saved = read_checked(path)
    try:
        if model is None:
            return build(saved.architecture, saved.tensors)
        return load_into(model, saved.architecture, saved.tensors)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as error:
        if isinstance(error, SavedModelError):
            raise
        raise SavedModelError(f"{path}: the architecture cannot be rebuilt ({type(error).__name__}: {error}); "
                              "the file is damaged") from error


def read_checked(path: str | os.PathLike) -> SavedFile:
    """The model saved at ``path`` with everything checked that can be without building it: a safetensors
    file (its header length read and bounded first), a geta file of a known version, its tensors matching
    their checksum, the tensor table (kinds, dtypes, shapes, bits, codes in range, quantizer parameters
    finite and positive) and the architecture (:func:`check_tree`: types, references, no cycles).
    Raises SavedModelError naming the problem; warns (UserWarning) for a version 1 file, which has no
    checksum. ``geta.load`` and ``geta inspect`` both start here."""
    path = Path(path)
    header_bytes = 8 + _header_length(path)
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            stored = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise SavedModelError(f"{path} is not a readable safetensors file (truncated or damaged?): {error}") from error
    header = _parse_header(metadata, path)
    if header["version"] == 1:
        warnings.warn(f"{path} was saved by an older geta (format version 1) without a checksum of its tensors, so "
                      "damage to them cannot be detected; save the loaded model again to add one", stacklevel=3)
    elif tensor_checksum(stored) != header["tensor_sha256"]:
        raise SavedModelError(f"{path}: the tensor data does not match its checksum: the file was changed or "
                              "damaged after saving")
    tensors = _tensors(header, stored)
    architecture = _expect_dict(header.get("architecture"), "the architecture")
    try:
        check_tree(architecture, tensors)
    except RecursionError as error:
        raise SavedModelError(f"{path}: the architecture is nested too deeply to be a saved model") from error
    stored_bytes = {name: tensor.numel() * tensor.element_size() for name, tensor in stored.items()}
    return SavedFile(header, architecture, tensors, stored_bytes, header_bytes)


def _header_length(path: Path) -> int:
    """The length of the safetensors JSON header (the file's first 8 bytes, little-endian), refused before
    anything is allocated when it cannot be one (an ONNX or other file renamed, or a truncated one)."""
    if not path.is_file():
        raise SavedModelError(f"{path} does not exist or is not a file")
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            prefix = file.read(8)
    except OSError as error:
        raise SavedModelError(f"{path} cannot be read: {error.strerror or error}") from error
    if len(prefix) < 8:
        raise SavedModelError(f"{path} is not a readable safetensors file (truncated or damaged?): it has {size} bytes")
    (length,) = struct.unpack("<Q", prefix)
    if length > min(MAX_HEADER_BYTES, size - 8):
        raise SavedModelError(
            f"{path} is not a readable safetensors file (truncated or damaged, or another format such as ONNX "
            f"renamed?): its first 8 bytes give a header of {length:,} bytes, more than the file's {size:,} bytes "
            f"or the limit of {MAX_HEADER_BYTES:,}"
        )
    return length


def _parse_header(metadata: dict[str, str], path: Path) -> dict:
    """The geta JSON of a safetensors file's metadata, with its format, version and checksum field checked."""
    if "geta" not in metadata:
        raise SavedModelError(f"{path} is a safetensors file but not a model saved by geta.save (no 'geta' metadata)")
    try:
        header = json.loads(metadata["geta"])
    except (json.JSONDecodeError, RecursionError) as error:
        raise SavedModelError(f"{path}: the geta JSON is not valid JSON ({error}); the file is damaged") from error
    header = _expect_dict(header, "the geta JSON")
    version = header.get("version")
    if header.get("format") != FORMAT or type(version) is not int or version not in (1, VERSION):
        raise SavedModelError(
            f"{path} has format {header.get('format')!r} version {version!r}; "
            f"this geta reads {FORMAT!r} versions 1 and {VERSION}"
        )
    checksum = header.get("tensor_sha256")
    if version == VERSION and not (isinstance(checksum, str) and len(checksum) == 64):
        raise SavedModelError(f"{path}: the geta JSON lacks the checksum of the tensor data (tensor_sha256); "
                              "the file was changed after saving")
    return header


def _tensors(header: dict, stored: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors by file key that the tensor table describes, each checked against its entry (quantized
    weights as their values), and no stored tensor left undescribed."""
    tensors: dict[str, Tensor] = {}
    expected_names: set[str] = set()
    for key, entry in _expect_dict(header.get("tensors"), "the tensor table").items():
        entry = _expect_dict(entry, f"the entry of {key!r}")
        if entry.get("kind") == "float":
            expected_names.add(key)
            tensors[key] = _checked(stored, key, _dtype(entry, "dtype", key), _shape(entry, key))
        elif entry.get("kind") == "quantized":
            expected_names |= {f"{key}.codes"} | {f"{key}.{name}" for name in QUANTIZER_PARAMETERS}
            tensors[key] = _dequantize(key, entry, stored)
        else:
            raise SavedModelError(f"tensor {key!r} has kind {entry.get('kind')!r}; expected 'float' or 'quantized'")
    unexpected = sorted(set(stored) - expected_names)
    if unexpected:
        raise SavedModelError(f"the file holds tensors its JSON does not describe: {', '.join(unexpected[:5])}")
    return tensors


def quantized_levels(saved: SavedTensor) -> Levels:
    """The integer levels of a quantized weight, checked to give the weight back exactly."""
    quantizer = saved.quantizer
    if quantizer is None:
        raise ValueError(f"{saved.key} is not a quantized weight (it has no weight quantizer)")
    value = saved.value.detach().cpu()
    compute = torch.float32 if value.dtype in (torch.float16, torch.bfloat16) else value.dtype
    d = quantizer.constrained_parameters()[0].detach().cpu().to(compute)
    bits = [int(b) for b in quantizer.integer_bits().reshape(-1).tolist()]
    scale = _broadcast(d, value.dim(), quantizer.axis)
    levels = torch.round(value.to(compute) / scale).to(torch.int64)
    if not torch.equal((levels.to(compute) * scale).to(value.dtype), value):
        raise SavedModelError(f"{saved.key}: the quantized weight is not an integer multiple of its step d")
    result = Levels(levels, d, bits, quantizer.signed, quantizer.axis)
    for channel, (low, high) in enumerate(_channel_ranges(result)):
        lowest, highest = level_range(bits[channel], quantizer.signed)
        if low < lowest or high > highest:
            raise SavedModelError(f"{saved.key}: levels {low}..{high} do not fit in {bits[channel]} bits")
    return result


def _pack_channels(levels: Levels) -> np.ndarray:
    """Codes of every channel packed at that channel's bits, channel after channel."""
    rows = _rows(levels.levels, levels.axis).numpy()
    parts = [pack(row + level_offset(b, levels.signed), b) for row, b in zip(rows, levels.bits)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)


def _dequantize(key: str, entry: dict, stored: dict[str, Tensor]) -> Tensor:
    shape = _shape(entry, key)
    dtype = _dtype(entry, "dtype", key)
    scale_dtype = _dtype(entry, "scale_dtype", key)
    signed = entry.get("signed")
    axis = entry.get("axis")
    if not isinstance(signed, bool):
        raise SavedModelError(f"tensor {key!r}: 'signed' must be true or false")
    if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool) or not 0 <= axis < len(shape)):
        raise SavedModelError(f"tensor {key!r}: axis {axis!r} is not a dimension of shape {shape}")
    channels = 1 if axis is None else shape[axis]
    bits = entry.get("bits")
    if not isinstance(bits, list) or len(bits) != channels or not all(
        isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 32 for b in bits
    ):
        raise SavedModelError(f"tensor {key!r}: 'bits' must list {channels} integers in 1..32")
    parameter_shape = () if axis is None else (channels,)
    for name in QUANTIZER_PARAMETERS:
        check_quantizer_parameter(f"{key}.{name}", _checked(stored, f"{key}.{name}", scale_dtype, parameter_shape))
    d = stored[f"{key}.d"]
    per_channel = math.prod(shape) // channels if channels else 0
    sizes = [packed_size(per_channel, b) for b in bits]
    codes = _checked(stored, f"{key}.codes", torch.uint8, (sum(sizes),)).numpy()
    rows, start = [], 0
    for b, size in zip(bits, sizes):
        row = unpack(codes[start : start + size], b, per_channel) - level_offset(b, signed)
        low, high = level_range(b, signed)
        if row.size and (row.min() < low or row.max() > high):
            raise SavedModelError(f"tensor {key!r}: a code is outside the {b}-bit range; the file is damaged")
        rows.append(row)
        start += size
    moved = [shape[axis]] + [s for i, s in enumerate(shape) if i != axis] if axis is not None else shape
    levels = torch.from_numpy(np.stack(rows) if rows else np.zeros((0,), dtype=np.int64)).reshape(moved)
    if axis is not None:
        levels = levels.movedim(0, axis)
    return (levels.to(scale_dtype) * _broadcast(d, len(shape), axis)).to(dtype).contiguous()


def _rows(levels: Tensor, axis: int | None) -> Tensor:
    if axis is None:
        return levels.reshape(1, -1)
    return levels.movedim(axis, 0).reshape(levels.shape[axis], -1)


def _channel_ranges(levels: Levels) -> list[tuple[int, int]]:
    rows = _rows(levels.levels, levels.axis)
    if rows.shape[1] == 0:
        return [(0, 0)] * rows.shape[0]
    return list(zip(rows.amin(1).tolist(), rows.amax(1).tolist()))


def _broadcast(d: Tensor, dims: int, axis: int | None) -> Tensor:
    if axis is None:
        return d.reshape(())
    shape = [1] * dims
    shape[axis] = -1
    return d.reshape(shape)


def _checked(stored: dict[str, Tensor], name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    if name not in stored:
        raise SavedModelError(f"the file lacks tensor {name!r}, which its JSON describes; the file is damaged")
    tensor = stored[name]
    if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
        raise SavedModelError(
            f"tensor {name!r} is {str(tensor.dtype).removeprefix('torch.')} {tuple(tensor.shape)} in the file, "
            f"but its JSON says {str(dtype).removeprefix('torch.')} {tuple(shape)}; the file was altered"
        )
    return tensor


def _shape(entry: dict, key: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise SavedModelError(f"tensor {key!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    return tuple(shape)


def _dtype(entry: dict, field: str, key: str) -> torch.dtype:
    name = entry.get(field)
    if not isinstance(name, str) or name not in _DTYPES:
        raise SavedModelError(f"tensor {key!r}: {field} {name!r} is not one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def _dtype_name(tensor: Tensor) -> str:
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise SavedModelError(f"tensors of dtype {name} cannot be saved; use one of {', '.join(_DTYPES)}")
    return name


def _expect_dict(value: object, what: str) -> dict:
    if not isinstance(value, dict):
        raise SavedModelError(f"{what} should be a JSON object, got {type(value).__name__}; the file is damaged")
    return value

