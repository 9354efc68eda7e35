"""Ranking rows over user sequences: each interaction, with its history, becomes one
labelled example for a sequential ranker (``model.task=ranking``).

Shape letters: B rows in a batch, L_b the tokens of row b (history + candidate),
N = sum_b L_b, S = ``max_seq_len``.

**A row** is one interaction at position p of user u's sequence: the user's most recent
``S - 1`` items before p (oldest first), then the candidate item as the last token. Every
token carries its timestamp and an *action*: the bucket of the rating the user gave it
(:func:`action_bucket`, 1..6) for history tokens, and :data:`UNKNOWN_ACTION` for the
candidate, whose rating is the label. So the label never reaches the model, and neither
does anything later than the candidate (the history is strictly before p; the
candidate's own timestamp is its impression time, known when ranking).

**Labels.** On rated data the label is ``rating >= positive_rating`` (MovieLens: 4 or 5
stars is a positive). On implicit data (every rating equal, e.g. the synthetic
sequences, or ``pairs``/``lines`` inputs) each interaction is a positive, and
``negatives`` uniform random items, drawn per row by a counter-based hash of
(seed, user, position, k) and shifted off the positive item, are its negatives: rows
with the same history and another candidate, labelled 0. ``negatives`` may also be set
on rated data (the sampled items are then "not interacted", labelled 0).

**Splits.** Training rows are the user's training positions p >= 1 (a first item has no
history), of the users kept by ``train_user_fraction``. The ``val`` and ``test`` rows are
each user's target of that split (leave-one-out or temporal, as prepared), with its
negatives. Validation and test histories hold nothing at or after their target.

**Streams** follow the retrieval reader's contract (``reader.py``): the training
examples (rows x (1 + negatives)) are permuted per epoch by ``(seed, epoch)``; step s of
rank r is a slice of one global stream, so training resumes exactly and restarts at
another world size with the same global batch. Evaluation rows are dealt with
``deal_rows`` (same number of batches on every rank; each row scored once).
"""

from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from torchrec_me.data.sequence_batch import ITEM_FEATURE
from torchrec_me.data.sequences.reader import EVAL_SPLITS, EpochOrder, SequenceReader, gather, stream_slice
from torchrec_me.data.store import DatasetError, deal_rows

#: The action of the candidate token: its rating is the label, so it is unknown.
UNKNOWN_ACTION = 0
#: Actions 1..6 are the rating rounded and clipped to 0..5, plus one.
NUM_ACTIONS = 7


def action_bucket(ratings: np.ndarray) -> np.ndarray:
    """(N,) int64 actions of ``ratings``: ``clip(round(rating), 0, 5) + 1``."""
    return np.clip(np.rint(ratings), 0, 5).astype(np.int64) + 1


