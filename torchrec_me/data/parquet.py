"""Read a dataset written by ``torchrec-me prepare``: a global stream, exact resume, prefetch.

``data.name=parquet data.path=DIR`` (a local path or any iopath URI) trains on it.
Table sizes, dense features and bags come from ``metadata.json``.

**Training stream.** In epoch ``e`` the train row groups are taken in the order of a
permutation ``perm_e`` seeded by ``(data.seed, e)``, and that sequence of rows is cut
into ``M = min(16, row groups)`` *lanes* (:data:`MAX_LANES`) of equal size: lane ``l``
owns its rows ``[l*R/M, (l+1)*R/M)`` (``R`` train rows, rounded down), so within an
epoch the lanes are disjoint, cover the split, and differ in size by at most one row.
A lane reads its pieces of row groups ``max(1, shuffle_window // M)`` at a time and
shuffles the rows of each such window with a generator seeded by
``(data.seed, e, l, M, window)``; its stream is these shuffled windows, epoch after
epoch, endlessly. None of this depends on the world size.

A training step with per-rank batch ``b`` on ``W`` ranks reads the global batch
``G = b * W``: lane ``l`` contributes the next ``c_l = floor((l+1)G/M) - floor(lG/M)``
rows of its stream, which become rows ``[floor(lG/M), floor((l+1)G/M))`` of the global
batch, and rank ``r`` takes rows ``[r*b, (r+1)*b)`` of it. So step ``s`` of every rank
is a function of ``(seed, G, r*b, b, s)``: ``train_batches(start=s)`` resumes exactly (a
lane skips ``s * c_l`` rows by whole epochs and windows, from the Parquet footers,
without reading them), every rank has a batch for every step, and a restart at another
world size with the same ``G`` continues the same global stream, every row of an epoch
read exactly once across the change. All lanes move through their epochs at the same
pace (exactly when ``M`` divides ``G``), so no row is read twice before every row of the
epoch has been read once (give or take a step at the epoch's end).

Cost: a rank decodes only the lanes its rows come from. When ``W`` divides ``M`` (1, 2,
4, 8 or 16 ranks on a split of >= 16 row groups, which ``prepare`` ensures) each lane
belongs to one rank and only the row group a lane shares with its neighbour is decoded
twice per epoch (``M - 1`` of the split's groups); otherwise a lane shared by two ranks is
decoded by both, and with ``W > M`` each rank decodes a whole lane, ``W/M`` times its
share. Memory: one window per lane read, i.e. about ``max(shuffle_window, M)`` row groups
at ``W = 1`` and ``1/W`` of that per rank.

**Evaluation.** The ``N`` rows of a split are dealt out so that every row is scored
exactly once and every rank runs the same batches (sharded forwards are collective):
rank ``r`` takes the contiguous rows ``[r*q, (r+1)*q)`` with ``q = N // W``, in batches
of ``B`` and a last smaller one of ``q % B`` rows, the same sizes on every rank; then the
``N - W*q < W`` rows left over form one batch of one row on each rank, ranks without
such a row repeating row 0 with ``is_real=False``.

**Prefetch.** Decoding (Parquet, shuffling, building the KJT) runs in a background
thread ``prefetch`` batches ahead of the training loop; pyarrow and numpy release the
GIL for the heavy parts.

**Checks at start-up** (footers and the vocabulary only, no split is read): the
vocabulary matches the metadata's sizes and its ``vocab_fingerprint``
(:func:`~torchrec_me.data.store.vocab_fingerprint`, exposed as :attr:`fingerprint`);
each split file is readable Parquet with the metadata's row count and columns, and is
not empty; its row groups' min/max statistics keep every id inside its table. Any
failure is one :class:`~torchrec_me.data.store.DatasetError` naming the file.

**Ids** are checked again against the metadata's table sizes as each row group is
decoded: an out-of-range id raises :class:`~torchrec_me.data.blocks.IdOutOfRangeError`
naming the feature and row group, before any batch reaches FBGEMM. A row group that
cannot be decoded (a corrupt file) raises a ``DatasetError`` naming the file.
"""

import bisect
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchrec.datasets.utils import Batch

