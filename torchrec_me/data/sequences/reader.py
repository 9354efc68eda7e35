"""Batches of user sequences from in-memory CSR arrays: the half both sequence readers share.

:class:`~.dataset.SequenceDataset` (a prepared directory) and
:class:`~.synthetic.SyntheticSequences` (the generated default) each build a
:class:`SequenceTable` and hand it to :class:`SequenceReader`, which makes every
:class:`~torchrec_me.data.sequence_batch.SequenceBatch`.

**Training rows.** A user's training positions ``items[:train_len]`` are cut into windows
of at most ``S + 1`` items (``S = max_seq_len``), so that next-item prediction at every
position of a window needs at most ``S`` items of context:

* ``all`` (default): windows ending at ``train_len``, ``train_len - S``, ... and starting
  ``S + 1`` items earlier (clipped at 0); consecutive windows overlap by one item, so
  every training position but a user's first is predicted exactly once per epoch;
* ``last``: only the most recent window, as the reference implementations truncate.

Windows of fewer than 2 items predict nothing and are dropped. With
``ReadOptions.train_on_val`` the validation target and everything before it are training
positions too: the *reference* protocol, under which the published HSTU and SASRec
numbers were trained on every item but the test one (there is then no clean validation).

**Training stream.** In epoch ``e`` the windows are permuted by a generator seeded by
``(seed, e)``; the global stream is the permutations of epochs 0, 1, ... end to end, the
same for every world size. Training step ``s`` with per-rank batch ``b`` on ``W`` ranks
covers the global batch ``G = b * W`` of positions ``[s*G, (s+1)*G)``, and rank ``r``
takes positions ``[s*G + r*b, s*G + (r+1)*b)``. Batch ``s`` of rank ``r`` therefore
depends only on ``(seed, G, r*b, b, s)`` (and the windowing): ``train_batches(start=s)``
resumes exactly, every rank has a batch for every step, the ranks' batches of a step are
disjoint slices of one global batch, and a restart at another world size with the same
``G`` continues the same stream, so every window of an epoch is read exactly once
across the change. A step may cross an epoch's end (it then holds the last windows of
one epoch and the first of the next).

**Evaluation rows.** For split ``val`` or ``test``, every user with a target in it, in
user-id order, is one row: the user's most recent ``S`` items before the target (oldest
first), ``targets`` the target item and ``target_timestamps`` its time. The rows are dealt
as the CTR Parquet reader deals its rows: rank ``r`` takes rows ``[r*q, (r+1)*q)``,
``q = N // W``, in batches of ``B`` (the last one smaller), the same sizes on every rank;
the ``N - W*q < W`` rows left form one batch of one row on each rank, and a rank
without such a row repeats row 0 flagged ``is_real=False``. Every user with a target is
therefore scored exactly once, and every rank runs the same number of forwards.

**Seen items.** An eval row holds at most ``S`` history items, but excluding "the user's
own history" from full-corpus ranking needs all of it: :meth:`SequenceReader.seen_items`
returns, per user, the distinct items of the whole history before the target, as a
``JaggedTensor``. A repeated target (the user had it before) is in that list: excluding
the history then makes it a miss, which is the honest outcome (an exclusion that kept
just the target would leak it).
"""

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from torchrec_me.data.sequence_batch import ITEM_FEATURE, SequenceBatch
from torchrec_me.data.sequences.layout import EVAL_SPLITS
from torchrec_me.data.store import DatasetError, deal_rows

DEFAULT_MAX_SEQ_LEN = 200
Windows = Tuple[np.ndarray, np.ndarray, np.ndarray]  # users, starts, ends, each (R,) int64
Users = Union[torch.Tensor, np.ndarray, Sequence[int]]


@dataclass(frozen=True)
class ReadOptions:
    """How a sequence reader serves training rows.

    Args:
        seed (int): seed of the training shuffle.
        train_windows (str): ``all`` (every training position, default) or ``last`` (the
            most recent window of each user); see :data:`TRAIN_WINDOWS`.
        train_on_val (bool): train on the validation targets as well (the reference
            protocol); see the module docstring.
        train_user_fraction (float): train on the windows of this share of the users,
            a subset drawn by ``seed`` (nested: a smaller share is a subset of a larger
            one); evaluation keeps every user.
    """

    seed: int = 0
    train_windows: str = "all"
    train_on_val: bool = False
    train_user_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.train_windows not in TRAIN_WINDOWS:
            choices = ", ".join(TRAIN_WINDOWS)
            raise DatasetError(f"unknown train_windows {self.train_windows!r}; choose one of {choices}")
        if not 0.0 < self.train_user_fraction <= 1.0:
            raise DatasetError(f"train_user_fraction must be in (0, 1], got {self.train_user_fraction!r}")


