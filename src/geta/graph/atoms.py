"""Channel atoms: the units that dependency analysis ties together.

Every dimension of every tensor in a captured graph is a *slot*; each position of a slot carries one
atom per *layer* (a merged dimension, e.g. a flattened C x H x W, carries one layer per merged
dimension). Ops tie slots position by position, which joins their atoms; at the end the connected
atoms form classes, and a class that owns parameter positions is one minimally removable structure.
Atoms can be flagged with the reason their class cannot be removed, or as *neutral* (made up by a
broadcast: they tie nothing).

A reshape that splits one dimension's structures over several output dims must pick the output dim
whose positions stay structures (the others become unprunable). The pick is deferred to the end: an
output dim whose positions are taken apart as separate tensors (``select``, ``unbind``: the q, k, v
parts of a packed projection) is passed over, otherwise the outermost one is taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

INTERNAL = "internal"  # a reason for dims that are not structures at all (kernel taps, vocabulary rows)
SINGLETON = "size 1"  # a reason for a tensor's size-1 dims: broadcast, never a structure of their own


@dataclass
class Slot:
    """One dimension of one tensor: its layers of atom ids (each an array as long as the dimension)."""

    layers: list[np.ndarray]
    fresh: bool = True  # no tie has touched its atoms yet (a fresh parameter slot may adopt a layout)

    @property
    def size(self) -> int:
        return len(self.layers[0]) if self.layers else 0


@dataclass
class Atoms:
    """Allocates atoms, records ties (edges) and flags, and finds the classes at the end."""

    count: int = 0
    neutral_mask: bytearray = field(default_factory=bytearray)
    edges_a: list[np.ndarray] = field(default_factory=list)
    edges_b: list[np.ndarray] = field(default_factory=list)
    flags: list[tuple[np.ndarray, str]] = field(default_factory=list)
    balances: list[tuple[list[np.ndarray], tuple[int, ...], str]] = field(default_factory=list)
    splits: list[Split] = field(default_factory=list)
    taken_apart: list[np.ndarray] = field(default_factory=list)

    def new(self, n: int, *, neutral: bool = False, reason: str | None = None) -> np.ndarray:
        """``n`` fresh atoms."""
        ids = np.arange(self.count, self.count + n, dtype=np.int64)
        self.count += n
        self.neutral_mask.extend((b"\x01" if neutral else b"\x00") * n)
        if reason is not None:
            self.flags.append((ids, reason))
        return ids

    def slot(self, n: int, *, neutral: bool = False, reason: str | None = None) -> Slot:
        """A slot of ``n`` positions with one layer of fresh atoms."""
        return Slot([self.new(n, neutral=neutral, reason=reason)])

    def is_neutral(self, layer: np.ndarray) -> bool:
        """Whether a layer was made up by a broadcast (its atoms tie nothing)."""
        return len(layer) == 0 or bool(self.neutral_mask[int(layer[0])])

    def structural(self, slot: Slot) -> list[np.ndarray]:
        """The slot's layers that are not neutral."""
        return [layer for layer in slot.layers if not self.is_neutral(layer)]

    def join(self, a: np.ndarray, b: np.ndarray) -> None:
        """Tie atoms a[i] and b[i] for every i."""
        if len(a) != len(b):
            raise ValueError(f"cannot tie {len(a)} atoms to {len(b)}")
        self.edges_a.append(a)
        self.edges_b.append(b)

    def join_slots(self, a: Slot, b: Slot) -> bool:
        """Tie two slots position by position, layer by layer; False (nothing tied) unless their
        structural layers pair up with the same partition of positions (the same merge layout)."""
        layers_a, layers_b = self.structural(a), self.structural(b)
        if len(layers_a) != len(layers_b) or not all(
            np.array_equal(_partition(x), _partition(y)) for x, y in zip(layers_a, layers_b)
        ):
            return False
        for x, y in zip(layers_a, layers_b):
            self.join(x, y)
        return True

    def flag(self, slot: Slot, reason: str) -> None:
        """Mark every atom of ``slot`` as not removable, for ``reason``."""
        for layer in slot.layers:
            self.flags.append((layer, reason))

    def balance(self, slot: Slot, sizes: tuple[int, ...], reason: str) -> None:
        """The slot is cut into consecutive parts of ``sizes`` by code that scales them together: a
        class may only be removed if it takes from every part a share proportional to its size."""
        self.balances.append((self.structural(slot), tuple(sizes), reason))

    def take_apart(self, slot: Slot) -> None:
        """The slot's positions are taken apart as separate tensors (select, unbind)."""
        self.taken_apart.extend(self.structural(slot))

    def defer_split(self, split: Split) -> None:
        """Record a reshape split whose structure dim is picked at the end (see the module notes)."""
        self.splits.append(split)

    def classes(self) -> tuple[np.ndarray, dict[int, set[str]]]:
        """(class of each atom, reasons per class) after all ties."""
        self._resolve_splits()
        label = self._components()
        reasons: dict[int, set[str]] = {}
        for ids, reason in self.flags:
            for cls in np.unique(label[ids]):
                reasons.setdefault(int(cls), set()).add(reason)
        for layers, sizes, reason in self.balances:
            part = np.repeat(np.arange(len(sizes)), sizes)
            for layer in layers:
                classes, inverse = np.unique(label[layer], return_inverse=True)
                counts = np.zeros((len(classes), len(sizes)), dtype=np.int64)
                np.add.at(counts, (inverse, part), 1)
                unbalanced = np.any(counts * sizes[0] != counts[:, :1] * np.array(sizes), axis=1)
                for cls in classes[unbalanced].tolist():
                    reasons.setdefault(cls, set()).add(reason)
        return label, reasons

    def _components(self) -> np.ndarray:
        a = np.concatenate(self.edges_a) if self.edges_a else np.zeros(0, dtype=np.int64)
        b = np.concatenate(self.edges_b) if self.edges_b else np.zeros(0, dtype=np.int64)
        graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(self.count, self.count))
        return connected_components(graph, directed=False)[1]

    def _resolve_splits(self) -> None:
        """Pick each deferred split's structure dim (by the ties made so far) and tie or flag its proxies."""
        if not self.splits:
            return
        label = self._components()
        apart = np.zeros(label.max() + 1, dtype=bool)
        if self.taken_apart:
            apart[label[np.concatenate(self.taken_apart)]] = True
        for split in self.splits:
            kept = [k for k, proxy in enumerate(split.proxies) if not apart[label[proxy]].any()]
            chosen = kept[0] if kept else 0
            for k, (dim, proxy) in enumerate(zip(split.dims, split.proxies)):
                if k == chosen:
                    rows = np.moveaxis(split.grid, dim, 0).reshape(len(proxy), -1)
                    self.join(rows.reshape(-1), np.repeat(proxy, rows.shape[1]))
                else:
                    self.flags.append((proxy, split.reason))
        self.splits = []


@dataclass
class Split:
    """A reshape that spreads one layer of atoms (``grid``, shaped like the reshape's block of output
    dims) over several output ``dims``, with a proxy layer of atoms standing for each dim's positions."""

    grid: np.ndarray
    dims: list[int]
    proxies: list[np.ndarray]
    reason: str


def _partition(layer: np.ndarray) -> np.ndarray:
    """Which positions of a layer carry the same atom, as first-occurrence numbers."""
    _, first, inverse = np.unique(layer, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]
