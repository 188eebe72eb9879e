"""Attention modules that keep their head count and head width as attributes.

A hand-written attention reshapes its projections by ``self.num_heads`` and ``self.head_dim`` (and
often reads ``self.all_head_size`` or a split size) in ``forward``. Once heads are removed those
attributes must follow, or the compact model's reshapes fail. Which attributes hold what is declared
per class with :func:`register_attention`; any other module is read by common names (``num_heads``,
``num_attention_heads``, ``n_heads``, ``n_head``, ``heads``; ``head_dim``, ``attention_head_size``,
``head_size``, ``dim_head``; ``num_key_value_heads``, ``num_kv_heads``, ``n_kv_heads``; widths
``all_head_size``, ``split_size``, ``inner_dim``).

The new values come from the projections inside the module whose output rows were cut: when every
cut takes whole heads (blocks of ``head_dim`` rows, in any packing of q, k and v), the head counts
shrink by the share of rows cut; when every cut takes the same offsets inside every head, the head
width shrinks. Anything else leaves the attributes as they are, and the probe of the search space
(``verify.py``) then finds the compact model broken and makes those groups unprunable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from fractions import Fraction

from torch import Tensor, nn

from geta import registry
from geta.errors import ConfigError
from geta.quant.layers import spec_for
from geta.quant.prepare import original_parameter
from geta.registry import AttentionAttributes

COMMON = AttentionAttributes(
    heads=("num_heads", "num_attention_heads", "n_heads", "n_head", "heads"),
    head_dim=("head_dim", "attention_head_size", "head_size", "dim_head"),
    kv_heads=("num_key_value_heads", "num_kv_heads", "n_kv_heads"),
    widths=("all_head_size", "split_size", "inner_dim"),
)
_EXCLUDED: tuple[type, ...] = (nn.MultiheadAttention,)  # its heads are handled by attention.py


def register_attention(
    cls: type[nn.Module],
    *,
    heads: str,
    head_dim: str | None = None,
    kv_heads: str | None = None,
    widths: tuple[str, ...] = (),
) -> None:
    """Declare which attributes of attention class ``cls`` hold its head count (``heads``), head width
    (``head_dim``), key/value head count (``kv_heads``, grouped-query attention) and widths equal to
    heads x head width (``widths``), so that removing heads updates them. Shorthand for
    ``geta.register_module(cls, attention=...)``; widths also declare that the module's splits are by
    them (``owns_split_sizes``).

    Example: ``geta.register_attention(MyAttention, heads="h", head_dim="d_k", widths=("inner",))``.
    Without ``head_dim`` the head width is taken as the first of ``widths`` divided by the head count."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"register_attention expects an nn.Module subclass, got {cls!r}")
    names = [heads, head_dim, kv_heads, *widths]
    if not all(isinstance(n, str) and n.isidentifier() for n in names if n is not None):
        raise ConfigError(f"register_attention({cls.__name__}): attribute names must be identifiers, got {names}")
    if head_dim is None and not widths:
        raise ConfigError(f"register_attention({cls.__name__}): give head_dim, or widths to derive it from")
    attributes = AttentionAttributes((heads,), (head_dim,) if head_dim else (), (kv_heads,) if kv_heads else (),
                                     tuple(widths))
    registry.register_module(cls, attention=attributes, owns_split_sizes=True if widths else None)


CutRows = Callable[[Tensor, int], set[int]]