from torchrec_me.config import DataConfig
from torchrec_me.data.blocks import Block, Layout, check_footer, read_row_group, to_batch
from torchrec_me.data.store import (
    FINGERPRINT_KEY, PATH_MANAGER, SPLITS, VOCAB_FILE, DatasetError, deal_rows, join, load_metadata, unreadable,
    vocab_fingerprint,
)  # fmt: skip

T = TypeVar("T")
_END = object()
#: The most lanes the train split is read in. ``prepare`` writes at least 16 train row
#: groups (``MIN_TRAIN_ROW_GROUPS``), so 1, 2, 4, 8 and 16 ranks each read only their
#: own lanes; more lanes would hold more row groups in memory at small world sizes.
MAX_LANES = 16


@dataclass(frozen=True)
class RowGroup:
    """One row group of a split file: where it is, its size and its first row in the split."""

    file: str
    index: int
    rows: int
    start: int


def _chunks(blocks: Iterator[Block], size: int) -> Iterator[Block]:
    """Consecutive blocks of exactly ``size`` rows out of ``blocks``, endlessly (``blocks`` is endless)."""
    pending: List[Block] = []
    have = 0
    for block in blocks:
        k = 0
        while have + block.n - k >= size:
            pending.append(block.slice(k, k + size - have))
            k += size - have
            yield Block.concat(pending)
            pending, have = [], 0
        if k < block.n:
            pending.append(block.slice(k, block.n))
            have += block.n - k
    raise DatasetError("the training stream ended")  # unreachable: lanes are endless


