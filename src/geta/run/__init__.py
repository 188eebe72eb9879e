"""The end-to-end harness behind ``geta compress``: recipes trained densely, compressed with GETA or a
baseline, evaluated, and written out as reports and plots."""

from geta.run.harness import (
    BASELINES,
    METHODS,
    compress,
    run_baseline,
    run_methods,
    run_recipe,
    train_dense,
)
from geta.run.progress import Display, Point
from geta.run.result import DenseModel, RunResult
from geta.run.settings import Settings

__all__ = [
    "BASELINES",
    "METHODS",
    "DenseModel",
    "Display",
    "Point",
    "RunResult",
    "Settings",
    "compress",
    "run_baseline",
    "run_methods",
    "run_recipe",
    "train_dense",
]
