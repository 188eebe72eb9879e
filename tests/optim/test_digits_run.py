"""A real QASSO run: a small CNN on sklearn digits, weights and activations quantized, against the same
CNN trained densely for the same steps with the same base optimizer."""

from __future__ import annotations

import pytest
import torch

import geta
from geta.data.digits import load_digits
from geta.models.cnn import digits_cnn
from geta.train import accuracy, train_steps

STEPS = 600


@pytest.mark.parametrize(
    ("optimizer", "settings"),
    [("sgd", {"lr": 0.05, "momentum": 0.9}), ("adam", {"lr": 3e-3})],
)
def test_digits_cnn_reaches_half_sparsity_at_4_to_8_bits_near_dense_accuracy(optimizer: str, settings: dict) -> None:
    split = load_digits(seed=0)
    torch.manual_seed(0)
    initial = digits_cnn()

    dense = digits_cnn()
    dense.load_state_dict(initial.state_dict())
    base = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
    train_steps(dense, base(dense.parameters(), **settings), split, steps=STEPS)
    dense_accuracy = accuracy(dense, split.test_x, split.test_y)

    calibration = [split.train_x[:256]]
    g = geta.GETA(initial, split.train_x[:64], quantize="weights+activations", calibration_data=calibration)
    opt = g.qasso(optimizer, target_sparsity=0.5, total_steps=STEPS, lr_quant=1e-3, weight_bits=(4, 8),
                  act_bits=(4, 8), **settings)
    train_steps(g.model, opt, split, steps=STEPS)
    qasso_accuracy = accuracy(g.model, split.test_x, split.test_y)

    assert int(g.groups.zero_mask().sum()) == len(g.groups) // 2
    for quantizer in opt.weight_quantizers + opt.act_quantizers:
        bits = quantizer.bit_width()
        assert (bits >= 4 - 1e-5).all() and (bits <= 8 + 1e-5).all()
    assert qasso_accuracy >= dense_accuracy - 0.03, (qasso_accuracy, dense_accuracy)
    compact = g.construct_subnet().eval()
    assert accuracy(compact, split.test_x, split.test_y) == pytest.approx(qasso_accuracy, abs=1 / len(split.test_y))
