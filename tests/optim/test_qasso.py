"""QASSO's guarantees as properties over random small models and settings, plus its fit with PyTorch
training (schedulers, clipping, GradScaler), checkpoints, observability and argument checks."""

from __future__ import annotations

import copy
import io
import itertools
import warnings
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.zoo import TinyEncoder
from torch import Tensor, nn

import geta
from geta.errors import ConfigError
from geta.optim.qasso import QASSO, QassoMetrics
from geta.optim.schedule import Stage

BIT_TOLERANCE = 1e-5  # bits are continuous (Eq. 3): d = d(b) gives b up to float rounding


def mlp(widths: list[int], norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers += [nn.BatchNorm1d(b)] if norm else []
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def transposed_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(6, 5, 3, stride=2, padding=1), nn.BatchNorm2d(5),
        nn.ReLU(), nn.Conv2d(5, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def batches(inputs: Tensor, count: int, seed: int = 0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(inputs.shape, generator=generator) for _ in range(count)]


def train(model: nn.Module, optimizer: torch.optim.Optimizer, data: list[Tensor],
          after_step: Callable[[int], None] = lambda step: None) -> None:
    model.train()
    for step, x in enumerate(data):
        optimizer.zero_grad()
        out = model(x)
        (out.square().mean() + out.sum().sin()).backward()
        optimizer.step()
        after_step(step)


def bits_of(quantizers: list[geta.Quantizer]) -> list[Tensor]:
    return [q.bit_width() for q in quantizers]


def zero_positions(model: nn.Module, quantizer_params: set[int]) -> int:
    return sum(int((p == 0).sum()) for p in model.parameters() if id(p) not in quantizer_params)


def pruned_positions(opt: QASSO) -> int:
    masks: dict[int, Tensor] = {}
    for member in opt.space.members:
        if member.trainable:
            mask = masks.setdefault(id(member.tensor), torch.zeros_like(member.tensor, dtype=torch.bool))
            mask.index_fill_(member.dim, member.positions[opt.pruned[member.groups]], True)
    return sum(int(m.sum()) for m in masks.values())


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.integers(3, 7), min_size=2, max_size=3),
    norm=st.booleans(),
    quantize=st.sampled_from(["none", "weights", "weights+activations"]),
    per_channel=st.booleans(),
    sparsity=st.sampled_from([0.0, 0.25, 0.5, 0.7]),
    weight_low=st.integers(2, 6),
    weight_span=st.integers(0, 4),
    act_low=st.integers(3, 8),
    optimizer=st.sampled_from(["sgd", "adam", "adamw"]),
    pruning_periods=st.integers(1, 3),
)
def test_guarantees_hold_on_random_models_and_settings(
    widths, norm, quantize, per_channel, sparsity, weight_low, weight_span, act_low, optimizer, pruning_periods
) -> None:
    model = mlp([5, *widths, 2], norm=norm)
    example = torch.randn(8, 5)
    g = geta.GETA(model, example, quantize=quantize, per_channel=per_channel, calibration_data=[example])
    weight_bits, act_bits = (weight_low, weight_low + weight_span), (act_low, act_low + 2)
    kwargs = {"momentum": 0.9} if optimizer == "sgd" else {}
    opt = g.qasso(optimizer, lr=0.02, lr_quant=1e-3, target_sparsity=sparsity, total_steps=30, weight_bits=weight_bits,
                  act_bits=act_bits, pruning_periods=pruning_periods, **kwargs)
    schedule = opt.schedule
    weights_q, acts_q = opt.weight_quantizers, opt.act_quantizers
    quantizer_params = {id(p) for q in weights_q + acts_q for p in q.parameters()}
    expected_zero = round(sparsity * len(g.groups))

    def check(step: int) -> None:
        done = step + 1
        if done >= schedule.joint_start:
            for bits, (low, high) in ((bits_of(weights_q), weight_bits), (bits_of(acts_q), act_bits)):
                for b in bits:
                    assert (b >= low - BIT_TOLERANCE).all() and (b <= high + BIT_TOLERANCE).all(), (step, b, low, high)
            for q, (low, high) in [(q, weight_bits) for q in weights_q] + [(q, act_bits) for q in acts_q]:
                assert low <= q.integer_bits().min() and q.integer_bits().max() <= high
        if done >= schedule.cooldown_start:
            zero = g.groups.zero_mask()
            assert int(zero.sum()) == expected_zero == int(opt.pruned.sum())
            assert torch.equal(zero, opt.pruned)
            assert zero_positions(g.model, quantizer_params) == pruned_positions(opt)  # nothing else is zero

    data = batches(example, schedule.cooldown_start + 3)
    train(g.model, opt, data, check)
    assert opt.stage is Stage.COOLDOWN