def prefetch(make: Callable[[], Iterator[T]], depth: int) -> Iterator[T]:
    """Iterate ``make()`` in a background thread, ``depth`` items ahead.

    An exception in the thread is re-raised here; closing this generator stops the thread.
    """
    items: "queue.Queue[Tuple[Any, Optional[BaseException]]]" = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any, error: Optional[BaseException] = None) -> bool:
        while not stop.is_set():
            try:
                items.put((item, error), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in make():
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer
            put(_END, e)

    thread = threading.Thread(target=work, name="torchrec-me-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


class ParquetDataset:
    """Batches of a prepared Parquet dataset; see the module docstring for the order.

    Args:
        cfg (DataConfig): ``path`` (directory or URI) and ``seed`` (of the shuffle).
        shuffle_window (int): row groups decoded at once over all lanes; each lane
            shuffles ``max(1, shuffle_window // M)`` row groups together (memory: about
            ``max(shuffle_window, M)`` row groups of decoded ids in one process).
        prefetch (int): batches decoded ahead by the background thread.

    Raises:
        DatasetError: on construction, when a check at start-up fails (see the module
            docstring); later, when a row group cannot be decoded or holds a bad id.

    Example::

        ds = ParquetDataset(DataConfig(name="parquet", path="criteo-prepared"))
        for batch in ds.train_batches(rank=0, world_size=1, batch_size=1024, start=0, stop=10):
            batch.sparse_features  # KJT with keys ds.feature_names
    """

    has_teacher: bool = False

    def __init__(self, cfg: DataConfig, shuffle_window: int = 8, prefetch: int = 8) -> None:
        if cfg.path is None:
            raise DatasetError("the parquet dataset needs data.path, a directory written by `torchrec-me prepare`")
        if shuffle_window < 1 or prefetch < 1:
            raise ValueError("shuffle_window and prefetch must be >= 1")
        self.path: str = cfg.path
        self.seed = cfg.seed
        self.shuffle_window = shuffle_window
        self.prefetch = prefetch
        self.meta = load_metadata(self.path)
        sparse = self.meta["sparse_features"]
        self.feature_names: List[str] = [f["name"] for f in sparse]
        self.num_embeddings: List[int] = [int(f["vocab_size"]) for f in sparse]
        self.num_dense: int = len(self.meta["dense_features"])
        self.layout = Layout(
            self.feature_names, [bool(f.get("multi_hot")) for f in sparse], self.num_embeddings,
            list(self.meta["dense_features"]),
        )  # fmt: skip
        self._groups: Dict[str, List[RowGroup]] = {}
        self.fingerprint: str = self._check_vocabularies()
        for split in SPLITS:
            if not sum(g.rows for g in self.row_groups(split)):
                raise DatasetError(
                    f"the {split} split of {self.path} is empty; training needs train, val and test rows: prepare "
                    "it again from more data"
                )

    def _check_vocabularies(self) -> str:
        """The vocabulary fingerprint, recomputed and checked against the one ``prepare`` stored."""
        name = self.meta.get("vocab_file", VOCAB_FILE)
        fingerprint = vocab_fingerprint(PATH_MANAGER.get_local_path(join(self.path, name)), self.meta["sparse_features"])
        stored = self.meta.get(FINGERPRINT_KEY)  # absent in datasets prepared before it existed
        if stored is not None and stored != fingerprint:
            raise DatasetError(
                f"{name} of {self.path} does not match the {FINGERPRINT_KEY} of its metadata.json: the vocabulary "
                "was replaced after `torchrec-me prepare`"
            )
        return fingerprint

    # ------------------------------------------------------------------ row groups

    def row_groups(self, split: str) -> List[RowGroup]:
        """The row groups of ``split``, from its Parquet footer (checked against the metadata)."""
        if split not in self._groups:
            info = self.meta["splits"].get(split)
            if info is None:
                raise DatasetError(f"{self.path} has no split {split!r}; it has {', '.join(self.meta['splits'])}")
            local = PATH_MANAGER.get_local_path(join(self.path, info["file"]))
            try:
                md = pq.ParquetFile(local).metadata
            except (pa.ArrowException, OSError) as e:
                raise unreadable(local, e) from None
            check_footer(md, self.layout, local)
            groups, start = [], 0
            for i in range(md.num_row_groups):
                rows = md.row_group(i).num_rows
                groups.append(RowGroup(local, i, rows, start))
                start += rows
            if start != info["rows"]:
                raise DatasetError(f"{info['file']} of {self.path} has {start} rows, metadata.json says {info['rows']}")
            self._groups[split] = groups
        return self._groups[split]

    def _reader(self) -> Callable[[RowGroup], Block]:
        files: Dict[str, pq.ParquetFile] = {}

        def read(g: RowGroup) -> Block:
            try:
                if g.file not in files:
                    files[g.file] = pq.ParquetFile(g.file, memory_map=True)
                return read_row_group(files[g.file], g.index, self.layout, g.file)
            except (pa.ArrowException, OSError) as e:
                raise unreadable(f"row group {g.index} of {g.file}", e) from None

        return read

    # ------------------------------------------------------------------ training

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, *key]))

    def lanes(self) -> int:
        """``M``, the number of lanes the train split is read in (see the module docstring)."""
        return min(MAX_LANES, len(self.row_groups("train")))

    def lane_pieces(self, lane: int, epoch: int) -> List[Tuple[RowGroup, int, int]]:
        """``(row group, first row, end row)`` of each piece of lane ``lane``'s rows in
        ``epoch``, in reading order (rows counted within the group)."""
        groups, m = self.row_groups("train"), self.lanes()
        total = sum(g.rows for g in groups)
        lo, hi = lane * total // m, (lane + 1) * total // m
        pieces, offset = [], 0
        for i in self._rng(0x7EA1, epoch).permutation(len(groups)):
            g = groups[i]
            a, z = max(lo, offset), min(hi, offset + g.rows)
            if a < z:
                pieces.append((g, a - offset, z - offset))
            offset += g.rows
        return pieces

    def lane_rows(self, lane: int) -> int:
        """Rows of lane ``lane`` in every epoch."""
        total, m = sum(g.rows for g in self.row_groups("train")), self.lanes()
        return (lane + 1) * total // m - lane * total // m

    def lane_bounds(self, global_batch: int) -> List[int]:
        """``M + 1`` offsets: lane ``l`` fills rows ``[bounds[l], bounds[l+1])`` of every global batch."""
        m = self.lanes()
        return [lane * global_batch // m for lane in range(m + 1)]

    def _lane_windows(self, lane: int, skip: int, read: Callable[[RowGroup], Block]) -> Iterator[Block]:
        """Lane ``lane``'s stream of shuffled windows, from its row ``skip`` on, endlessly."""
        m = self.lanes()
        per_window = max(1, self.shuffle_window // m)
        epoch, skip = divmod(skip, self.lane_rows(lane))
        while True:
            pieces = self.lane_pieces(lane, epoch)
            for w in range(0, len(pieces), per_window):
                window = pieces[w : w + per_window]
                rows = sum(z - a for _, a, z in window)
                if skip >= rows:
                    skip -= rows
                    continue
                block = Block.concat([read(g).slice(a, z) for g, a, z in window])
                block = block.take(self._rng(0x5BFF, epoch, lane, m, w).permutation(rows))
                yield block.slice(skip, rows)
                skip = 0
            epoch += 1

    def _train_stream(self, rank: int, world_size: int, batch_size: int, start: int, stop: Optional[int]) -> Iterator[Batch]:
        read = self._reader()
        bounds = self.lane_bounds(batch_size * world_size)
        lo, hi = rank * batch_size, (rank + 1) * batch_size
        parts = []  # (rows of each of this rank's lanes' chunks to keep, the lane's chunks)
        for lane in range(len(bounds) - 1):
            a, z = bounds[lane], bounds[lane + 1]
            if z > a and a < hi and z > lo:
                chunks = _chunks(self._lane_windows(lane, start * (z - a), read), z - a)
                parts.append((max(a, lo) - a, min(z, hi) - a, chunks))
        step = start
        while stop is None or step < stop:
            yield to_batch(Block.concat([next(chunks).slice(x, y) for x, y, chunks in parts]), self.layout)
            step += 1

    def train_batches(
        self, rank: int, world_size: int, batch_size: int, start: int = 0, stop: Optional[int] = None
    ) -> Iterator[Batch]:
        """This rank's training batches for steps ``start..stop-1`` (endless if stop is None):
        rows ``[rank*b, (rank+1)*b)`` of each global batch of ``b * world_size`` rows."""
        if not 0 <= rank < world_size or batch_size < 1 or start < 0:
            raise ValueError(f"bad rank {rank} of {world_size}, batch size {batch_size} or start {start}")
        self.row_groups("train")  # fail here, not in the reader thread
        if stop is not None and stop <= start:
            return iter(())
        return prefetch(lambda: self._train_stream(rank, world_size, batch_size, start, stop), self.prefetch)

    # ------------------------------------------------------------------ evaluation

    def eval_ranges(self, split: str, rank: int, world_size: int, batch_size: int) -> List[Tuple[int, int, bool]]:
        """``(first row, end row, is_real)`` of each of this rank's eval batches of ``split``."""
        n = sum(g.rows for g in self.row_groups(split))
        if n == 0:
            raise DatasetError(f"the {split} split of {self.path} has no rows")
        return deal_rows(n, rank, world_size, batch_size)

    def _eval_stream(self, split: str, ranges: List[Tuple[int, int, bool]]) -> Iterator[Tuple[Batch, None, bool]]:
        groups = self.row_groups(split)
        starts = [g.start for g in groups]
        read = self._reader()
        cached: Dict[int, Block] = {}
        for lo, hi, real in ranges:
            parts = []
            for gi in range(bisect.bisect_right(starts, lo) - 1, len(groups)):
                g = groups[gi]
                if g.start >= hi:
                    break
                if gi not in cached:
                    cached.clear()  # ranges only move forward: keep the last group
                    cached[gi] = read(g)
                parts.append(cached[gi].slice(max(lo, g.start) - g.start, min(hi, g.start + g.rows) - g.start))
            yield to_batch(Block.concat(parts), self.layout), None, real

    def eval_batches(
        self, split: str, rank: int, world_size: int, batch_size: int
    ) -> Iterator[Tuple[Batch, Optional[torch.Tensor], bool]]:
        """This rank's share of ``split``: ``(batch, None, is_real)``; see the module docstring."""
        ranges = self.eval_ranges(split, rank, world_size, batch_size)
        return prefetch(lambda: self._eval_stream(split, ranges), self.prefetch)
