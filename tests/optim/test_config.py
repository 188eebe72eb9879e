"""QassoConfig: checked once when made, normalized so that equal settings compare equal, a plain dict in
checkpoints, and the one thing QASSO reads its settings from."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import geta
from geta.errors import ConfigError
from geta.optim.config import QassoConfig


@pytest.mark.parametrize(("overrides", "message"), [
    ({"target_sparsity": 1.0}, "target_sparsity"),
    ({"target_sparsity": True}, "target_sparsity"),
    ({"total_steps": 0}, "total_steps"),
    ({"weight_bits": (8, 4)}, "inverted"),
    ({"act_bits": (1, 8)}, "outside"),
    ({"lr_quant": float("nan")}, "lr_quant"),
    ({"pruning_periods": -1}, "pruning_periods"),
    ({"eta": 1.0}, "eta"),
    ({"stage_shares": (0.5, 0.5, 0.5)}, "stage_shares"),
    ({"saliency_weights": {"magnitudes": 1.0}}, "unknown saliency"),
    ({"round_to": 0}, "round_to"),
])
def test_bad_settings_are_refused_when_the_config_is_made(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        QassoConfig(**{"target_sparsity": 0.5, "total_steps": 100, **overrides})


def test_unknown_and_missing_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="unknown QASSO settings \\['momentun'\\]"):
        QassoConfig.from_settings({"target_sparsity": 0.5, "total_steps": 10, "momentun": 0.9})
    with pytest.raises(ConfigError, match="needs total_steps"):
        QassoConfig.from_settings({"target_sparsity": 0.5})
    with pytest.raises(ConfigError, match="needs a target: one of target_sparsity, target_rel_bops, target_size_bytes"):
        QassoConfig.from_settings({"total_steps": 10})


@pytest.mark.parametrize(("targets", "message"), [
    ({"target_rel_bops": 0.0}, "target_rel_bops=0.0 must lie in \\(0, 1\\]"),
    ({"target_rel_bops": 1.5}, "target_rel_bops"),
    ({"target_rel_bops": float("nan")}, "target_rel_bops"),
    ({"target_rel_bops": True}, "target_rel_bops"),
    ({"target_size_bytes": 0}, "target_size_bytes=0 must be a finite positive"),
    ({"target_size_bytes": float("inf")}, "target_size_bytes"),
    ({"target_sparsity": 0.5, "target_rel_bops": 0.1}, "exactly one of .*got target_sparsity=0.5, target_rel_bops=0.1"),
    ({"target_rel_bops": 0.1, "target_size_bytes": 1000}, "exactly one of"),
    ({}, "exactly one of .*got none"),
])
def test_exactly_one_target_in_its_range(targets: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        QassoConfig(total_steps=100, **targets)


def test_a_budget_is_a_target_of_its_own() -> None:
    """A budget run has no target sparsity; the budget comes out normalized, and a checkpoint from before the
    budgets existed (no budget keys) still compares equal to a sparsity run's config."""
    config = QassoConfig(total_steps=100, target_rel_bops=1)
    assert config.target_sparsity is None and config.target_rel_bops == 1.0
    assert isinstance(config.target_rel_bops, float)
    assert config.budget == ("target_rel_bops", 1.0)
    assert QassoConfig(total_steps=100, target_size_bytes=2048).budget == ("target_size_bytes", 2048.0)
    assert QassoConfig(0.5, 100).budget is None
    data = json.loads(json.dumps(config.to_dict()))
    assert QassoConfig.from_settings(data) == config and config.differences(data) == []
    budgets = ("target_rel_bops", "target_size_bytes")
    older = {k: v for k, v in QassoConfig(0.5, 100).to_dict().items() if k not in budgets}
    assert QassoConfig(0.5, 100).differences(older) == []
    found = config.differences(QassoConfig(0.5, 100).to_dict())
    assert [f.split(":")[0] for f in found] == ["target_sparsity", "target_rel_bops"]
    with pytest.raises(ConfigError, match="total_steps=0 must be a positive integer"):
        QassoConfig(target_rel_bops=0.1)


@settings(max_examples=50, deadline=None)
@given(sparsity=st.floats(0, 0.99), steps=st.integers(1, 10_000), low=st.integers(2, 16), span=st.integers(0, 16),
       macs=st.floats(0, 1), round_to=st.integers(1, 64))
def test_config_survives_a_json_round_trip(sparsity: float, steps: int, low: int, span: int, macs: float,
                                           round_to: int) -> None:
    """to_dict() is plain JSON; a config rebuilt from it is equal and differences() finds nothing."""
    config = QassoConfig(sparsity, steps, weight_bits=[low, low + span], act_bits=(low, low + span), round_to=round_to,
                         saliency_weights={"magnitude": 1.0, "macs": macs})
    data = json.loads(json.dumps(config.to_dict()))
    assert QassoConfig.from_settings(data) == config and config.differences(data) == []
    assert config.weight_bits == (low, low + span) and set(config.saliency_weights) >= {"magnitude", "macs"}


def test_differences_name_each_setting() -> None:
    config = QassoConfig(0.5, 100)
    saved = QassoConfig(0.25, 100, round_to=4).to_dict()
    found = config.differences(saved)
    assert len(found) == 2
    assert found[0].startswith("target_sparsity: checkpoint 0.25") and found[1].startswith("round_to")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_keywords_and_config_make_the_same_optimizer() -> None:
    """g.qasso(**settings) is an adapter: the config it makes equals QassoConfig(**settings), other keywords go to
    the base optimizer, and both forms at once are refused."""
    x = torch.randn(6, 4)
    g = geta.GETA(_mlp(), x, quantize="weights+activations")
    by_keywords = g.qasso("sgd", lr=0.1, momentum=0.9, target_sparsity=0.25, total_steps=30, round_to=2)
    config = QassoConfig(0.25, 30, round_to=2)
    by_config = g.qasso("sgd", lr=0.1, momentum=0.9, config=config)
    assert by_keywords.config == by_config.config == config
    assert isinstance(by_config.base, torch.optim.SGD) and by_config.base.defaults["momentum"] == 0.9
    rates = {group["role"]: group["lr"] for group in by_config.param_groups}
    assert rates == {"weights": 0.1, "weight_quantizers": 1e-3, "act_quantizers": 1e-3}
    with pytest.raises(ConfigError, match="not both"):
        g.qasso("sgd", lr=0.1, config=config, round_to=2)
    assert by_config.state_dict()["qasso"]["config"] == config.to_dict()


def test_qasso_takes_a_base_optimizer_factory() -> None:
    """QASSO from narrow parts: the model, search space, layers, example inputs, a config and a base factory."""
    x = torch.randn(6, 4)
    g = geta.GETA(_mlp(), x)
    factory = functools.partial(torch.optim.RMSprop, lr=0.01, alpha=0.9)
    opt = geta.QASSO(g.model, g.groups, g.layers, g.example_inputs, QassoConfig(0.5, 20, lr_quant=1e-4), factory)
    assert isinstance(opt.base, torch.optim.RMSprop) and opt.base.defaults["alpha"] == 0.9
    assert {group["role"]: group["lr"] for group in opt.param_groups} == {"weights": 0.01, "weight_quantizers": 1e-4}
    for _ in range(20):
        opt.zero_grad()
        g.model(x).square().mean().backward()
        opt.step()
    assert g.group_sparsity() == 0.5
    with pytest.raises(ConfigError, match=r"not a torch\.optim\.Optimizer"):
        geta.QASSO(g.model, g.groups, g.layers, g.example_inputs, QassoConfig(0.5, 20), lambda groups: object())
