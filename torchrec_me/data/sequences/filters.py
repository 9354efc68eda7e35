"""Which interactions a prepared sequence dataset keeps: a rating threshold, then k-core.

* **Rating threshold** (off by default): keep only interactions rated at least
  ``rating_threshold`` (the positive ones). ML-1M in the HSTU papers keeps all ratings.
* **Iterative k-core**: every kept user has at least ``min_user_count`` and every kept
  item at least ``min_item_count`` interactions (counted with repeats, after the
  threshold). Each round drops, at once, the interactions of every user and item below
  its minimum on the current counts, until a round drops nothing; the result is the
  unique largest subset with that property, whatever the order of removal. A count of
  0 or 1 is no constraint.
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np


@dataclass(frozen=True)
class FilterResult:
    """The kept interactions and what the filters did.

    Args:
        keep (np.ndarray): (n,) bool, the interactions kept.
        rounds (int): k-core rounds that dropped something.
        below_threshold (int): interactions dropped by the rating threshold.
        removed_by_kcore (int): interactions dropped by the k-core filter.
    """

    keep: np.ndarray
    rounds: int
    below_threshold: int
    removed_by_kcore: int

    def to_json(self) -> Dict[str, Any]:
        """The interaction counts for ``metadata.json``."""
        return {"below_rating_threshold": self.below_threshold, "removed_by_kcore": self.removed_by_kcore}


def kcore(users: np.ndarray, items: np.ndarray, min_user_count: int, min_item_count: int, keep: np.ndarray) -> int:
    """Apply iterative k-core filtering to ``keep`` in place; returns the rounds that dropped something.

    Args:
        users (np.ndarray): (n,) int64 user codes.
        items (np.ndarray): (n,) int64 item codes.
        min_user_count (int): least interactions of a kept user.
        min_item_count (int): least interactions of a kept item.
        keep (np.ndarray): (n,) bool, the interactions still in; updated.
    """
    n_users = int(users.max(initial=-1)) + 1
    n_items = int(items.max(initial=-1)) + 1
    rounds = 0
    while True:
        idx = np.flatnonzero(keep)
        user_counts = np.bincount(users[idx], minlength=n_users)
        item_counts = np.bincount(items[idx], minlength=n_items)
        drop = (user_counts[users[idx]] < min_user_count) | (item_counts[items[idx]] < min_item_count)
        if not drop.any():
            return rounds
        keep[idx[drop]] = False
        rounds += 1


def filter_interactions(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    rating_threshold: Optional[float] = None,
    min_user_count: int = 0,
    min_item_count: int = 0,
) -> FilterResult:
    """The rating threshold (when given), then the iterative k-core; see the module docstring."""
    keep = np.ones(len(users), dtype=bool) if rating_threshold is None else ratings >= rating_threshold
    after_threshold = int(keep.sum())
    rounds = kcore(users, items, min_user_count, min_item_count, keep)
    return FilterResult(keep, rounds, len(users) - after_threshold, after_threshold - int(keep.sum()))
