"""Codes packed at b bits round-trip exactly and take ceil(n * b / 8) bytes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geta.export.packing import level_offset, level_range, pack, packed_size, unpack


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 16), data=st.data())
def test_pack_round_trips_at_every_width(bits: int, data) -> None:
    codes = np.array(data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=200)), dtype=np.int64)
    packed = pack(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_size(codes.size, bits) == (codes.size * bits + 7) // 8
    np.testing.assert_array_equal(unpack(packed, bits, codes.size), codes)


@pytest.mark.parametrize("bits", [1, 3, 17, 32])
def test_extreme_widths_round_trip(bits: int) -> None:
    codes = np.array([0, (1 << bits) - 1, (1 << bits) // 3, 1], dtype=np.int64)
    np.testing.assert_array_equal(unpack(pack(codes, bits), bits, codes.size), codes)


def test_three_bit_codes_take_three_bits_each() -> None:
    assert pack(np.arange(8), 3).size == 3  # 8 codes x 3 bits = 24 bits


def test_signed_levels_fit_after_the_offset() -> None:
    for bits in range(2, 17):
        low, high = level_range(bits, signed=True)
        assert low == -high and low + level_offset(bits, True) == 0 and high + level_offset(bits, True) < 1 << bits
        assert level_range(bits, signed=False) == (0, (1 << bits) - 1)


def test_a_code_too_wide_or_data_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit in 3 bits"):
        pack(np.array([8]), 3)
    with pytest.raises(ValueError, match="need 2 bytes"):
        unpack(np.zeros(1, dtype=np.uint8), 4, 4)


def test_streams_longer_than_a_chunk_round_trip() -> None:
    codes = np.random.default_rng(0).integers(0, 1 << 5, size=(1 << 20) + 13)
    packed = pack(codes, 5)
    assert packed.size == packed_size(codes.size, 5)
    np.testing.assert_array_equal(unpack(packed, 5, codes.size), codes)
