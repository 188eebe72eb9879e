"""Quantization: the learnable quantizer, its kernels, the layer registry and model preparation."""
