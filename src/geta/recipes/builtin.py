"""The recipes that ship with geta: a CNN on digits, ResNet20, VGG7 and a small MobileNetV2 on Fashion-MNIST,
MiniLM on BBC News.

The weights+activations recipes make artifacts for integer runtimes: their quantizers keep t = 1
(``exponent="fixed"``) and residual inputs are quantized (``quantize_residuals``), so that onnxruntime runs
their convolutions as integer kernels. The weight-only recipes keep learned exponents: their exports
compute in float anyway.

Expected times were measured on this project's 2-core CPU machine with one thread (OMP_NUM_THREADS=1):
cnn-digits whole; the others from runs of one dense and one compression epoch (or a few batches),
scaled to the default epochs.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from geta.data.split import Split
from geta.data.text import TextData
from geta.recipes.recipe import Recipe, register_recipe


def _digits_cnn() -> nn.Module:
    from geta.models.cnn import digits_cnn

    return digits_cnn()


def _digits_data() -> Split:
    """The digits (bundled with scikit-learn and read in milliseconds, so checking the data loads them whole)."""
    from geta.data.digits import load_digits

    return load_digits(seed=0)


def _digits() -> tuple[nn.Module, Split]:
    return _digits_cnn(), _digits_data()


def _fashion_mnist_folder() -> Path:
    """Where load_fashion_mnist finds the four files, downloading them first where it would (cheap once there)."""
    from geta.data.fashion_mnist import find_fashion_mnist

    return find_fashion_mnist()


def _resnet20() -> nn.Module:
    from geta.models.cifar import ResNet20

    return ResNet20(classes=10, in_channels=1)


def _resnet20_fmnist() -> tuple[nn.Module, Split]:
    from geta.data.fashion_mnist import load_fashion_mnist

    return _resnet20(), load_fashion_mnist(seed=0)


def _vgg7() -> nn.Module:
    from geta.models.cifar import vgg7_bn

    return vgg7_bn(classes=10, in_channels=1, image_size=28)


def _vgg7_fmnist() -> tuple[nn.Module, Split]:
    from geta.data.fashion_mnist import load_fashion_mnist

    return _vgg7(), load_fashion_mnist(seed=0)


def _bbc_news() -> TextData:
    """The articles (read in hundredths of a second, so checking the data loads them whole)."""
    from geta.data.bbc_news import load_bbc_news

    return load_bbc_news(seed=0)


def _minilm() -> nn.Module:
    from geta.models.minilm import minilm_classifier

    return minilm_classifier(len(_bbc_news().classes), max_length=128)[0]


def _minilm_bbc() -> tuple[nn.Module, Split]:
    from geta.data.text import tokenize_split
    from geta.models.minilm import minilm_classifier

    data = _bbc_news()
    model, tokenizer = minilm_classifier(len(data.classes), max_length=128)
    return model, tokenize_split(data, tokenizer)


CNN_DIGITS = register_recipe(Recipe(
    name="cnn-digits",
    description="small CNN (14k weights) on sklearn digits; weights+activations, 50% of channels removed, 4-8 bits",
    expected_time="under 1 min",
    setup=_digits,
    check_data=_digits_data,
    build_model=_digits_cnn,
    quantize="weights+activations",
    dense_epochs=10,
    epochs=25,
    batch_size=64,
    optimizer="sgd",
    lr=0.05,
    compress_lr=0.02,
    optimizer_kwargs={"momentum": 0.9},
    sparsity=0.5,
    weight_bits=(4, 8),
    act_bits=(4, 8),
    skip=(),
    threads=1,
    exponent="fixed",
    quantize_residuals=True,
))

RESNET20_FMNIST = register_recipe(Recipe(
    name="resnet20-fmnist",
    description="ResNet20 on Fashion-MNIST (paper Table 2); weights only, 40% of channels removed, 4-8 bits",
    expected_time="about 1.5 h",
    setup=_resnet20_fmnist,
    check_data=_fashion_mnist_folder,
    build_model=_resnet20,
    quantize="weights",
    dense_epochs=10,
    epochs=10,
    batch_size=128,
    optimizer="sgd",
    lr=0.1,
    compress_lr=0.01,
    optimizer_kwargs={"momentum": 0.9, "weight_decay": 5e-4},
    sparsity=0.4,
    weight_bits=(4, 8),
    act_bits=(4, 8),
))

VGG7_FMNIST = register_recipe(Recipe(
    name="vgg7-fmnist",
    description="VGG7 on Fashion-MNIST (paper Table 3); weights+activations, 50% of channels removed, 4-8 bits",
    expected_time="about 4 h",
    setup=_vgg7_fmnist,
    check_data=_fashion_mnist_folder,
    build_model=_vgg7,
    quantize="weights+activations",
    dense_epochs=10,
    epochs=10,
    batch_size=128,
    optimizer="sgd",
    lr=0.05,
    compress_lr=0.01,
    optimizer_kwargs={"momentum": 0.9, "weight_decay": 5e-4},
    sparsity=0.5,
    weight_bits=(4, 8),
    act_bits=(4, 8),
    exponent="fixed",
    quantize_residuals=True,
))

MINILM_BBC = register_recipe(Recipe(
    name="minilm-bbc",
    description="pretrained MiniLM-L6 fine-tuned on BBC News (paper Table 5); weights only, 50% of groups, 4-8 bits",
    expected_time="about 25 min",
    setup=_minilm_bbc,
    check_data=_bbc_news,
    build_model=_minilm,
    quantize="weights",
    dense_epochs=2,
    epochs=4,
    batch_size=32,
    optimizer="adamw",
    lr=1e-4,
    compress_lr=5e-5,
    optimizer_kwargs={"weight_decay": 0.01},
    sparsity=0.5,
    weight_bits=(4, 8),
    act_bits=(4, 8),
    pretrained=True,
))


def _mobilenetv2() -> nn.Module:
    from geta.models.mobilenet import mobilenetv2_small

    return mobilenetv2_small(classes=10, in_channels=1)


def _mobilenetv2_fmnist() -> tuple[nn.Module, Split]:
    from geta.data.fashion_mnist import load_fashion_mnist

    return _mobilenetv2(), load_fashion_mnist(seed=0)


MOBILENETV2_FMNIST = register_recipe(Recipe(
    name="mobilenetv2-fmnist",
    description="small MobileNetV2 (96k weights) on Fashion-MNIST; weights+activations for integer runtimes "
                "(t = 1, residuals quantized), 40% of groups removed, 4-8 bits",
    expected_time="about 50 min",
    setup=_mobilenetv2_fmnist,
    check_data=_fashion_mnist_folder,
    build_model=_mobilenetv2,
    quantize="weights+activations",
    exponent="fixed",
    quantize_residuals=True,
    dense_epochs=10,
    epochs=10,
    batch_size=128,
    optimizer="sgd",
    lr=0.05,
    compress_lr=0.01,
    optimizer_kwargs={"momentum": 0.9, "weight_decay": 4e-5},
    sparsity=0.4,
    weight_bits=(4, 8),
    act_bits=(4, 8),
))
