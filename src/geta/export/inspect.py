"""What ``geta inspect PATH`` prints: a saved model's layers (bits, widths, sizes) and its file size
against sum(params x bits) / 8 plus metadata. Only the file's header is read; nothing is rebuilt."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from geta.errors import SavedModelError
from geta.export.packed import parse_header

_ELEMENT_BITS = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64, "int64": 64, "int32": 32,
                 "int16": 16, "int8": 8, "uint8": 8, "bool": 8}
_WIDTH_ATTRIBUTES = ("out_channels", "out_features", "num_features", "embedding_dim", "embed_dim", "normalized_shape")


@dataclass
class LayerRow:
    """One saved module with tensors of its own: its first parameter's shape and bits, its input bits,
    its width and the bytes of all its tensors in the file."""

    layer: str
    kind: str
    shape: tuple[int, ...]
    bits: tuple[int, int] | None  # lowest and highest integer bits of its quantized weights, if any
    act_bits: int | None
    width: object
    stored_bytes: int


@dataclass
class SizeSummary:
    """Bytes of a saved model's file by what they hold."""

    file_bytes: int
    header_bytes: int  # the safetensors header: the JSON description and the tensor table
    parameter_bits: int  # sum over parameters of elements x bits (quantized at their integer bits)
    buffer_bytes: int
    quantizer_bytes: int  # d, q_m, t of weight and input quantizers
    rows: list[LayerRow] = field(default_factory=list)

    @property
    def expected_bytes(self) -> float:
        """sum(params x bits) / 8 plus metadata (header, buffers, quantizer parameters)."""
        return self.parameter_bits / 8 + self.header_bytes + self.buffer_bytes + self.quantizer_bytes


def summarize(path: str | os.PathLike) -> SizeSummary:
    """Read the header of the model saved at ``path`` and account for every byte of the file."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            table = json.loads(file.read(length))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SavedModelError(f"{path} is not a readable safetensors file: {error}") from error
    if not isinstance(table, dict):
        raise SavedModelError(f"{path} is not a safetensors file (its header is not a JSON object)")
    header = parse_header(table.pop("__metadata__", None) or {}, path)
    stored = {name: info["data_offsets"][1] - info["data_offsets"][0] for name, info in table.items()}
    entries = header.get("tensors", {})
    summary = SizeSummary(path.stat().st_size, 8 + length, 0, 0, 0)
    accounted: set[str] = set()
    for layer, record in _layers(header.get("architecture", {}), ""):
        act = record.get("input_quantizer")
        row = LayerRow(layer, str(record.get("type", "?")).rsplit(".", 1)[-1], (), None,
                       act.get("bits") if isinstance(act, dict) else None, _width(record), 0)
        for group, names in (("parameter", record.get("parameters", {})), ("buffer", record.get("buffers", {}))):
            for key in names.values():
                if key is None or key in accounted or key not in entries:
                    continue
                accounted.add(key)
                entry = entries[key]
                quantized = entry.get("kind") == "quantized"
                size = stored.get(f"{key}.codes" if quantized else key, 0)
                row.stored_bytes += size
                if group == "buffer":
                    summary.buffer_bytes += size
                    continue
                summary.parameter_bits += _parameter_bits(entry)
                if quantized or not row.shape:
                    row.shape = tuple(entry.get("shape", ()))
                if quantized:
                    low, high = min(entry["bits"]), max(entry["bits"])
                    row.bits = (low, high) if row.bits is None else (min(low, row.bits[0]), max(high, row.bits[1]))
                    summary.quantizer_bytes += sum(stored.get(f"{key}.{p}", 0) for p in ("d", "q_m", "t"))
        if isinstance(act, dict):
            summary.quantizer_bytes += sum(stored.get(f"{act.get('key')}.{p}", 0) for p in ("d", "q_m", "t"))
        if row.stored_bytes:
            summary.rows.append(row)
    return summary


def format_summary(summary: SizeSummary, path: str | os.PathLike) -> str:
    """The text of ``geta inspect``: one line per saved tensor, then the size accounting."""
    header = ("layer", "type", "weight shape", "w bits", "a bits", "width", "bytes")
    lines = [[row.layer or "<root>", row.kind, "x".join(map(str, row.shape)) or "-",
              _bit_range(row.bits), "-" if row.act_bits is None else str(row.act_bits), str(row.width),
              f"{row.stored_bytes:,}"] for row in summary.rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    text = [f"{path}: {summary.file_bytes:,} bytes"]
    text.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    text += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines]
    ratio = summary.file_bytes / summary.expected_bytes if summary.expected_bytes else float("nan")
    text.append(
        f"sum(params x bits)/8 = {summary.parameter_bits / 8:,.0f} bytes; metadata = {summary.header_bytes:,} header "
        f"+ {summary.buffer_bytes:,} buffers + {summary.quantizer_bytes:,} quantizer parameters; expected "
        f"{summary.expected_bytes:,.0f} bytes, file {summary.file_bytes:,} bytes ({ratio:.3f}x)"
    )
    return "\n".join(text)


def _layers(record: object, path: str):
    """(path, record) of every module record in the tree, parents first."""
    if not isinstance(record, dict) or "type" not in record:
        return
    yield path, record
    for name, child in (record.get("children") or {}).items():
        yield from _layers(child, f"{path}.{name}" if path else name)


def _width(record: dict) -> object:
    attributes = record.get("attributes", {})
    for name in _WIDTH_ATTRIBUTES:
        if name in attributes:
            value = attributes[name]
            return value["tuple"][-1] if isinstance(value, dict) and "tuple" in value else value
    return "-"


def _parameter_bits(entry: dict) -> int:
    elements = 1
    for size in entry.get("shape", ()):
        elements *= size
    if entry.get("kind") == "quantized":
        bits = entry["bits"]
        return elements // max(len(bits), 1) * sum(bits)
    return elements * _ELEMENT_BITS.get(entry.get("dtype"), 32)


def _bit_range(bits: tuple[int, int] | None) -> str:
    if bits is None:
        return "-"
    return str(bits[0]) if bits[0] == bits[1] else f"{bits[0]}-{bits[1]}"
