"""QASSO against dense training on sklearn digits, three initialization seeds per base optimizer.

The digits CNN (``geta.models.cnn.digits_cnn``) is trained from the same initialization twice for
600 steps of batch 64: densely with the base optimizer, and with QASSO over the same base optimizer
(weights and activations quantized, 50% of the groups removed, bits in [4, 8], lr_quant 1e-3). Prints
test accuracy of both, the final group sparsity, bit ranges and relative BOPs (dense MACs), and the
QASSO training time. About 2 minutes on one CPU thread:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qasso_digits_accuracy.py
"""

from __future__ import annotations

import time
import warnings

import torch

import geta
from geta.data.digits import load_digits
from geta.models.cnn import digits_cnn
from geta.train import accuracy, train_steps

STEPS = 600
SETTINGS = {"sgd": {"lr": 0.05, "momentum": 0.9}, "adam": {"lr": 3e-3}}
BASES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def main() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    split = load_digits(seed=0)
    for optimizer, settings in SETTINGS.items():
        for seed in (0, 1, 2):
            torch.manual_seed(seed)
            initial = digits_cnn()
            dense = digits_cnn()
            dense.load_state_dict(initial.state_dict())
            train_steps(dense, BASES[optimizer](dense.parameters(), **settings), split, steps=STEPS)
            dense_accuracy = accuracy(dense, split.test_x, split.test_y)
            g = geta.GETA(initial, split.train_x[:64], quantize="weights+activations",
                          calibration_data=[split.train_x[:256]])
            opt = g.qasso(optimizer, target_sparsity=0.5, total_steps=STEPS, lr_quant=1e-3, **settings)
            start = time.perf_counter()
            train_steps(g.model, opt, split, steps=STEPS)
            elapsed = time.perf_counter() - start
            m = opt.metrics()
            print(f"{optimizer} seed {seed}: dense {dense_accuracy:.4f}  "
                  f"qasso {accuracy(g.model, split.test_x, split.test_y):.4f}  "
                  f"sparsity {m.group_sparsity}  weight bits {m.weight_bits_min:.2f}-{m.weight_bits_max:.2f}  "
                  f"act bits {m.act_bits_min:.2f}-{m.act_bits_max:.2f}  rel. BOPs {m.rel_bops:.4f}  {elapsed:.1f} s",
                  flush=True)


if __name__ == "__main__":
    main()