def update_head_attributes(old: nn.Module, new: nn.Module, cut_rows: CutRows) -> None:
    """Set ``new``'s (the compact copy of ``old``) head attributes from the rows cut from the projections
    inside it; ``cut_rows(weight, axis)`` gives the positions removed from ``weight`` along ``axis``."""
    if isinstance(old, _EXCLUDED):
        return
    declared = registry.lookup(old, "attention")
    names = declared if isinstance(declared, AttentionAttributes) else COMMON
    heads = _int_attribute(old, names.heads)
    if heads is None:
        return
    widths = [(n, getattr(old, n)) for n in names.widths if _int_attribute(old, (n,)) is not None]
    head_dim = _int_attribute(old, names.head_dim)
    if head_dim is None:
        head_dim = widths[0][1] // heads if widths and widths[0][1] % heads == 0 else None
    kv_heads = _int_attribute(old, names.kv_heads)
    if head_dim is None:  # the head width is computed in forward (``-1`` in a view): only counts can follow
        share = _share_without_head_dim(old, heads, cut_rows)
        if share is not None and (heads * share).denominator == 1:
            _set(new, names.heads, heads, int(heads * share))
            if kv_heads and (kv_heads * share).denominator == 1:
                _set(new, names.kv_heads, kv_heads, int(kv_heads * share))
        return
    if head_dim < 1:
        return
    kept_share, kept_dim = _from_projections(old, head_dim, cut_rows)
    if kept_share is not None:
        new_heads, new_kv = heads * kept_share, (kv_heads * kept_share if kv_heads else None)
        if new_heads.denominator != 1 or (new_kv is not None and new_kv.denominator != 1):
            return
        _set(new, names.heads, heads, int(new_heads))
        if new_kv is not None and kv_heads is not None:  # new_kv is set exactly when kv_heads is
            _set(new, names.kv_heads, kv_heads, int(new_kv))
        new_width = int(new_heads) * head_dim
    elif kept_dim is not None:
        _set(new, names.head_dim, head_dim, kept_dim)
        new_width = heads * kept_dim
    else:
        return
    for name, value in widths:
        if value == heads * head_dim:
            setattr(new, name, new_width)


def _share_without_head_dim(module: nn.Module, heads: int, cut_rows: CutRows) -> Fraction | None:
    """The share of heads kept when the head width is no attribute: each width a projection could pack
    q, k or v heads in (its width / (k x heads), k = 1, 2, 3) is tried, smallest first, for whole heads."""
    candidates: set[int] = set()
    for weight, axis in _projections(module):
        width = weight.shape[axis]
        candidates.update(width // (k * heads) for k in (1, 2, 3) if width % (k * heads) == 0)
    for head_dim in sorted(c for c in candidates if c > 1):  # width 1 would take any cut for whole heads
        share, _ = _from_projections(module, head_dim, cut_rows)
        if share is not None:
            return share
    return None


def _from_projections(module: nn.Module, head_dim: int, cut_rows: CutRows) -> tuple[Fraction | None, int | None]:
    """(share of heads kept, new head width): at most one is set, when every projection of ``module``
    whose output rows were cut by head agrees on it (whole heads cut, or the same offsets cut inside
    every head)."""
    shares: set[Fraction] = set()
    dims: set[int] = set()
    for weight, axis in _projections(module):
        width, cut = weight.shape[axis], cut_rows(weight, axis)
        if not cut or width % head_dim:
            continue
        blocks = {p // head_dim for p in cut}
        offsets = {p % head_dim for p in cut}
        if len(cut) == len(blocks) * head_dim:
            shares.add(Fraction(width - len(cut), width))
        elif len(cut) == len(offsets) * (width // head_dim):
            dims.add(head_dim - len(offsets))
        # other cuts (the output projection's rows, cut with the residual width) are not by head
    if len(shares) == 1 and not dims:
        return shares.pop(), None
    if len(dims) == 1 and not shares:
        return None, dims.pop()
    return None, None


def _projections(module: nn.Module) -> Iterator[tuple[Tensor, int]]:
    """(weight, output axis) of every layer inside ``module`` (``module`` itself excluded)."""
    for child in module.modules():
        spec = spec_for(child) if child is not module else None
        if spec is None:
            continue
        for name in spec.weight_names(child):
            yield original_parameter(child, name), spec.out_axis


def _int_attribute(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(module, name, None) if name in vars(module) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _set(module: nn.Module, names: tuple[str, ...], old_value: int, value: int) -> None:
    for name in names:
        if vars(module).get(name) == old_value:
            setattr(module, name, value)
            return
