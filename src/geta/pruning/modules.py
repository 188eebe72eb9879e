"""After tensors are sliced, module attributes that describe their widths must follow.

A registry of small handlers keyed by module class (looked up along the MRO), each reading the new
widths from the module's own tensors. Modules that derive shapes from their inputs need none. An
``nn.MultiheadAttention`` that lost heads becomes a compact module (``attention.py``). Classes whose
forward reshapes to sizes derived from widths that pruning keeps (a head width computed from the
input width) are listed as having fixed reshapes: the analysis leaves what those reshapes split or
merge unprunable.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from torch import nn

from geta.pruning.attention import supports_compact, update_attention_widths
from geta.quant.prepare import original_parameter

Handler = Callable[[nn.Module], None]
_HANDLERS: dict[type, Handler] = {}
# Classes whose handler also updates the sizes their forward passes to ``split``.
_SPLIT_OWNERS: set[type] = set()
# Classes whose forward reshapes to sizes it derives from widths that pruning does not change (a head
# width computed as input width // head count): no handler can keep those in step.
_FIXED_RESHAPES: set[type] = set()


def handler(*classes: type) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the width handler of ``classes``."""

    def register(fn: Handler) -> Handler:
        for cls in classes:
            _HANDLERS[cls] = fn
        return fn

    return register


def owns_split_sizes(module: nn.Module | None) -> bool:
    """Whether ``module``'s handler keeps the sizes it splits tensors by in step with its widths."""
    _register_optional()
    if isinstance(module, nn.MultiheadAttention):
        return supports_compact(module)
    return module is not None and any(cls in _SPLIT_OWNERS for cls in type(module).__mro__)


def fixed_reshapes(module: nn.Module | None) -> bool:
    """Whether the dims that ``module``'s own reshapes split or merge must keep their sizes."""
    _register_optional()
    if isinstance(module, nn.MultiheadAttention):  # torch's forward ties the head width to embed_dim
        return not supports_compact(module)
    return module is not None and any(cls in _FIXED_RESHAPES for cls in type(module).__mro__)


def update_widths(module: nn.Module) -> None:
    """Run the handler of the most specific registered class of ``module``, if any."""
    _register_optional()
    for cls in type(module).__mro__:
        fn = _HANDLERS.get(cls)
        if fn is not None:
            fn(module)
            return


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
_OPTIONAL: dict[tuple[str, str], tuple[Handler, bool]] = {
    ("transformers.pytorch_utils", "Conv1D"): (_conv1d_transformers, False),
    ("transformers.models.gpt2.modeling_gpt2", "GPT2Attention"): (_gpt2_attention, True),
}
_OPTIONAL_FIXED = (
    # q, k, v reshaped by n_heads, the attended values back to the input width
    ("torchvision.models.maxvit", "RelativePositionalMultiHeadAttention"),
    # head width = input width // num_heads (shifted_window_attention); V2 subclasses it
    ("torchvision.models.swin_transformer", "ShiftedWindowAttention"),
)


def _register_optional() -> None:
    for (module_name, class_name), (fn, owns_split) in _OPTIONAL.items():
        cls = _imported_class(module_name, class_name)
        if cls is not None and cls not in _HANDLERS:
            _HANDLERS[cls] = fn
            if owns_split:
                _SPLIT_OWNERS.add(cls)
    for module_name, class_name in _OPTIONAL_FIXED:
        cls = _imported_class(module_name, class_name)
        if cls is not None:
            _FIXED_RESHAPES.add(cls)


def _imported_class(module_name: str, class_name: str) -> type | None:
    library = sys.modules.get(module_name)
    return getattr(library, class_name, None) if library is not None else None
