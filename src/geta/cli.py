"""The ``geta`` command line."""

from __future__ import annotations

import time

import typer

app = typer.Typer(help="geta: joint structured pruning and quantization-aware training for PyTorch models.")


@app.callback()
def main() -> None:
    """geta: joint structured pruning and quantization-aware training for PyTorch models."""


@app.command()
def demo(
    epochs: int = typer.Option(15, help="Epochs of dense training before quantization."),
    bits: int = typer.Option(4, help="Weight and activation bits for the quantization-aware fine-tuning."),
    qat_epochs: int = typer.Option(3, help="Epochs of quantization-aware fine-tuning."),
    seed: int = typer.Option(0, help="Seed of the data split, initialization and batch order."),
) -> None:
    """Train a small CNN on sklearn digits, make it quantization-aware, fine-tune at low bits, print the report."""
    import torch

    import geta
    from geta.data.digits import load_digits
    from geta.models.cnn import digits_cnn
    from geta.train import accuracy, train_epochs

    start = time.perf_counter()
    torch.manual_seed(seed)
    split = load_digits(seed=seed)
    model = digits_cnn()
    train_epochs(model, split, epochs=epochs, lr=3e-3, seed=seed)
    dense = accuracy(model, split.test_x, split.test_y)
    typer.echo(f"dense CNN on digits ({len(split.train_y)} train / {len(split.test_y)} test): accuracy {dense:.4f}")

    calibration = [x for x, _ in split.train_batches(256, torch.Generator().manual_seed(seed))][:4]
    compressor = geta.GETA(model, split.train_x[:64], quantize="weights+activations", calibration_data=calibration)
    quantizers = [q for layer in compressor.layers for q in (layer.weight_quantizer, layer.input_quantizer) if q]
    for b in (16, 8, bits):
        for quantizer in quantizers:
            quantizer.set_bits_(b)
        typer.echo(f"quantization-aware model at {b:>2} bits, before training: accuracy "
                   f"{accuracy(compressor.model, split.test_x, split.test_y):.4f}")
    train_epochs(compressor.model, split, epochs=qat_epochs, lr=1e-3, seed=seed)
    for quantizer in quantizers:
        quantizer.project_bits_(bits, bits)
    typer.echo(f"after {qat_epochs} epochs of quantization-aware training at {bits} bits: accuracy "
               f"{accuracy(compressor.model, split.test_x, split.test_y):.4f}")
    typer.echo(str(compressor.report()))
    typer.echo(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    app()
