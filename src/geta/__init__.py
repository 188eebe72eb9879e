"""geta: joint structured pruning and quantization-aware training for any PyTorch model."""

from geta.api import GETA
from geta.errors import ConfigError, GetaError, ModelError
from geta.metrics.report import LayerReport, Report
from geta.optim.qasso import QASSO, QassoMetrics
from geta.optim.schedule import Stage
from geta.quant.layers import LayerSpec, register_layer
from geta.quant.prepare import FIRST, LAST
from geta.quant.quantizer import Quantizer

__all__ = [
    "FIRST",
    "GETA",
    "LAST",
    "ConfigError",
    "GetaError",
    "LayerReport",
    "LayerSpec",
    "ModelError",
    "QASSO",
    "QassoMetrics",
    "Quantizer",
    "Report",
    "Stage",
    "register_layer",
]
__version__ = "0.1.0"
