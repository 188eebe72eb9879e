"""geta: joint structured pruning and quantization-aware training for any PyTorch model."""

from geta.api import GETA
from geta.errors import ConfigError, GetaError, ModelError, SavedModelError
from geta.export import export_onnx, load, save
from geta.metrics.report import LayerReport, Report, report
from geta.optim.allocation import Allocation
from geta.optim.config import QassoConfig
from geta.optim.qasso import QASSO, QassoMetrics
from geta.optim.schedule import Stage
from geta.pruning.heads import register_attention
from geta.quant.layers import register_layer
from geta.quant.prepare import FIRST, LAST
from geta.quant.quantizer import Quantizer
from geta.registry import AttentionAttributes, LayerSpec, ModuleRecord, register_module

__all__ = [
    "FIRST",
    "GETA",
    "LAST",
    "QASSO",
    "Allocation",
    "AttentionAttributes",
    "ConfigError",
    "GetaError",
    "LayerReport",
    "LayerSpec",
    "ModelError",
    "ModuleRecord",
    "QassoConfig",
    "QassoMetrics",
    "Quantizer",
    "Report",
    "SavedModelError",
    "Stage",
    "export_onnx",
    "load",
    "register_attention",
    "register_layer",
    "register_module",
    "report",
    "save",
]
__version__ = "0.1.0"
