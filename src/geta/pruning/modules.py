"""After tensors are sliced, module attributes that describe their widths must follow.

Small handlers, the ``widths`` field of each class's record in ``geta.registry`` (looked up along the
MRO), each read the new widths from the module's own tensors. Modules that derive shapes from their
inputs need none. An ``nn.MultiheadAttention`` that lost heads becomes a compact module
(``attention.py``). Classes whose forward reshapes to sizes derived from widths that pruning keeps
(a head width computed from the input width) are recorded as having fixed reshapes: the analysis
leaves what those reshapes split or merge unprunable.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from geta import registry
from geta.pruning.attention import supports_compact, update_attention_widths
from geta.quant.prepare import original_parameter

Handler = Callable[[nn.Module], None]


def handler(*classes: type) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the width handler of ``classes``."""

    def register(fn: Handler) -> Handler:
        for cls in classes:
            registry.register_module(cls, widths=fn)
        return fn

    return register


def owns_split_sizes(module: nn.Module | None) -> bool:
    """Whether ``module``'s handler keeps the sizes it splits tensors by in step with its widths."""
    if isinstance(module, nn.MultiheadAttention):
        return supports_compact(module)
    return module is not None and bool(registry.lookup(module, "owns_split_sizes"))


def fixed_reshapes(module: nn.Module | None) -> bool:
    """Whether the dims that ``module``'s own reshapes split or merge must keep their sizes."""
    if isinstance(module, nn.MultiheadAttention):  # torch's forward ties the head width to embed_dim
        return not supports_compact(module)
    return module is not None and bool(registry.lookup(module, "fixed_reshapes"))


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


def _conv1d_transformers(module: nn.Module) -> None:
    module.nf = original_parameter(module, "weight").shape[1]


def _gpt2_attention(module: nn.Module) -> None:
    """GPT-2 splits c_attn's output into q, k, v by ``split_size``: the width of c_proj's input."""
    module.split_size = original_parameter(module.c_proj, "weight").shape[0]
    module.num_heads = module.split_size // module.head_dim


# Layers of optional libraries, registered once the library is imported (geta never imports it).
registry.register_optional("transformers.pytorch_utils", "Conv1D",
                           registry.ModuleRecord(widths=_conv1d_transformers))
registry.register_optional("transformers.models.gpt2.modeling_gpt2", "GPT2Attention",
                           registry.ModuleRecord(widths=_gpt2_attention, owns_split_sizes=True))
# q, k, v reshaped by n_heads, the attended values back to the input width
registry.register_optional("torchvision.models.maxvit", "RelativePositionalMultiHeadAttention",
                           registry.ModuleRecord(fixed_reshapes=True))
# head width = input width // num_heads (shifted_window_attention); V2 subclasses it
registry.register_optional("torchvision.models.swin_transformer", "ShiftedWindowAttention",
                           registry.ModuleRecord(fixed_reshapes=True))
