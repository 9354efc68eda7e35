"""Per-field vocabularies: token counts, then the min-count threshold and token -> id."""

import collections
from typing import Dict, List, Optional, Sequence

import numpy as np


class Vocab:
    """Token counts of one field (first pass), then its token -> id table.

    After :meth:`finalize`, tokens seen at least ``min_count`` times get ids
    ``0 .. n - 1`` by decreasing count (ties: first seen first) and every other token
    maps to ``oov_id = n``; the table has ``size = n + 1`` rows.

    Memory: the counts are one Python dict per field, so they grow with the number of
    distinct tokens (a str key and a dict slot each; small-int counts are shared
    objects). Finalizing frees them and keeps only the kept tokens, which is why a
    converter counts the whole input first and encodes it in a second pass.

    Args:
        name (str): the field.

    Example::

        v = Vocab("C1")
        v.add_tokens(["a", "a", "b"])
        v.finalize(min_count=2)
        v.lookup(["a", "b", "zzz"])  # array([0, 1, 1]): b and zzz are out of vocabulary
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._counts: Optional[Dict[str, int]] = {}
        self.index: Dict[str, int] = {}
        self.tokens: List[str] = []
        self.token_counts: List[int] = []
        self.oov_count = 0
        self.min_count: Optional[int] = None

    def add_counts(self, tokens: Sequence[str], counts: Sequence[int]) -> None:
        """Add ``counts[i]`` occurrences of ``tokens[i]`` (tokens may repeat)."""
        table = self._counts
        if table is None:
            raise RuntimeError(f"vocab {self.name!r} is already finalized")
        get = table.get
        for tok, c in zip(tokens, counts):
            table[tok] = get(tok, 0) + c

    def add_tokens(self, tokens: Sequence[str]) -> None:
        """Count a plain sequence of tokens, one occurrence each."""
        c = collections.Counter(tokens)
        self.add_counts(list(c.keys()), list(c.values()))

    def finalize(self, min_count: int) -> None:
        """Keep the tokens seen at least ``min_count`` times and number them; frees the counts."""
        if self._counts is None:
            raise RuntimeError(f"vocab {self.name!r} is already finalized")
        kept = [(tok, c) for tok, c in self._counts.items() if c >= min_count]
        self.oov_count = sum(self._counts.values()) - sum(c for _, c in kept)
        kept.sort(key=lambda tc: -tc[1])  # stable: ties keep first-seen order
        self.tokens = [t for t, _ in kept]
        self.token_counts = [c for _, c in kept]
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.min_count = min_count
        self._counts = None

    @property
    def oov_id(self) -> int:
        """The id every rare or unseen token maps to: the last row of the table."""
        return len(self.tokens)

    @property
    def size(self) -> int:
        """Rows of the embedding table: the kept tokens plus the OOV row."""
        return len(self.tokens) + 1

    def lookup(self, tokens: Sequence[str]) -> np.ndarray:
        """(len(tokens),) int32 ids; rare and unseen tokens get ``oov_id``."""
        get, oov = self.index.get, self.oov_id
        return np.fromiter((get(t, oov) for t in tokens), dtype=np.int32, count=len(tokens))