@dataclass
class SequenceTable:
    """Every user's time-ordered sequence in CSR form (U users, N interactions).

    Args:
        offsets (np.ndarray): (U+1,) int64; user ``u`` owns ``[offsets[u], offsets[u+1])``.
        items (np.ndarray): (N,) int64 item ids in ``[0, num_items)``.
        timestamps (np.ndarray): (N,) int64 seconds (zeros without timestamps).
        ratings (np.ndarray): (N,) float32.
        train_len (np.ndarray): (U,) int64, ``items[:train_len]`` are training positions.
        targets (Dict[str, np.ndarray]): ``val`` and ``test``: (U,) int64 target position, -1 none.
    """

    offsets: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray
    train_len: np.ndarray
    targets: Dict[str, np.ndarray]

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    def check(self, num_items: int, where: str) -> None:
        """Raise :class:`DatasetError` unless ids and positions are consistent (``where`` names the data)."""
        n, lengths = int(self.offsets[-1]), np.diff(self.offsets)
        if any(len(a) != n for a in (self.items, self.timestamps, self.ratings)) or (lengths < 1).any():
            raise DatasetError(f"{where}: item, timestamp and rating lists disagree, or a user has no items")
        if n and (self.items.min() < 0 or self.items.max() >= num_items):
            low, high = int(self.items.min()), int(self.items.max())
            raise DatasetError(f"{where}: item ids outside [0, {num_items}) (min {low}, max {high})")
        if ((self.train_len < 0) | (self.train_len > lengths)).any():
            raise DatasetError(f"{where}: train_len outside [0, sequence length]")
        for split, pos in self.targets.items():
            if ((pos != -1) & ((pos < 1) | (pos >= lengths))).any():
                raise DatasetError(f"{where}: {split} target positions outside [1, sequence length)")

    def through_val(self) -> "SequenceTable":
        """The same table with each validation target and all before it added to the training positions."""
        train_len = np.maximum(self.train_len, self.targets["val"] + 1)
        return SequenceTable(self.offsets, self.items, self.timestamps, self.ratings, train_len, self.targets)

    def train_counts(self, num_items: int, users: Optional[np.ndarray] = None) -> np.ndarray:
        """(num_items,) int64 occurrences of each item at training positions (of the
        users where the (U,) bool mask ``users`` is True, or of all)."""
        lengths = np.diff(self.offsets)
        position = np.arange(self.offsets[-1]) - np.repeat(self.offsets[:-1], lengths)
        trained = position < np.repeat(self.train_len, lengths)
        if users is not None:
            trained &= np.repeat(users, lengths)
        return np.bincount(self.items[trained], minlength=num_items)


def all_windows(train_len: np.ndarray, max_seq_len: int) -> Windows:
    """Windows of ``max_seq_len + 1`` items overlapping by one, covering every training position."""
    count = np.where(train_len >= 2, -(-(train_len - 1) // max_seq_len), 0)
    users = np.repeat(np.arange(len(train_len)), count)
    k = np.arange(len(users)) - np.repeat(np.cumsum(count) - count, count)
    ends = train_len[users] - k * max_seq_len
    return users, np.maximum(ends - max_seq_len - 1, 0), ends


def last_window(train_len: np.ndarray, max_seq_len: int) -> Windows:
    """The most recent ``max_seq_len + 1`` training items of each user."""
    users = np.flatnonzero(train_len >= 2)
    ends = train_len[users]
    return users, np.maximum(ends - max_seq_len - 1, 0), ends


TRAIN_WINDOWS: Dict[str, Callable[[np.ndarray, int], Windows]] = {"all": all_windows, "last": last_window}


def gather(
    offsets: np.ndarray, users: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Flat indices of ``[starts, ends)`` of each user's sequence, concatenated, and the (R,) lengths."""
    lengths = (ends - starts).astype(np.int64)
    first = offsets[users] + starts
    index = np.arange(int(lengths.sum())) + np.repeat(first - (np.cumsum(lengths) - lengths), lengths)
    return index, lengths


class EpochOrder:
    """The order of the ``n`` training examples in each epoch: a permutation seeded by
    ``(seed, salt, epoch)``, the same on every rank. The stream only moves forward and a
    step spans at most two epochs, so the last two are kept.

    Args:
        seed (int): the training seed.
        salt (int): tells apart the streams of different readers.
    """

    def __init__(self, seed: int, salt: int) -> None:
        self.seed, self.salt = seed, salt
        self._perms: Dict[Tuple[int, int], np.ndarray] = {}

    def __call__(self, epoch: int, n: int) -> np.ndarray:
        key = (epoch, n)
        if key not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(next(iter(self._perms)))
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.salt, epoch]))
            self._perms[key] = rng.permutation(n)
        return self._perms[key]


