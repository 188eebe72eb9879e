"""Channel atoms: the units that dependency analysis ties together.

Every dimension of every tensor in a captured graph is a *slot*; each position of a slot carries one
atom per *layer* (a merged dimension, e.g. a flattened C x H x W, carries one layer per merged
dimension). Ops tie slots position by position, which joins their atoms; at the end the connected
atoms form classes, and a class that owns parameter positions is one minimally removable structure.
Atoms can be flagged with the reason their class cannot be removed, or as *neutral* (made up by a
broadcast: they tie nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

INTERNAL = "internal"  # a reason for dims that are not structures at all (kernel taps, vocabulary rows)


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
    balances: list[tuple[list[np.ndarray], int, str]] = field(default_factory=list)

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

    def flag(self, slot: Slot, reason: str) -> None:
        """Mark every atom of ``slot`` as not removable, for ``reason``."""
        for layer in slot.layers:
            self.flags.append((layer, reason))

    def balance(self, slot: Slot, pieces: int, reason: str) -> None:
        """The slot is cut into ``pieces`` equal parts by code with fixed sizes: a class may only be
        removed if it takes the same number of positions from every part."""
        self.balances.append((self.structural(slot), pieces, reason))

    def classes(self) -> tuple[np.ndarray, dict[int, set[str]]]:
        """(class of each atom, reasons per class) after all ties."""
        a = np.concatenate(self.edges_a) if self.edges_a else np.zeros(0, dtype=np.int64)
        b = np.concatenate(self.edges_b) if self.edges_b else np.zeros(0, dtype=np.int64)
        graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(self.count, self.count))
        _, label = connected_components(graph, directed=False)
        reasons: dict[int, set[str]] = {}
        for ids, reason in self.flags:
            for cls in np.unique(label[ids]):
                reasons.setdefault(int(cls), set()).add(reason)
        for layers, pieces, reason in self.balances:
            for layer in layers:
                per_piece = label[layer].reshape(pieces, -1)
                for cls in np.unique(per_piece):
                    counts = (per_piece == cls).sum(axis=1)
                    if np.any(counts != counts[0]):
                        reasons.setdefault(int(cls), set()).add(reason)
        return label, reasons
