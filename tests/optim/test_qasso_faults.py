"""QASSO under faults: skipped steps keep the schedule, a loop that stops early is flagged, checkpoints
resume only under their own settings, non-finite learning rates are refused."""

from __future__ import annotations

import warnings

import pytest
import torch
from tests.optim.test_qasso import BIT_TOLERANCE, mlp
from torch import nn

import geta
from geta.errors import ConfigError

TOTAL = 40


def _run(g: geta.GETA, opt: geta.QASSO, steps: int, bad: object = lambda step: False,
         backward: object = lambda step: True) -> None:
    generator = torch.Generator().manual_seed(0)
    g.model.train()
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = g.model(torch.randn(8, 4, generator=generator)).square().mean()
        if bad(step):
            loss = loss * float("nan")
        if backward(step):
            loss.backward()
        opt.step()


def _targets_hold(g: geta.GETA, opt: geta.QASSO) -> None:
    assert int(g.groups.zero_mask().sum()) == opt.target_groups == round(0.5 * len(g.groups))
    for quantizer in opt.weight_quantizers + opt.act_quantizers:
        bits = quantizer.bit_width()
        assert bool((bits >= 4 - BIT_TOLERANCE).all() and (bits <= 6 + BIT_TOLERANCE).all())


@pytest.mark.parametrize("pattern", ["every second", "a whole joint period", "no backward"])
def test_skipped_steps_advance_the_schedule_and_the_targets_hold_after_total_steps(pattern: str) -> None:
    g = geta.GETA(mlp([4, 16, 16, 2]), torch.randn(8, 4), quantize="weights+activations")
    opt = g.qasso("sgd", lr=0.05, target_sparsity=0.5, total_steps=TOTAL, weight_bits=(4, 6), act_bits=(4, 6))
    joint = range(opt.schedule.joint_start, opt.schedule.joint_start + opt.schedule.pruning_steps)
    bad = {"every second": lambda s: s % 2 == 1, "a whole joint period": lambda s: s in joint,
           "no backward": lambda s: False}[pattern]
    backward = (lambda s: s % 3 != 0) if pattern == "no backward" else (lambda s: True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _run(g, opt, TOTAL, bad, backward)
    expected = sum(bool(bad(s)) or not backward(s) for s in range(TOTAL))
    assert opt.steps_done == TOTAL and opt.finished
    assert opt.skipped_steps == expected and opt.metrics().skipped_steps == expected
    _targets_hold(g, opt)
    messages = [str(w.message) for w in record]
    assert sum("(this warning is shown once)" in m for m in messages) == 1
    assert any(f"skipped the base step of {expected} of its {TOTAL} steps" in m for m in messages)
    if pattern == "no backward":
        assert any("call loss.backward() before opt.step()" in m for m in messages)


def test_a_loop_that_stops_early_is_flagged_by_construct_subnet_and_report() -> None:
    g = geta.GETA(mlp([4, 16, 2]), torch.randn(8, 4))
    opt = g.qasso("sgd", lr=0.05, target_sparsity=0.5, total_steps=TOTAL)
    _run(g, opt, TOTAL // 2)
    with pytest.warns(RuntimeWarning, match=f"QASSO has taken {TOTAL // 2} of its {TOTAL} steps"):
        g.construct_subnet()
    with pytest.warns(RuntimeWarning, match="not reached yet"):
        g.report()
    _run(g, opt, TOTAL - TOTAL // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g.construct_subnet()
        g.report()


@pytest.mark.parametrize(("setting", "value"), [
    ("target_sparsity", 0.25), ("total_steps", 50), ("eps", 1e-6), ("eta", 0.3), ("xi", 0.3), ("round_to", 2),
    ("saliency_weights", {"magnitude": 1.0}), ("weight_bits", (3, 6)), ("stage_shares", (0.1, 0.2, 0.4)),
])
def test_a_checkpoint_resumes_only_under_its_own_settings(setting: str, value: object) -> None:
    settings = {"lr": 0.05, "target_sparsity": 0.5, "total_steps": TOTAL}
    g = geta.GETA(mlp([4, 16, 2]), torch.randn(8, 4))
    opt = g.qasso("sgd", **settings)
    _run(g, opt, 5)
    checkpoint = opt.state_dict()
    other = geta.GETA(mlp([4, 16, 2]), torch.randn(8, 4)).qasso("sgd", **{**settings, setting: value})
    with pytest.raises(ConfigError, match=f"other QASSO settings \\({setting}: checkpoint"):
        other.load_state_dict(checkpoint)
    same = geta.GETA(mlp([4, 16, 2]), torch.randn(8, 4)).qasso("sgd", **settings)
    same.load_state_dict(checkpoint)
    assert same.steps_done == 5


@pytest.mark.parametrize("bad", [{"lr": float("inf")}, {"lr": float("nan")}, {"lr_quant": float("inf")},
                                 {"momentum": float("nan")}, {"betas": (0.9, float("inf"))}])
def test_non_finite_rates_are_refused(bad: dict) -> None:
    g = geta.GETA(mlp([4, 8, 2]), torch.randn(8, 4))
    settings = {"lr": 0.05, "target_sparsity": 0.5, "total_steps": TOTAL, **bad}
    with pytest.raises(ConfigError, match="finite"):
        g.qasso("adam" if "betas" in bad else "sgd", **settings)


def test_frozen_parameters_are_never_changed_and_their_groups_are_unprunable() -> None:
    model = mlp([4, 16, 16, 2])
    model[0].requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    g = geta.GETA(model, torch.randn(8, 4))
    reasons = [r for s in g.unprunable() for r in s.reasons if r.startswith("frozen")]
    assert len(reasons) == 1 and reasons[0].startswith(("frozen: 0.weight has", "frozen: 0.bias has"))
    opt = g.qasso("sgd", lr=0.05, target_sparsity=0.5, total_steps=TOTAL)
    _run(g, opt, TOTAL)
    assert torch.equal(g.model[0].parametrizations.weight.original, frozen)
    assert int(g.groups.zero_mask().sum()) == opt.target_groups > 0
    assert isinstance(g.construct_subnet(), nn.Module)
