"""Where each user's training positions and evaluation targets lie.

Both splits see the users' time-ordered sequences as CSR arrays (``offsets`` (U+1,),
``timestamps`` (N,)) and return, per user, ``train_len`` (``items[:train_len]`` are
training positions) and the positions of the validation and test targets (-1: none).
A target's history is every item before it in the user's sequence, so it is never
older than its history (ties in time keep input order, as the sequences do).

* ``leave_one_out`` (the HSTU and SASRec protocol): the last item of a user is the test
  target, the one before it the validation target, the rest are training positions.
  A user with fewer than :data:`MIN_EVAL_LENGTH` items has no targets: all of their
  items are training positions (they are counted as ``users_train_only``).

* ``temporal`` (a global time cut): with ``t_val`` and ``t_test`` the timestamps of the
  interactions at the 80% and 90% quantiles of all interactions in time order, the
  training positions of a user are the items before ``t_val``; the validation target is
  the user's first item in ``[t_val, t_test)`` and the test target the first item at or
  after ``t_test``, each only if it has at least one item before it (a user who starts
  after a cut keeps that first item as history). Items after the validation target and
  before ``t_test`` are history of the test target but neither training positions nor
  targets. No training position is at or after ``t_val``, so no model trained on them
  has seen the time of any target. It needs timestamps.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Tuple

import numpy as np

MIN_EVAL_LENGTH = 3
TEMPORAL_QUANTILES: Tuple[float, float] = (0.8, 0.9)


@dataclass(frozen=True)
class SplitPositions:
    """Per-user split positions (U users).

    Args:
        train_len (np.ndarray): (U,) int64, ``items[:train_len]`` are training positions.
        val_index (np.ndarray): (U,) int64 position of the validation target, or -1.
        test_index (np.ndarray): (U,) int64 position of the test target, or -1.
        info (Dict[str, Any]): the ``split`` entry of ``metadata.json`` (mode, counts, cuts).
    """

    train_len: np.ndarray
    val_index: np.ndarray
    test_index: np.ndarray
    info: Dict[str, Any] = field(default_factory=dict)


def _with_counts(mode: str, train_len: np.ndarray, val: np.ndarray, test: np.ndarray, **extra: Any) -> SplitPositions:
    info = {
        "mode": mode,
        "train_positions": int(train_len.sum()),
        "users_with_val": int((val >= 0).sum()),
        "users_with_test": int((test >= 0).sum()),
        "users_train_only": int(((val < 0) & (test < 0)).sum()),
        **extra,
    }
    return SplitPositions(train_len, val, test, info)


def leave_one_out(offsets: np.ndarray, timestamps: np.ndarray) -> SplitPositions:
    """Last item test, the one before validation, the rest training; see the module docstring."""
    lengths = np.diff(offsets).astype(np.int64)
    long = lengths >= MIN_EVAL_LENGTH
    train_len = np.where(long, lengths - 2, lengths)
    val = np.where(long, lengths - 2, -1)
    test = np.where(long, lengths - 1, -1)
    return _with_counts("leave_one_out", train_len, val, test, min_length_for_targets=MIN_EVAL_LENGTH)


def _count_before(offsets: np.ndarray, before: np.ndarray) -> np.ndarray:
    """(U,) number of True in each user's slice of ``before`` (a prefix, as sequences are time-ordered)."""
    cum = np.concatenate([[0], np.cumsum(before, dtype=np.int64)])
    return cum[offsets[1:]] - cum[offsets[:-1]]


def temporal(offsets: np.ndarray, timestamps: np.ndarray) -> SplitPositions:
    """A global time cut at the 80% and 90% quantiles; see the module docstring."""
    n = len(timestamps)
    ordered = np.sort(timestamps, kind="stable")
    t_val, t_test = (int(ordered[min(int(q * n), n - 1)]) for q in TEMPORAL_QUANTILES)
    lengths = np.diff(offsets).astype(np.int64)
    train_len = _count_before(offsets, timestamps < t_val)
    before_test = _count_before(offsets, timestamps < t_test)

    def target(first: np.ndarray, low: int, high: float) -> np.ndarray:
        pos = np.maximum(first, 1)
        ok = pos < lengths
        t = np.where(ok, timestamps[np.minimum(offsets[:-1] + pos, n - 1)], low - 1)
        return np.where(ok & (t >= low) & (t < high), pos, -1)

    val = target(train_len, t_val, t_test)
    test = target(before_test, t_test, np.inf)
    return _with_counts(
        "temporal", train_len, val, test, quantiles=list(TEMPORAL_QUANTILES), val_cut=t_val, test_cut=t_test
    )


SPLIT_REGISTRY: Dict[str, Callable[[np.ndarray, np.ndarray], SplitPositions]] = {
    "leave_one_out": leave_one_out,
    "temporal": temporal,
}
SPLITS_NEEDING_TIMESTAMPS: Tuple[str, ...] = ("temporal",)
