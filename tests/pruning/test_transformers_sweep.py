"""The transformers sweep as a slow test: every model type x quantize mode must not fail.

Not-buildable cases (the tiny random model cannot be built or run on its own) are skipped with the
reason; "unprunable" (no groups found) passes. Run with ``pytest -m slow tests/pruning/test_transformers_sweep.py``;
``python -m tests.pruning.transformers_sweep`` runs the same cases with a summary table.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

pytest.importorskip("transformers")

from tests.pruning.transformers_sweep import MODES, model_types, sweep_type


@functools.cache
def _records(model_type: str) -> dict[str, dict[str, Any]]:
    """The type's record per mode (the tiny model is built once for both modes)."""
    return {record["mode"]: record for record in sweep_type(model_type, MODES)}


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model_type", model_types())
def test_sweep(model_type: str, mode: str) -> None:
    record = _records(model_type)[mode]
    if record["status"] == "not buildable":
        pytest.skip(f"not buildable: {record['reason']}")
    assert record["status"] != "failed", f"{record['reason']} [{record.get('where', '')}]"
