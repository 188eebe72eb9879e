"""What the dependency rules ask about the module whose forward an op runs in, from the module's
record in ``geta.registry``.

* ``owns_split_sizes``: the module's width handler keeps the sizes its forward splits tensors by in
  step with its widths (``pruning/modules.py``), so a split may lose positions from every part;
* ``fixed_reshapes``: its forward reshapes to sizes derived from widths that pruning keeps (a head
  width computed from the input width), so the dims those reshapes split or merge are unprunable.

An ``nn.MultiheadAttention`` whose class declares neither answers by its class: torch's forward ties
the head width to ``embed_dim``, and subnet construction replaces torch's class itself (not a
subclass, whose methods a compact forward would bypass) by the compact class of
``pruning/attention.py``, which reads every width from its weights and declares so in its record.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from geta import registry


def owns_split_sizes(module: nn.Module | None) -> bool:
    """Whether ``module``'s handler keeps the sizes it splits tensors by in step with its widths."""
    if module is None:
        return False
    declared = registry.lookup(module, "owns_split_sizes")
    if declared is None and isinstance(module, nn.MultiheadAttention):
        return _torch_attention(module)
    return bool(declared)


def fixed_reshapes(module: nn.Module | None) -> bool:
    """Whether the dims that ``module``'s own reshapes split or merge must keep their sizes."""
    if module is None:
        return False
    declared = registry.lookup(module, "fixed_reshapes")
    if declared is None and isinstance(module, nn.MultiheadAttention):
        return not _torch_attention(module)
    return bool(declared)


def _torch_attention(module: nn.MultiheadAttention) -> bool:
    """Whether ``module``'s class (before parametrization) is torch's ``nn.MultiheadAttention`` itself."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls is nn.MultiheadAttention


# Attention of optional libraries whose forward reshapes by fixed sizes (geta never imports them).
# q, k, v reshaped by n_heads, the attended values back to the input width
registry.register_optional("torchvision.models.maxvit", "RelativePositionalMultiHeadAttention",
                           registry.ModuleRecord(fixed_reshapes=True))
# head width = input width // num_heads (shifted_window_attention); V2 subclasses it
registry.register_optional("torchvision.models.swin_transformer", "ShiftedWindowAttention",
                           registry.ModuleRecord(fixed_reshapes=True))