def test_heads_and_transposed_conv_channels_are_forgotten_through_their_slices() -> None:
    for model, example in ((TinyEncoder(), torch.randint(0, 30, (4, 6))), (transposed_cnn(), torch.randn(4, 2, 5, 5))):
        g = geta.GETA(model, example, quantize="weights")
        opt = g.qasso("sgd", lr=0.01, target_sparsity=0.4, total_steps=40)
        data = [torch.randint(0, 30, example.shape) if example.dtype == torch.long else x for x in batches(
            example.float(), 40)]
        train(g.model, opt, data)
        assert int(g.groups.zero_mask().sum()) == round(0.4 * len(g.groups))
        g.model.eval()
        compact = g.construct_subnet().eval()
        with torch.no_grad():
            expected, actual = g.model(example), compact(example)
        assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_errors_name_the_bad_setting() -> None:
    g = geta.GETA(mlp([4, 6, 2]), torch.randn(3, 4))
    cases = [
        ({"target_sparsity": 1.0}, "target_sparsity"),
        ({"target_sparsity": -0.1}, "target_sparsity"),
        ({"weight_bits": (8, 4)}, "inverted"),
        ({"act_bits": (1, 4)}, "act_bits"),
        ({"total_steps": 2}, "too small"),
        ({"eta": 1.5}, "eta"),
        ({"optimizer": "lion"}, "lion"),
        ({"saliency_weights": {"magnitudes": 1.0}}, "unknown saliency"),
        ({"target_sparsity": 0.95}, "emptying a tensor"),
    ]
    for overrides, message in cases:
        kwargs = {"lr": 0.1, "target_sparsity": 0.5, "total_steps": 100, **overrides}
        with pytest.raises((ConfigError, geta.GetaError), match=message):
            g.qasso(**kwargs)


def test_base_optimizers_and_custom_classes() -> None:
    classes = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    for optimizer in ("sgd", "adam", "adamw", torch.optim.RMSprop):
        g = geta.GETA(mlp([4, 6, 2]), torch.randn(3, 4))
        opt = g.qasso(optimizer, lr=0.01, target_sparsity=0.5, total_steps=30)
        assert isinstance(opt, torch.optim.Optimizer)
        assert type(opt.base) is classes.get(optimizer, optimizer)
        quantizer_params = {id(p) for q in g.model.modules() if isinstance(q, geta.Quantizer) for p in q.parameters()}
        weights = [p for p in g.model.parameters() if id(p) not in quantizer_params]
        group = opt.base.param_groups[0]
        assert group["role"] == "weights" and group["lr"] == 0.01
        assert [id(p) for p in group["params"]] == [id(p) for p in weights]
        train(g.model, opt, batches(torch.randn(3, 4), 30))
        assert g.group_sparsity() == 0.5


def test_quantizer_parameters_have_their_own_rate_and_no_weight_decay() -> None:
    g = geta.GETA(mlp([4, 6, 2]), torch.randn(3, 4), quantize="weights+activations")
    opt = g.qasso("adamw", lr=0.01, lr_quant=1e-4, weight_decay=0.1, target_sparsity=0.5, total_steps=30)
    roles = {group["role"]: group for group in opt.param_groups}
    assert set(roles) == {"weights", "weight_quantizers", "act_quantizers"}
    assert roles["weights"]["lr"] == 0.01 and roles["weights"]["weight_decay"] == 0.1
    assert roles["act_quantizers"]["lr"] == 1e-4 and roles["act_quantizers"]["weight_decay"] == 0.0


def test_cooldown_freezes_quantization_parameters() -> None:
    g = geta.GETA(mlp([4, 6, 2]), torch.randn(3, 4), quantize="weights+activations")
    opt = g.qasso("sgd", lr=0.05, target_sparsity=0.5, total_steps=30)
    data = batches(torch.randn(3, 4), 40)
    train(g.model, opt, data[: opt.schedule.cooldown_start])
    quantizer_state = [p.detach().clone() for q in opt.weight_quantizers + opt.act_quantizers for p in q.parameters()]
    train(g.model, opt, data[opt.schedule.cooldown_start:])
    after = [p for q in opt.weight_quantizers + opt.act_quantizers for p in q.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(quantizer_state, after))


