"""GETA(...): every layer kind gets quantizers, the user's model is untouched, inputs and errors."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.zoo import EveryLayer, ScaledDense, every_layer_inputs, small_cnn
from torch import nn

import geta
from geta.errors import ConfigError, ModelError

EXPECTED_LAYERS = {
    "embed": "Embedding",
    "attn": "MultiheadAttention",
    "attn.out_proj": "NonDynamicallyQuantizableLinear",
    "gpt_conv1d": "Conv1D",
    "conv1d": "Conv1d",
    "deconv1d": "ConvTranspose1d",
    "conv2d": "Conv2d",
    "deconv2d": "ConvTranspose2d",
    "conv3d": "Conv3d",
    "deconv3d": "ConvTranspose3d",
    "linear": "Linear",
    "sub_linear": "MyLinear",
    "custom": "ScaledDense",
}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("mode", ["weights", "weights+activations"])
def test_every_layer_kind_gets_a_quantizer_and_matches_float_at_16_bits(mode: str) -> None:
    model = EveryLayer().eval()
    inputs = every_layer_inputs()
    before = copy.deepcopy(model.state_dict())
    g = geta.GETA(model, inputs, quantize=mode)
    layers = {layer.name: layer for layer in g.layers}
    assert {name: layer.kind for name, layer in layers.items()} == EXPECTED_LAYERS
    for name, layer in layers.items():
        assert isinstance(layer.weight_quantizer, geta.Quantizer), name
        assert layer.weight_quantizer.bit_width().item() == pytest.approx(16, abs=1e-4)
    if mode == "weights+activations":
        with_input = {name for name, layer in layers.items() if layer.input_quantizer is not None}
        # embeddings read indices; out_proj is applied functionally inside MultiheadAttention
        assert with_input == set(EXPECTED_LAYERS) - {"embed", "attn.out_proj"}
        assert [name for name, _ in g.unquantized()] == ["attn.out_proj"]
    g.model.eval()
    with torch.no_grad():
        assert _relative_error(g.model(*inputs), model(*inputs)) < 1e-3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, geta.Quantizer) for m in model.modules())


@pytest.mark.parametrize(("kwargs", "captures"), [
    ({"quantize": "weights"}, 1),
    ({"quantize": "weights+activations"}, 1),  # the constructor's capture is reused
    ({"quantize": "weights+activations", "per_channel": True}, 2),  # per-channel quantizers must be in the graph
])
def test_the_search_space_reuses_the_constructors_capture_while_every_quantizer_is_per_tensor(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict, captures: int
) -> None:
    torch.manual_seed(0)
    model, x = small_cnn().eval(), torch.randn(2, 3, 8, 8)

    def slices(g: geta.GETA) -> list[list[tuple[str, int, list[int]]]]:
        return [sorted((s.name, s.dim, s.indices.tolist()) for s in group.slices if not s.is_quantizer)
                for group in g.groups]

    plain = slices(geta.GETA(model, x, quantize="none"))
    calls = []
    capture = geta.api.capture

    def counted(*args: object, **options: object) -> object:
        calls.append(args)
        return capture(*args, **options)

    monkeypatch.setattr(geta.api, "capture", counted)
    groups = slices(geta.GETA(model, x, **kwargs))
    assert len(calls) == captures
    assert groups == plain


def test_quantizers_change_outputs_at_low_bits_and_get_gradients() -> None:
    model = EveryLayer().eval()
    inputs = every_layer_inputs()
    g = geta.GETA(model, inputs, quantize="weights+activations", initial_weight_bits=3, initial_act_bits=3)
    out = g.model(*inputs)
    assert _relative_error(out, model(*inputs)) > 1e-3
    out.square().sum().backward()
    for layer in g.layers:
        for p in (layer.weight_quantizer.d, *layer.weights()):
            assert p.grad is not None and torch.isfinite(p.grad).all(), layer.name


def test_unsigned_input_quantizer_only_after_provably_nonnegative_ops() -> None:
    g = geta.GETA(EveryLayer(), every_layer_inputs(), quantize="weights+activations")
    signed = {layer.name: layer.input_quantizer.signed for layer in g.layers if layer.input_quantizer is not None}
    assert signed == {
        "attn": True, "gpt_conv1d": True, "conv1d": False, "deconv1d": False, "conv2d": True, "deconv2d": False,
        "conv3d": True, "deconv3d": False, "linear": True, "sub_linear": False, "custom": True,
    }


@pytest.mark.parametrize("activation", [nn.ReLU(inplace=True), nn.ReLU6(inplace=True), nn.Hardtanh(0, 1, inplace=True)])
def test_inplace_activations_give_the_next_layer_an_unsigned_input(activation: nn.Module) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), activation, nn.Conv2d(4, 4, 1))
    g = geta.GETA(model.eval(), torch.randn(2, 3, 8, 8), quantize="weights+activations")
    signed = {layer.name: layer.input_quantizer.signed for layer in g.layers}
    assert signed == {"0": True, "3": False}


def test_activation_ranges_come_from_calibration_batches_not_weights() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    example = torch.randn(2, 4)
    calibration = [torch.full((2, 4), 7.0), torch.full((2, 4), -3.0)]
    g = geta.GETA(model, example, quantize="weights+activations", calibration_data=calibration)
    first = g.layers[0]
    assert first.input_quantizer.q_m.item() == pytest.approx(7.0)
    assert first.weight_quantizer.q_m.item() == pytest.approx(model[0].weight.abs().max().item())


def test_state_dict_keeps_original_keys_and_loads_back() -> None:
    model = small_cnn()
    g = geta.GETA(model, torch.randn(2, 3, 8, 8), quantize="weights+activations")
    state = g.model.state_dict()
    assert set(model.state_dict()) <= set(state)
    extra = set(state) - set(model.state_dict())
    assert extra and all("_quantizer." in key for key in extra)
    fresh = small_cnn()
    result = fresh.load_state_dict(state, strict=False)
    assert sorted(result.unexpected_keys) == sorted(extra) and not result.missing_keys
    clone = geta.GETA(small_cnn(), torch.randn(2, 3, 8, 8), quantize="weights+activations")
    clone.model.load_state_dict(state)
    assert all(torch.equal(v, clone.model.state_dict()[k]) for k, v in state.items())


def test_inplace_modifies_the_given_model() -> None:
    model = small_cnn()
    g = geta.GETA(model, torch.randn(2, 3, 8, 8), inplace=True)
    assert g.model is model and any(isinstance(m, geta.Quantizer) for m in model.modules())


def test_tied_weights_share_one_quantizer() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 6)
            self.head = nn.Linear(6, 10, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(tokens))

    g = geta.GETA(Tied(), torch.randint(0, 10, (2, 5)))
    embed, head = g.layers
    assert embed.weight_quantizer is head.weight_quantizer
    assert g.model.head.parametrizations.weight.original is g.model.embed.parametrizations.weight.original
    assert g.report().params == 60


def test_dict_inputs_and_per_channel() -> None:
    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 3)
            self.custom = ScaledDense(3, 2)

        def forward(self, *, features: torch.Tensor) -> torch.Tensor:
            return self.custom(self.proj(features))

    g = geta.GETA(Keyword(), {"features": torch.randn(5, 4)}, per_channel=True)
    assert g.layers[0].weight_quantizer.d.shape == (3,)
    assert g.layers[1].weight_quantizer.d.shape == (2,)  # out_axis=1 of the (in, out) kernel
    assert g.model(features=torch.randn(2, 4)).shape == (2, 2)


def test_skip_by_glob_module_and_first_last() -> None:
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    g = geta.GETA(model, x, skip=[geta.FIRST, geta.LAST])
    assert [layer.weight_quantizer is None for layer in g.layers] == [True, False, True]
    assert [name for name, _ in g.unquantized()] == ["0", "7"]
    g = geta.GETA(model, x, skip=model[3])
    assert [layer.weight_quantizer is None for layer in g.layers] == [False, True, False]
    g = geta.GETA(EveryLayer(), every_layer_inputs(), skip="*conv*d")
    assert {layer.name for layer in g.layers if layer.weight_quantizer is None} == {
        "gpt_conv1d", "conv1d", "deconv1d", "conv2d", "deconv2d", "conv3d", "deconv3d"
    }
    g = geta.GETA(EveryLayer(), every_layer_inputs(), skip="attn")
    assert {layer.name for layer in g.layers if layer.weight_quantizer is None} == {"attn", "attn.out_proj"}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"quantize": "int8"}, ConfigError, "not a mode"),
        ({"initial_weight_bits": 8.5}, ConfigError, "initial_weight_bits=8.5 is not an integer"),
        ({"initial_act_bits": 1}, ConfigError, "initial_act_bits=1 is outside"),
        ({"weight_bits": 8}, TypeError, "weight_bits"),
        ({"skip": "nothing_here.*"}, ConfigError, "matches no quantizable layer"),
        ({"skip": nn.Linear(2, 2)}, ConfigError, "not a submodule"),
        ({"skip": [3]}, ConfigError, "modules or name patterns"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        geta.GETA(small_cnn(), torch.randn(2, 3, 8, 8), **kwargs)


def test_bad_model_or_inputs_raise_clear_errors() -> None:
    with pytest.raises(ModelError, match=r"must be a torch\.nn\.Module"):
        geta.GETA(lambda x: x, torch.randn(2))
    with pytest.raises(ModelError, match="cannot run on example_inputs"):
        geta.GETA(small_cnn(), torch.randn(2, 5, 8, 8))
    with pytest.raises(ModelError, match="example_inputs must be"):
        geta.GETA(small_cnn(), "an image")
    with pytest.raises(ConfigError, match="no batches"):
        geta.GETA(small_cnn(), torch.randn(2, 3, 8, 8), quantize="weights+activations", calibration_data=[])


def test_quantize_none_has_no_quantizers_and_full_precision_report() -> None:
    g = geta.GETA(small_cnn(), torch.randn(2, 3, 8, 8), quantize="none")
    assert not any(isinstance(m, geta.Quantizer) for m in g.model.modules())
    assert g.report().rel_bops == 1.0


def test_calibration_runs_in_training_mode_and_restores_every_buffer() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    batch = torch.randn(16, 4) * 5 + 3
    g = geta.GETA(model, batch, quantize="weights+activations")
    second = g.model[3]
    hidden = torch.relu(nn.functional.batch_norm(model[0](batch), None, None, model[1].weight, model[1].bias,
                                                 training=True))
    torch.testing.assert_close(second.geta_input_quantizer.q_m.detach(), hidden.abs().max().detach())
    norm = g.model[1]
    assert torch.equal(norm.running_mean, torch.zeros(8)) and torch.equal(norm.running_var, torch.ones(8))
    assert int(norm.num_batches_tracked) == 0 and norm.training


def test_calibration_falls_back_to_eval_mode_when_training_mode_cannot_run() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.warns(UserWarning, match="eval mode"):
        geta.GETA(model, torch.randn(1, 4), quantize="weights+activations")


def test_a_weight_already_parametrized_is_left_unquantized_with_the_reason_and_still_prunes() -> None:
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 6, 3, padding=1))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), conv, nn.ReLU(), nn.Conv2d(6, 2, 1))
    x = torch.randn(2, 3, 8, 8)
    g = geta.GETA(model.eval(), x, quantize="weights+activations")
    assert dict(g.unquantized()) == {"2": "weight already parametrized (weight_norm, spectral_norm): not quantized"}
    assert g.layers[0].weight_quantizer is not None and g.layers[2].weight_quantizer is not None
    g.zero_random_groups(0.5)
    with torch.no_grad():
        assert torch.allclose(g.construct_subnet()(x), g.model(x), atol=1e-5)
