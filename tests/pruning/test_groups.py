"""Group selection in whole chunks (``round_to``): widths stay multiples, the compact model stays exact."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.zoo import ConcatNet, TinyEncoder
from torch import nn

import geta
from geta.errors import ConfigError
from geta.models.cifar import ResNet20


def _widths(model: nn.Module) -> list[tuple[str, int, int]]:
    """(name, in, out) of every conv and linear layer."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            rows.append((name, module.in_channels, module.out_channels))
        elif isinstance(module, nn.Linear):
            rows.append((name, module.in_features, module.out_features))
    return rows


def _check_multiples(dense: nn.Module, compact: nn.Module, round_to: int) -> None:
    for (name, dense_in, dense_out), (_, kept_in, kept_out) in zip(_widths(dense), _widths(compact)):
        for before, after in ((dense_in, kept_in), (dense_out, kept_out)):
            if before % round_to == 0:
                assert after % round_to == 0 and after > 0, (name, before, after, round_to)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fraction=st.sampled_from([0.2, 0.5, 0.7, 0.9]), round_to=st.sampled_from([2, 4, 8]), seed=st.integers(0, 5))
def test_resnet_widths_stay_multiples_and_the_subnet_is_exact(fraction: float, round_to: int, seed: int) -> None:
    torch.manual_seed(0)
    dense = ResNet20(in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    g = geta.GETA(dense, x, quantize="none")
    zeroed = g.zero_random_groups(fraction, seed=seed, round_to=round_to)
    assert 0 < len(zeroed) <= round(fraction * len(g.groups))
    compact = g.construct_subnet().eval()
    _check_multiples(dense, compact, round_to)
    with torch.no_grad():
        expected, actual = g.model(x), compact(x)
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_chunks_reach_the_count_when_whole_chunks_add_up_to_it() -> None:
    g = geta.GETA(ResNet20(in_channels=1).eval(), torch.randn(1, 1, 28, 28), quantize="none")
    _, chunk = g.groups.chunk_sizes(8)
    assert set(chunk.tolist()) == {8}  # every channel family of ResNet20 is 16, 32 or 64 wide
    count = 8 * 20
    mask = g.groups.select(torch.randperm(len(g.groups), generator=torch.Generator().manual_seed(0)), count, 8)
    assert int(mask.sum()) == count


def test_a_head_is_one_chunk_and_a_feed_forward_unit_a_fraction_of_one() -> None:
    # TinyEncoder: 4 heads of 4 rows in q, k, v; 32 feed-forward units of 1 row each
    g = geta.GETA(TinyEncoder(), torch.randint(0, 30, (2, 6)), quantize="none")
    family, chunk = g.groups.chunk_sizes(4)
    kinds = set()
    for index in range(len(g.groups)):
        rows = max(len(s.indices) for s in g.groups[index].slices)
        kinds.add(rows)
        assert chunk[family[index]] == (1 if rows == 4 else 4), g.groups[index].describe()
    assert kinds == {1, 4}


def test_families_sharing_a_layer_input_each_keep_multiples() -> None:
    # ConcatNet: after_first and after_second (4 channels each) both feed head's 8 inputs
    torch.manual_seed(0)
    dense = ConcatNet().eval()
    concat = geta.GETA(dense, torch.randn(2, 3, 8, 8), quantize="none")
    mask = concat.groups.select(torch.arange(len(concat.groups)), 7, 2)
    assert int(mask.sum()) == 6  # chunks of 2: 7 groups are out of reach, 6 are the most
    concat.groups.zero_(mask)
    _check_multiples(dense, concat.construct_subnet(), 2)


def test_qasso_removes_whole_chunks() -> None:
    torch.manual_seed(0)
    dense = ResNet20(in_channels=1).eval()
    x = torch.randn(4, 1, 28, 28)
    g = geta.GETA(dense, x, quantize="weights")
    opt = g.qasso("sgd", lr=0.01, target_sparsity=0.4, total_steps=40, round_to=8)
    assert opt.target_groups % 8 == 0 and opt.target_groups <= round(0.4 * len(g.groups))
    g.model.train()
    for step in range(40):
        opt.zero_grad()
        g.model(torch.randn(x.shape, generator=torch.Generator().manual_seed(step))).square().mean().backward()
        opt.step()
    assert int(g.groups.zero_mask().sum()) == opt.target_groups
    _check_multiples(dense, g.construct_subnet(), 8)


def test_round_to_must_be_a_positive_integer() -> None:
    g = geta.GETA(ResNet20(in_channels=1).eval(), torch.randn(1, 1, 28, 28), quantize="none")
    for bad in (0, -8, 2.0, True):
        with pytest.raises(ConfigError, match="round_to"):
            g.zero_random_groups(0.5, round_to=bad)
        with pytest.raises(ConfigError, match="round_to"):
            g.qasso(lr=0.1, target_sparsity=0.5, total_steps=100, round_to=bad)


def test_a_target_below_one_chunk_warns_that_nothing_is_pruned() -> None:
    g = geta.GETA(ResNet20(in_channels=1).eval(), torch.randn(1, 1, 28, 28), quantize="none")
    with pytest.warns(UserWarning, match="round_to=16"):  # 9 groups asked, every chunk holds 16
        opt = g.qasso(lr=0.1, target_sparsity=0.02, total_steps=100, round_to=16)
    assert opt.target_groups == 0
