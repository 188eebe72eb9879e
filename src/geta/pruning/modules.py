"""After tensors are sliced, module attributes that describe their widths must follow.

Small handlers, the ``widths`` field of each class's record in ``geta.registry`` (looked up along the
MRO), each read the new widths from the module's own tensors. Modules that derive shapes from their
inputs need none. An ``nn.MultiheadAttention`` that lost heads becomes a compact module
(``attention.py``). A handler that also keeps the sizes its module's forward splits by in step is
recorded as owning its split sizes, which the dependency analysis reads (``graph/owners.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from geta import registry
from geta.pruning.attention import supports_compact, update_attention_widths
from geta.quant.prepare import original_parameter

# A handler takes a module of the classes it is registered for (the registry looks it up by class).
Handler = TypeVar("Handler", bound=Callable[..., None])


def handler(*classes: type[nn.Module]) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the width handler of ``classes``."""

    def register(fn: Handler) -> Handler:
        for cls in classes:
            registry.register_module(cls, widths=fn)
        return fn

    return register


def update_widths(module: nn.Module) -> None:
    """Run the width handler of the most specific registered class of ``module``, if any."""
    fn = registry.lookup(module, "widths")
    if callable(fn):
        fn(module)


@handler(nn.modules.conv._ConvNd)
def _conv(module: nn.modules.conv._ConvNd) -> None:
    weight = original_parameter(module, "weight")
    depthwise = not module.transposed and module.groups > 1 and module.in_channels == module.groups
    if depthwise:  # channels and groups shrink together
        module.groups = weight.shape[0] // (module.out_channels // module.groups)
    if module.transposed:
        module.in_channels, module.out_channels = weight.shape[0], weight.shape[1] * module.groups
    else:
        module.out_channels, module.in_channels = weight.shape[0], weight.shape[1] * module.groups


@handler(nn.Linear)
def _linear(module: nn.Linear) -> None:
    weight = original_parameter(module, "weight")
    module.out_features, module.in_features = weight.shape


@handler(nn.MultiheadAttention)
def _multihead_attention(module: nn.MultiheadAttention) -> None:
    if supports_compact(module):
        update_attention_widths(module)


@handler(nn.Bilinear)
def _bilinear(module: nn.Bilinear) -> None:
    module.out_features, module.in1_features, module.in2_features = original_parameter(module, "weight").shape


@handler(nn.modules.batchnorm._NormBase)
def _batch_norm(module: nn.modules.batchnorm._NormBase) -> None:
    tensor = module.weight if module.weight is not None else module.running_mean
    if tensor is not None:
        module.num_features = tensor.shape[0]


@handler(nn.LayerNorm)
def _layer_norm(module: nn.LayerNorm) -> None:
    if module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)


@handler(nn.GroupNorm)
def _group_norm(module: nn.GroupNorm) -> None:
    if module.weight is not None:
        module.num_channels = module.weight.shape[0]


@handler(nn.Embedding, nn.EmbeddingBag)
def _embedding(module: nn.Embedding) -> None:
    module.num_embeddings, module.embedding_dim = original_parameter(module, "weight").shape


# transformers' classes, which geta does not import: Any (their width attributes are plain ints)
def _conv1d_transformers(module: Any) -> None:
    module.nf = original_parameter(module, "weight").shape[1]


def _gpt2_attention(module: Any) -> None:
    """GPT-2 splits c_attn's output into q, k, v by ``split_size``: the width of c_proj's input."""
    module.split_size = original_parameter(module.c_proj, "weight").shape[0]
    module.num_heads = module.split_size // module.head_dim


# Layers of optional libraries, registered once the library is imported (geta never imports it).
registry.register_optional("transformers.pytorch_utils", "Conv1D",
                           registry.ModuleRecord(widths=_conv1d_transformers))
registry.register_optional("transformers.models.gpt2.modeling_gpt2", "GPT2Attention",
                           registry.ModuleRecord(widths=_gpt2_attention, owns_split_sizes=True))
