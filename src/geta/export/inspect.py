"""What ``geta inspect PATH`` prints: a saved model's layers (bits, widths, sizes) and its file size
against sum(params x bits) / 8 plus metadata. The file is checked as ``geta.load`` checks it
(``packed.read_checked``: checksum, tensor table, architecture), but nothing is rebuilt, so a model
of a class outside the allow-list is inspected too."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from geta.export.architecture import QUANTIZER_PARAMETERS
from geta.export.packed import read_checked

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
    """Check the model saved at ``path`` as ``geta.load`` does, without building it, and account for every
    byte of the file; raises SavedModelError for a file ``geta.load`` refuses."""
    saved = read_checked(path)
    entries = saved.header["tensors"]
    summary = SizeSummary(Path(path).stat().st_size, saved.header_bytes, 0, 0, 0)
    accounted: set[str] = set()
    for layer, record in _layers(saved.architecture, ""):
        act = record.get("input_quantizer")
        row = LayerRow(layer, record["type"].rsplit(".", 1)[-1], (), None,
                       None if act is None else act["bits"], _width(record), 0)
        for group in ("parameters", "buffers"):
            for key in record[group].values():
                if key is None or key in accounted:
                    continue
                accounted.add(key)
                entry = entries[key]
                quantized = entry["kind"] == "quantized"
                size = saved.stored_bytes[f"{key}.codes" if quantized else key]
                row.stored_bytes += size
                if group == "buffers":
                    summary.buffer_bytes += size
                    continue
                summary.parameter_bits += _parameter_bits(entry)
                if quantized or not row.shape:
                    row.shape = tuple(entry["shape"])
                if quantized:
                    low, high = min(entry["bits"]), max(entry["bits"])
                    row.bits = (low, high) if row.bits is None else (min(low, row.bits[0]), max(high, row.bits[1]))
                    summary.quantizer_bytes += sum(saved.stored_bytes[f"{key}.{p}"] for p in QUANTIZER_PARAMETERS)
        if act is not None:
            summary.quantizer_bytes += sum(saved.stored_bytes[f"{act['key']}.{p}"] for p in QUANTIZER_PARAMETERS)
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


def _layers(record: dict | None, path: str) -> Iterator[tuple[str, dict]]:
    """(path, record) of every module record in a checked tree, parents first; shared modules once."""
    if record is None or "same_as" in record:
        return
    yield path, record
    for name, child in record["children"].items():
        yield from _layers(child, f"{path}.{name}" if path else name)


def _width(record: dict) -> object:
    attributes = record["attributes"]
    for name in _WIDTH_ATTRIBUTES:
        if name in attributes:
            value = attributes[name]
            return value["tuple"][-1] if isinstance(value, dict) and value.get("tuple") else value
    return "-"


def _parameter_bits(entry: dict) -> int:
    elements = math.prod(entry["shape"])
    if entry["kind"] == "quantized":
        bits = entry["bits"]
        return elements // max(len(bits), 1) * sum(bits)  # a zero-channel weight lists no bits
    return elements * _ELEMENT_BITS[entry["dtype"]]


def _bit_range(bits: tuple[int, int] | None) -> str:
    if bits is None:
        return "-"
    return str(bits[0]) if bits[0] == bits[1] else f"{bits[0]}-{bits[1]}"
