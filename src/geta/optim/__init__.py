"""QASSO, the joint pruning and quantization optimizer: stages, rules, saliency and the optimizer."""
