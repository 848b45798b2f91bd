"""Item-id vocabulary: string ids <-> dense indices, with unseen items skipped and counted.

Index 0 is padding, so a sequence model can pad batches without a special case. An item the
model never saw cannot be scored; it is dropped from the input (never a crash) and counted, so
a report can say how much of the traffic the model was blind to.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

PAD = 0


class Vocab:
    def __init__(self, items: Sequence[str] = ()):
        self.items: list[str] = [""]  # index 0 = padding
        self.index: dict[str, int] = {}
        self.unseen_items = 0  # unseen input items skipped since creation
        self.unseen_inputs = 0  # inputs that had at least one unseen item
        for item in items:
            self.add(item)

    def __len__(self) -> int:
        """Number of real items (padding excluded)."""
        return len(self.items) - 1

    def __contains__(self, item: str) -> bool:
        return item in self.index

    def add(self, item: str) -> int:
        idx = self.index.get(item)
        if idx is None:
            idx = self.index[item] = len(self.items)
            self.items.append(item)
        return idx

    @classmethod
    def build(cls, sessions: Iterable[Sequence[str]]) -> Vocab:
        """Items in order of first appearance: deterministic for the same sessions."""
        vocab = cls()
        for session in sessions:
            for item in session:
                vocab.add(item)
        return vocab

    def encode(self, items: Sequence[str]) -> np.ndarray:
        """Indices of the known items, in order; unknown ones are skipped and counted."""
        ids = [self.index.get(item, PAD) for item in items]
        known = [i for i in ids if i != PAD]
        if len(known) < len(ids):
            self.unseen_items += len(ids) - len(known)
            self.unseen_inputs += 1
        return np.asarray(known, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.items[int(i)] for i in ids]

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.items[1:]))

    @classmethod
    def load(cls, path: Path) -> Vocab:
        return cls(json.loads(Path(path).read_text()))