def run_with_checkpoint(interrupt: int | None, total: int = 36) -> list[Tensor]:
    torch.manual_seed(0)
    model = mlp([4, 8, 6, 2], norm=True)
    example = torch.randn(8, 4)
    data = batches(example, total, seed=1)

    def fresh() -> tuple[geta.GETA, QASSO, torch.optim.lr_scheduler.LRScheduler]:
        g = geta.GETA(model, example, quantize="weights+activations")
        opt = g.qasso("sgd", lr=0.05, momentum=0.9, target_sparsity=0.5, total_steps=total, lr_quant=1e-3)
        return g, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)

    g, opt, scheduler = fresh()
    for step, x in enumerate(data):
        if step == interrupt:
            buffer = io.BytesIO()
            state = {"model": g.model.state_dict(), "opt": opt.state_dict(), "sched": scheduler.state_dict()}
            torch.save(state, buffer)
            buffer.seek(0)
            checkpoint = torch.load(buffer)
            g, opt, scheduler = fresh()
            g.model.load_state_dict(checkpoint["model"])
            opt.load_state_dict(checkpoint["opt"])
            scheduler.load_state_dict(checkpoint["sched"])
        train(g.model, opt, [x])
        scheduler.step()
    return [t.detach().clone() for t in g.model.state_dict().values()]


@pytest.mark.parametrize("interrupt", [2, 9, 17, 20, 28, 33])  # warm-up, projection, joint (start, middle), cool-down
def test_resuming_from_a_checkpoint_is_bit_for_bit(interrupt: int) -> None:
    uninterrupted = run_with_checkpoint(None)
    resumed = run_with_checkpoint(interrupt)
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted, resumed))


def test_checkpoint_of_another_model_is_refused() -> None:
    opt = geta.GETA(mlp([4, 6, 2]), torch.randn(3, 4)).qasso(lr=0.1, target_sparsity=0.5, total_steps=30)
    other = geta.GETA(mlp([4, 8, 2]), torch.randn(3, 4)).qasso(lr=0.1, target_sparsity=0.5, total_steps=30)
    with pytest.raises(ConfigError, match="groups"):
        other.load_state_dict(opt.state_dict())
    with pytest.raises(ConfigError, match="QASSO checkpoint"):
        other.load_state_dict(other.base.state_dict())


def test_fits_schedulers_clipping_and_grad_scaler() -> None:
    g = geta.GETA(mlp([4, 8, 2]), torch.randn(8, 4), quantize="weights+activations")
    opt = g.qasso("sgd", lr=0.1, target_sparsity=0.5, total_steps=30, lr_quant=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x in batches(torch.randn(8, 4), 30):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = g.model(x).float().square().mean()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(g.model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            scheduler.step()
    assert opt.base.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert opt.steps_done == 30 and g.group_sparsity() == 0.5


def test_nonfinite_gradients_are_skipped_with_one_warning() -> None:
    g = geta.GETA(mlp([4, 6, 2]), torch.randn(3, 4))
    opt = g.qasso("sgd", lr=0.1, target_sparsity=0.5, total_steps=30)
    before = copy.deepcopy(g.model.state_dict())
    with pytest.warns(RuntimeWarning, match="not finite") as record:
        for _ in range(2):
            opt.zero_grad()
            g.model(torch.randn(3, 4)).sum().backward()
            g.model[0].bias.grad[0] = float("nan")
            opt.step()
    assert len([w for w in record if "not finite" in str(w.message)]) == 1
    assert opt.steps_done == 2 and opt.skipped_steps == 2 and opt.metrics().skipped_steps == 2
    assert all(torch.equal(a, b) for a, b in zip(before.values(), g.model.state_dict().values()))


def test_metrics_and_callback_report_each_step() -> None:
    seen: list[QassoMetrics] = []
    g = geta.GETA(mlp([4, 6, 2]), torch.randn(3, 4), quantize="weights+activations")
    opt = g.qasso("sgd", lr=0.05, target_sparsity=0.5, total_steps=30, callback=seen.append, lr_quant=1e-3)
    assert opt.stage is Stage.WARMUP
    train(g.model, opt, batches(torch.randn(3, 4), 30))
    assert [m.step for m in seen] == list(range(1, 31))
    stages = [m.stage for m in seen]
    assert stages == sorted(stages, key=list(Stage).index) and set(stages) == set(Stage)
    last = seen[-1]
    assert last.group_sparsity == 0.5 and last.pruned_groups == 3 and last.redundant_groups == 0
    assert 4 - BIT_TOLERANCE <= last.weight_bits_min <= last.weight_bits_max <= 8 + BIT_TOLERANCE
    assert 4 - BIT_TOLERANCE <= last.act_bits_min <= last.act_bits_max <= 8 + BIT_TOLERANCE
    assert 0 < last.rel_bops <= (8 * 8) / (32 * 32)