@dataclass
class RankingBatch(Pipelineable):
    """One batch of ranking rows.

    Args:
        items (KeyedJaggedTensor): one key, ``item``: B rows of history items then the
            candidate (last), item ids in ``[0, num_items)``; ``lengths()`` (B,) >= 1.
        timestamps (torch.Tensor): (N,) int64, aligned with ``items.values()``.
        actions (torch.Tensor): (N,) int64 action of each token; :data:`UNKNOWN_ACTION`
            at every candidate.
        labels (torch.Tensor): (B,) float32 0/1.
        users (torch.Tensor): (B,) int64 user ids.
    """

    items: KeyedJaggedTensor
    timestamps: torch.Tensor
    actions: torch.Tensor
    labels: torch.Tensor
    users: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.items.lengths()

    def to(self, device: torch.device, non_blocking: bool = False) -> "RankingBatch":
        return RankingBatch(
            self.items.to(device=device, non_blocking=non_blocking),
            *(t.to(device=device, non_blocking=non_blocking) for t in (self.timestamps, self.actions, self.labels, self.users)),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.items.record_stream(stream)
        for t in (self.timestamps, self.actions, self.labels, self.users):
            t.record_stream(stream)  # type: ignore[arg-type]

    def pin_memory(self) -> "RankingBatch":
        return RankingBatch(self.items.pin_memory(), *(t.pin_memory() for t in (self.timestamps, self.actions, self.labels, self.users)))


@dataclass(frozen=True)
class RankingOptions:
    """How interactions become ranking rows.

    Args:
        positive_rating (float): on rated data, ``rating >= positive_rating`` is a positive.
        negatives (int): sampled negatives per interaction; -1: 1 on implicit data, 0 on rated.
        seed (int): seed of the negatives and of the training shuffle.
        max_seq_len (int): tokens of a row, history and candidate (the model's
            ``model.max_seq_len``): the default of every batch method.
    """

    positive_rating: float = 4.0
    negatives: int = -1
    seed: int = 0
    max_seq_len: int = 200


class RankingRows:
    """Ranking rows (see the module docstring) over a sequence reader's table.

    Args:
        reader (SequenceReader): the sequences, their splits and the user subset.
        options (RankingOptions): labels and negatives.

    Example::

        from torchrec_me.data.sequences.synthetic import SyntheticSequenceConfig, SyntheticSequences
        rows = RankingRows(SyntheticSequences(SyntheticSequenceConfig(num_users=20, num_items=30)))
        batch = next(rows.train_batches(0, 1, 8, 0, 1, max_seq_len=5))  # 8 rows of <= 5 tokens
    """

    has_teacher = False

    def __init__(self, reader: SequenceReader, options: RankingOptions = RankingOptions()) -> None:
        self.reader = reader
        self.options = options
        t = reader.table
        self.implicit = bool(len(t.ratings) == 0 or np.all(t.ratings == t.ratings[0]))
        self.negatives = (1 if self.implicit else 0) if options.negatives < 0 else options.negatives
        if self.implicit and self.negatives == 0:
            raise DatasetError("implicit data (every rating equal) has no negative labels: set data.ranking_negatives >= 1")
        self.num_items, self.fingerprint = reader.num_items, reader.fingerprint
        self._train = self._training_positions()
        self._epoch_order = EpochOrder(options.seed, 0x2A4B)

    @property
    def num_users(self) -> int:
        return self.reader.num_users

    def _training_positions(self) -> Tuple[np.ndarray, np.ndarray]:
        """(users, positions) of every training interaction with a history, user-major."""
        t, keep = self.reader.table, self.reader.training_users()
        count = np.maximum(t.train_len - 1, 0)
        if keep is not None:
            count = np.where(keep, count, 0)
        users = np.repeat(np.arange(t.num_users), count)
        positions = 1 + np.arange(len(users)) - np.repeat(np.cumsum(count) - count, count)
        return users, positions

    # ------------------------------------------------------------------ rows

    def candidates(self, users: np.ndarray, positions: np.ndarray, copies: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Candidate items and labels of examples (user, position, copy); copy 0 is the
        interaction itself, copy k >= 1 its k-th sampled negative."""
        t = self.reader.table
        at = t.offsets[users] + positions
        positive = t.items[at]
        labels = (t.ratings[at] >= self.options.positive_rating) if not self.implicit else np.ones(len(users), bool)
        key = _mix(_mix(_mix(np.full(len(users), self.options.seed, np.int64)) ^ users) ^ positions) ^ copies
        sampled = _mix(key) % max(self.num_items - 1, 1)
        sampled = np.where(sampled >= positive, sampled + 1, sampled) % self.num_items  # never the positive
        negative = copies > 0
        return np.where(negative, sampled, positive), np.where(negative, False, labels).astype(np.float32)

    def history(self, users: np.ndarray, positions: np.ndarray, max_seq_len: int) -> Tuple[np.ndarray, np.ndarray]:
        """The history of each row, the user's ``max_seq_len - 1`` most recent items before
        ``positions``: flat indices into the table (oldest first, rows concatenated) and
        the (R,) history lengths."""
        starts = np.maximum(positions - (max_seq_len - 1), 0)
        return gather(self.reader.table.offsets, users, starts, positions)

    def batch(self, users: np.ndarray, positions: np.ndarray, copies: np.ndarray, max_seq_len: int) -> RankingBatch:
        """The rows of examples (user, position, copy): ``max_seq_len - 1`` history items and the candidate."""
        if max_seq_len < 2:
            raise DatasetError(f"a ranking row needs max_seq_len >= 2 (history and candidate), got {max_seq_len}")
        t = self.reader.table
        index, hist_len = self.history(users, positions, max_seq_len)
        candidates, labels = self.candidates(users, positions, copies)
        at = t.offsets[users] + positions
        # Interleave: each row's history, then its candidate.
        lengths = hist_len + 1
        ends = np.cumsum(lengths)
        total = int(ends[-1]) if len(ends) else 0
        is_candidate = np.zeros(total, dtype=bool)
        is_candidate[ends - 1] = True
        items = np.empty(total, np.int64)
        times = np.empty(total, np.int64)
        actions = np.empty(total, np.int64)
        items[~is_candidate], items[is_candidate] = t.items[index], candidates
        times[~is_candidate], times[is_candidate] = t.timestamps[index], t.timestamps[at]
        actions[~is_candidate], actions[is_candidate] = action_bucket(t.ratings[index]), UNKNOWN_ACTION
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=[ITEM_FEATURE], values=torch.from_numpy(items), lengths=torch.from_numpy(lengths.astype(np.int32))
        )
        return RankingBatch(kjt, torch.from_numpy(times), torch.from_numpy(actions), torch.from_numpy(labels),
                            torch.from_numpy(users.astype(np.int64)))  # fmt: skip

    # ------------------------------------------------------------------ training

    def train_examples(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, positions, copies) of every training example, user-major, each
        interaction followed by its negatives (the stream's canonical order)."""
        users, positions = self._train
        copies = 1 + self.negatives
        return np.repeat(users, copies), np.repeat(positions, copies), np.tile(np.arange(copies), len(users))

    def stream_examples(self, step: int, rank: int, world_size: int, batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
        """(training interaction, copy) of each example of step ``step`` on ``rank``: the
        slice of the global stream of examples (interactions x (1 + negatives))."""
        copies = 1 + self.negatives
        n = len(self._train[0]) * copies
        if n == 0:
            raise DatasetError("no training interaction has a history: there is no ranking row")
        return np.divmod(stream_slice(n, self._epoch_order, step, rank, world_size, batch_size), copies)

    def train_batches(
        self, rank: int, world_size: int, batch_size: int, start: int = 0, stop: Optional[int] = None,
        max_seq_len: Optional[int] = None,
    ) -> Iterator[RankingBatch]:  # fmt: skip
        """This rank's training batches for steps ``start..stop-1`` (endless if stop is None)."""
        max_seq_len = max_seq_len or self.options.max_seq_len
        users, positions = self._train
        self.stream_examples(start, rank, world_size, batch_size)  # fail here, not mid-loop
        step = start
        while stop is None or step < stop:
            row, copy = self.stream_examples(step, rank, world_size, batch_size)
            yield self.batch(users[row], positions[row], copy, max_seq_len)
            step += 1

    # ------------------------------------------------------------------ evaluation

    def eval_examples(self, split: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, positions, copies) of every ``split`` row, user-major, negatives after
        each user's interaction."""
        if split not in EVAL_SPLITS:
            raise DatasetError(f"unknown evaluation split {split!r}; choose one of {', '.join(EVAL_SPLITS)}")
        pos = self.reader.table.targets[split]
        users = np.flatnonzero(pos >= 1)
        copies = 1 + self.negatives
        return np.repeat(users, copies), np.repeat(pos[users], copies), np.tile(np.arange(copies), len(users))

    def eval_ranges(self, split: str, rank: int, world_size: int, batch_size: int) -> List[Tuple[int, int, bool]]:
        n = len(self.eval_examples(split)[0])
        if n == 0:
            raise DatasetError(f"no user has a {split} target")
        return deal_rows(n, rank, world_size, batch_size)

    def eval_batches(
        self, split: str, rank: int, world_size: int, batch_size: int, max_seq_len: Optional[int] = None
    ) -> Iterator[Tuple[RankingBatch, None, bool]]:
        """This rank's share of ``split``: ``(batch, None, is_real)`` (no teacher), in the
        shape the CTR evaluation reads."""
        max_seq_len = max_seq_len or self.options.max_seq_len
        users, positions, copies = self.eval_examples(split)
        for lo, hi, real in self.eval_ranges(split, rank, world_size, batch_size):
            yield self.batch(users[lo:hi], positions[lo:hi], copies[lo:hi], max_seq_len), None, real


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on int64 keys (wrapping), non-negative 62-bit results: the
    numpy twin of :func:`torchrec_me.modules.sequential.items.hash_ids`' mixing step, for
    the data pipeline (numpy, no torch tensors)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z & np.uint64((1 << 62) - 1)).astype(np.int64)