def stream_slice(
    n: int, epoch_perm: Callable[[int, int], np.ndarray], step: int, rank: int, world_size: int, batch_size: int
) -> np.ndarray:
    """Rank ``rank``'s indices of training step ``step`` in a global stream of epochs of
    ``n`` examples, epoch ``e`` ordered by ``epoch_perm(e, n)``: positions
    ``[step*G + rank*b, step*G + (rank+1)*b)``, ``G = b * world_size`` (may cross an epoch)."""
    if not 0 <= rank < world_size:
        raise DatasetError(f"rank {rank} is outside a world of {world_size}")
    parts: List[np.ndarray] = []
    p = step * batch_size * world_size + rank * batch_size
    hi = p + batch_size
    while p < hi:
        epoch, k = divmod(p, n)
        take = min(hi - p, n - k)
        parts.append(epoch_perm(epoch, n)[k : k + take])
        p += take
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class SequenceReader:
    """Training and evaluation batches over a :class:`SequenceTable`; see the module docstring.

    Args:
        table (SequenceTable): the users' sequences and split positions.
        num_items (int): item ids are in ``[0, num_items)``.
        has_timestamps (bool): whether the timestamps are real (else all zero).
        options (ReadOptions): shuffle seed, windowing and protocol.
        item_counts (Optional[np.ndarray]): (num_items,) popularity over the table's own
            training positions, when already known (ignored with ``train_on_val``).
    """

    fingerprint: str  # set by the subclasses: what identifies the item ids

    def __init__(
        self, table: SequenceTable, num_items: int, has_timestamps: bool, options: ReadOptions = ReadOptions(),
        item_counts: Optional[np.ndarray] = None,
    ) -> None:  # fmt: skip
        self.table = table.through_val() if options.train_on_val else table
        self.num_items = num_items
        self.has_timestamps = has_timestamps
        self.options = options
        known = item_counts is not None and not options.train_on_val and options.train_user_fraction >= 1.0
        counts = item_counts if known else self.table.train_counts(num_items, self.training_users())
        self.item_counts = torch.tensor(np.asarray(counts), dtype=torch.int64)  # (num_items,), a copy
        self._windows: Dict[int, Windows] = {}
        self._epoch_order = EpochOrder(options.seed, 0x5E0)

    @property
    def num_users(self) -> int:
        """U, all users of the dataset (train-only ones included)."""
        return self.table.num_users

    # ------------------------------------------------------------------ batches

    def _batch(
        self, users: np.ndarray, starts: np.ndarray, ends: np.ndarray, targets: Optional[np.ndarray]
    ) -> SequenceBatch:
        """Rows ``items[starts:ends]`` of ``users``; ``targets`` are positions (eval) or None (training)."""
        t = self.table
        index, lengths = gather(t.offsets, users, starts, ends)
        values, row_lengths = torch.from_numpy(t.items[index]), torch.from_numpy(lengths.astype(np.int32))
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=[ITEM_FEATURE], values=values, lengths=row_lengths)
        if targets is None:
            target_items, target_times = np.full(len(users), -1, np.int64), np.zeros(len(users), np.int64)
        else:
            at = t.offsets[users] + targets
            target_items, target_times = t.items[at], t.timestamps[at]
        return SequenceBatch(
            items=kjt, timestamps=torch.from_numpy(t.timestamps[index]), ratings=torch.from_numpy(t.ratings[index]),
            targets=torch.from_numpy(target_items), target_timestamps=torch.from_numpy(target_times),
            users=torch.from_numpy(users.astype(np.int64)),
        )  # fmt: skip

    # ------------------------------------------------------------------ training

    def windows(self, max_seq_len: int) -> Windows:
        """``(users, starts, ends)`` of every training window, in canonical order."""
        if max_seq_len < 1:
            raise DatasetError(f"max_seq_len must be >= 1, got {max_seq_len}")
        if max_seq_len not in self._windows:
            windows = TRAIN_WINDOWS[self.options.train_windows](self.table.train_len, max_seq_len)
            keep = self.training_users()
            if keep is not None:
                windows = tuple(w[keep[windows[0]]] for w in windows)  # type: ignore[assignment]
            self._windows[max_seq_len] = windows
        return self._windows[max_seq_len]

    def training_users(self) -> Optional[np.ndarray]:
        """(U,) bool mask of the users whose windows are trained on (None: all of them).

        Users are ranked by one seeded random permutation and the first
        ``round(fraction * U)`` kept, so 10% of the users is a subset of 30%."""
        fraction = self.options.train_user_fraction
        if fraction >= 1.0:
            return None
        u = self.num_users
        order = np.random.default_rng(np.random.SeedSequence([self.options.seed, 0xF4AC])).permutation(u)
        keep = np.zeros(u, dtype=bool)
        keep[order[: max(1, round(fraction * u))]] = True
        return keep

    def train_rows(self, step: int, rank: int, world_size: int, batch_size: int, max_seq_len: int) -> np.ndarray:
        """Window indices of training step ``step`` on rank ``rank`` (see the module docstring):
        positions ``[step*G + rank*b, step*G + (rank+1)*b)`` of the global stream, ``G = b * world_size``."""
        n = len(self.windows(max_seq_len)[0])
        if n == 0:
            raise DatasetError("no user has two training items: there is no training window")
        return stream_slice(n, self._epoch_order, step, rank, world_size, batch_size)

    def train_batches(
        self, rank: int, world_size: int, batch_size: int, start: int = 0, stop: Optional[int] = None,
        max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    ) -> Iterator[SequenceBatch]:  # fmt: skip
        """This rank's training batches for steps ``start..stop-1`` (endless if stop is None).

        Each row is one window of at most ``max_seq_len + 1`` items; ``targets`` is all -1.
        """
        users, starts, ends = self.windows(max_seq_len)
        self.train_rows(start, rank, world_size, batch_size, max_seq_len)  # fail here, not mid-loop
        step = start
        while stop is None or step < stop:
            rows = self.train_rows(step, rank, world_size, batch_size, max_seq_len)
            yield self._batch(users[rows], starts[rows], ends[rows], None)
            step += 1

    # ------------------------------------------------------------------ evaluation

    def _targets(self, split: str) -> np.ndarray:
        if split not in EVAL_SPLITS:
            raise DatasetError(f"unknown evaluation split {split!r}; choose one of {', '.join(EVAL_SPLITS)}")
        return self.table.targets[split]

    def eval_users(self, split: str) -> np.ndarray:
        """(N,) int64 ids of the users with a target in ``split``, ascending."""
        return np.flatnonzero(self._targets(split) >= 0)

    def eval_ranges(self, split: str, rank: int, world_size: int, batch_size: int) -> List[Tuple[int, int, bool]]:
        """``(first row, end row, is_real)`` into :meth:`eval_users` of each of this rank's eval batches."""
        n = len(self.eval_users(split))
        if n == 0:
            raise DatasetError(f"no user has a {split} target")
        return deal_rows(n, rank, world_size, batch_size)

    def eval_batch(self, split: str, users: np.ndarray, max_seq_len: int = DEFAULT_MAX_SEQ_LEN) -> SequenceBatch:
        """The ``split`` rows of ``users`` (each must have a target there)."""
        pos = self._targets(split)[users]
        if (pos < 0).any():
            raise DatasetError(f"users {users[pos < 0][:5].tolist()} have no {split} target")
        return self._batch(users, np.maximum(pos - max_seq_len, 0), pos, pos)

    def eval_batches(
        self, split: str, rank: int, world_size: int, batch_size: int, max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    ) -> Iterator[Tuple[SequenceBatch, bool]]:
        """This rank's share of ``split``: ``(batch, is_real)``; see the module docstring."""
        users = self.eval_users(split)
        for lo, hi, real in self.eval_ranges(split, rank, world_size, batch_size):
            yield self.eval_batch(split, users[lo:hi], max_seq_len), real

    def seen_items(self, split: str, users: Users) -> JaggedTensor:
        """The distinct items of each user's whole history before their ``split`` target.

        Args:
            split (str): ``val`` or ``test``.
            users (Users): (B,) user ids, e.g. ``batch.users`` of an eval batch.

        Returns:
            JaggedTensor: B rows of ascending int64 item ids (int32 lengths), not truncated to
            ``max_seq_len``; a repeated target is included (see the module docstring).
        """
        u = np.asarray(users.cpu() if isinstance(users, torch.Tensor) else users, dtype=np.int64).reshape(-1)
        pos = self._targets(split)[u]
        if (pos < 0).any():
            raise DatasetError(f"users {u[pos < 0][:5].tolist()} have no {split} target")
        index, lengths = gather(self.table.offsets, u, np.zeros_like(pos), pos)
        rows = np.repeat(np.arange(len(u)), lengths)
        keys = np.unique(rows * self.num_items + self.table.items[index])
        counts = np.bincount(keys // self.num_items, minlength=len(u)).astype(np.int32)
        return JaggedTensor(values=torch.from_numpy(keys % self.num_items), lengths=torch.from_numpy(counts))
