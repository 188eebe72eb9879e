"""Unsigned integer codes packed at b bits each into bytes, and the codes of quantization levels.

A code occupies exactly b bits, least significant bit first, codes one after another with no padding
between them; only the end of the stream is padded to a whole byte. So n codes of b bits take
ceil(n * b / 8) bytes.

Levels (the integers x^Q / d of a quantizer) become codes by an offset that depends only on b:
signed levels -n..n (n <= 2^(b-1) - 1) are stored as level + 2^(b-1) - 1, unsigned levels 0..n as
themselves.
"""

from __future__ import annotations

import numpy as np

MAX_BITS = 32
_CHUNK = 1 << 20  # codes per chunk: a multiple of 8, so every chunk starts on a byte


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take."""
    return (count * bits + 7) // 8


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack non-negative integer ``codes`` (any shape, each < 2^bits) into a flat uint8 array."""
    _check_bits(bits)
    flat = np.asarray(codes).reshape(-1).astype(np.uint64)
    if flat.size and int(flat.max()) >= 1 << bits:
        raise ValueError(f"a code is {int(flat.max())}, which does not fit in {bits} bits")
    shifts = np.arange(bits, dtype=np.uint64)
    parts = []
    for start in range(0, flat.size, _CHUNK):  # chunks of whole bytes keep the bit matrix small
        bit_matrix = ((flat[start : start + _CHUNK, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        parts.append(np.packbits(bit_matrix.reshape(-1), bitorder="little"))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)


def unpack(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The ``count`` codes of ``bits`` bits packed in uint8 ``data`` (as int64)."""
    _check_bits(bits)
    if data.dtype != np.uint8 or data.ndim != 1 or data.size != packed_size(count, bits):
        raise ValueError(
            f"{count} codes of {bits} bits need {packed_size(count, bits)} bytes, got {data.size} ({data.dtype})"
        )
    weights = np.left_shift(np.int64(1), np.arange(bits, dtype=np.int64))
    parts = []
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        chunk = data[start * bits // 8 : start * bits // 8 + packed_size(n, bits)]
        bit_matrix = np.unpackbits(chunk, bitorder="little", count=n * bits).reshape(n, bits)
        parts.append(bit_matrix.astype(np.int64) @ weights)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def level_offset(bits: int, signed: bool) -> int:
    """What is added to a level to make its code: 2^(bits-1) - 1 for signed levels, 0 for unsigned."""
    return (1 << (bits - 1)) - 1 if signed else 0


def level_range(bits: int, signed: bool) -> tuple[int, int]:
    """The smallest and largest level that ``bits`` bits hold."""
    if signed:
        top = (1 << (bits - 1)) - 1
        return -top, top
    return 0, (1 << bits) - 1


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"codes must have 1 to {MAX_BITS} bits, got {bits}")
