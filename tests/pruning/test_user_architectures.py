"""The invariant on architectures written the way users write them (``user_architectures.py``).

Random 30% of the groups removed, plain and weights+activations: no crash, the compact model computes
what the zeroed model computes (1e-4 of the output's scale, at two batch sizes), and it is smaller.
Where sizes live in attributes the graph cannot see, the structures are unprunable with the probe's
reason, until the user declares the attribute with one ``geta.register_module`` call.
"""

from __future__ import annotations

import pytest
import torch
from tests.pruning.user_architectures import ARCHITECTURES, HandGRU, StatefulNorm

import geta
from geta import registry
from geta.pruning.verify import output_difference
from geta.quant.prepare import original_parameter

MODES = ["none", "weights+activations"]
NO_GROUPS = {"hand-gru", "stateful-norm"}  # sizes from attributes: see the tests below


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("quantize", MODES)
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_random_removal_keeps_what_the_model_computes(name: str, quantize: str) -> None:
    factory, inputs = ARCHITECTURES[name]
    torch.manual_seed(0)
    g = geta.GETA(factory().eval(), inputs(4), quantize=quantize)
    if name in NO_GROUPS:
        assert not len(g.groups)
        assert any(r.startswith(("probed:", "split by a fixed size")) for u in g.unprunable() for r in u.reasons)
        return
    assert len(g.groups), [u.reasons for u in g.unprunable()]
    g.zero_random_groups(0.3, seed=0)
    compact = g.construct_subnet().eval()
    with torch.no_grad():
        for batch in (4, 3):
            x = inputs(batch)
            assert output_difference(g.model.eval()(*x), compact(*x)) <= 1e-4
    assert _parameters(compact) < _parameters(g.model)


def test_a_size_kept_in_an_attribute_makes_its_structures_unprunable_with_the_reason() -> None:
    g = geta.GETA(StatefulNorm().eval(), torch.randn(4, 5))
    reasons = [r for u in g.unprunable() for r in u.reasons if r.startswith("probed:")]
    assert reasons and "must match the size of tensor" in reasons[0]


def test_one_registration_makes_a_hand_written_recurrent_cell_prunable() -> None:
    def hidden(cell: HandGRU) -> None:
        cell.hidden = original_parameter(cell.h2h, "weight").shape[1]

    geta.register_module(HandGRU, widths=hidden, owns_split_sizes=True)
    try:
        x = torch.randn(4, 5, 6)
        g = geta.GETA(HandGRU().eval(), x, quantize="weights+activations")
        assert len(g.groups) == 12, [u.reasons for u in g.unprunable()]  # one per hidden unit
        g.zero_random_groups(0.5)
        compact = g.construct_subnet().eval()
        assert compact.hidden == 6
        with torch.no_grad():
            assert output_difference(g.model.eval()(x), compact(x)) <= 1e-4
    finally:
        registry._RECORDS.pop(HandGRU, None)
