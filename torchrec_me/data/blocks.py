"""Rows of a prepared dataset as numpy columns, and their ``Batch`` with a KeyedJaggedTensor.

A :class:`Block` holds some rows of a split: labels, dense floats, one id column per
single-valued feature and a jagged (offsets, values) pair per multi-hot feature. The
reader decodes Parquet row groups into blocks, shuffles and slices them with numpy,
and turns each batch-sized block into a ``torchrec.datasets.utils.Batch``.

KJT layout of a batch of B rows and features ``f_1 .. f_F`` (in metadata order)::

    values  = [ids of f_1 for rows 0..B-1] ++ ... ++ [ids of f_F for rows 0..B-1]
    lengths = (F * B,) int32: 1 for a single-valued feature, the bag size otherwise
"""

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_me.data.store import DatasetError

Bag = Tuple[np.ndarray, np.ndarray]  # (n + 1,) int64 offsets, (nnz,) int32 ids


class IdOutOfRangeError(DatasetError):
    """A row holds an id outside its feature's table; it must never reach FBGEMM."""


@dataclass(frozen=True)
class Layout:
    """Which columns a split file has, and where each sparse feature lives in a Block.

    Args:
        features (List[str]): sparse features in KJT key order.
        multi_hot (List[bool]): per feature, a bag (``list<int32>`` column) or one id.
        num_embeddings (List[int]): per feature, its table size (ids in ``[0, N)``).
        dense (List[str]): dense feature columns.
    """

    features: List[str]
    multi_hot: List[bool]
    num_embeddings: List[int]
    dense: List[str]

    @property
    def scalar(self) -> List[str]:
        return [f for f, m in zip(self.features, self.multi_hot) if not m]

    @property
    def bags(self) -> List[str]:
        return [f for f, m in zip(self.features, self.multi_hot) if m]


@dataclass
class Block:
    """Rows of a split, column by column.

    Args:
        labels (np.ndarray): (n,) float32.
        dense (np.ndarray): (n, num_dense) float32.
        ids (np.ndarray): (n, F_scalar) int32 (as stored; int64 only in the batch),
            single-valued features in layout order.
        bags (List[Bag]): per multi-hot feature, (n + 1,) offsets and the ids.
    """

    labels: np.ndarray
    dense: np.ndarray
    ids: np.ndarray
    bags: List[Bag]

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def slice(self, lo: int, hi: int) -> "Block":
        """Rows ``lo..hi-1`` (views where numpy allows)."""
        bags = [(off[lo : hi + 1] - off[lo], val[off[lo] : off[hi]]) for off, val in self.bags]
        return Block(self.labels[lo:hi], self.dense[lo:hi], self.ids[lo:hi], bags)

    def take(self, rows: np.ndarray) -> "Block":
        """Rows ``rows`` in that order (e.g. a permutation)."""
        return Block(self.labels[rows], self.dense[rows], self.ids[rows], [_take_bag(b, rows) for b in self.bags])

    @staticmethod
    def concat(blocks: Sequence["Block"]) -> "Block":
        if len(blocks) == 1:
            return blocks[0]
        bags = []
        for k in range(len(blocks[0].bags)):
            parts = [b.bags[k] for b in blocks]
            shift = np.cumsum([0] + [off[-1] for off, _ in parts[:-1]])
            offsets = np.concatenate([[0]] + [off[1:] + s for (off, _), s in zip(parts, shift)])
            bags.append((offsets.astype(np.int64), np.concatenate([val for _, val in parts])))
        return Block(
            np.concatenate([b.labels for b in blocks]),
            np.concatenate([b.dense for b in blocks]),
            np.concatenate([b.ids for b in blocks]),
            bags,
        )


def _take_bag(bag: Bag, rows: np.ndarray) -> Bag:
    offsets, values = bag
    lengths = np.diff(offsets)[rows]
    new = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new[1:])
    # element j of output row i comes from offsets[rows[i]] + (j - new[i])
    pos = np.repeat(offsets[:-1][rows] - new[:-1], lengths) + np.arange(new[-1], dtype=np.int64)
    return new, values[pos]


def _bag_column(column: pa.ChunkedArray) -> Bag:
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)


def read_row_group(pf: pq.ParquetFile, index: int, layout: Layout, where: str) -> Block:
    """Decode row group ``index`` of ``pf`` and check every id against its table size.

    Raises:
        IdOutOfRangeError: an id is negative or >= its feature's ``num_embeddings``
            (``where`` names the file in the message).
    """
    t = pf.read_row_group(index, columns=["label", *layout.dense, *layout.features])
    n = t.num_rows
    labels = t.column("label").to_numpy().astype(np.float32)
    dense = (
        np.stack([t.column(c).to_numpy() for c in layout.dense], axis=1).astype(np.float32, copy=False)
        if layout.dense
        else np.zeros((n, 0), dtype=np.float32)
    )
    scalar = layout.scalar
    ids = (
        np.stack([t.column(c).to_numpy() for c in scalar], axis=1).astype(np.int32, copy=False)
        if scalar
        else np.zeros((n, 0), dtype=np.int32)
    )
    block = Block(labels, dense, ids, [_bag_column(t.column(c)) for c in layout.bags])
    check_ids(block, layout, f"{where} row group {index}")
    return block


def check_ids(block: Block, layout: Layout, where: str) -> None:
    """Raise :class:`IdOutOfRangeError` naming the feature if any id is outside ``[0, N)``."""
    sizes = dict(zip(layout.features, layout.num_embeddings))
    columns = [(f, block.ids[:, j]) for j, f in enumerate(layout.scalar)]
    columns += [(f, vals) for f, (_, vals) in zip(layout.bags, block.bags)]
    for name, values in columns:
        if values.size and (values.min() < 0 or values.max() >= sizes[name]):
            bad = values[(values < 0) | (values >= sizes[name])][0]
            raise IdOutOfRangeError(
                f"feature {name!r} has id {int(bad)} outside its table [0, {sizes[name]}) in {where}: the data does "
                "not match metadata.json (modified after `torchrec-me prepare`?)"
            )


def check_footer(md: pq.FileMetaData, layout: Layout, where: str) -> None:
    """Check a split file's footer against ``layout``: its columns, and its ids by the row
    groups' min/max statistics, without reading any data (row groups without statistics
    are left to :func:`check_ids` as they are decoded).

    Raises:
        DatasetError: a column is missing.
        IdOutOfRangeError: a row group holds an id outside its feature's table.
    """
    names = set(md.schema.to_arrow_schema().names)
    missing = [c for c in ["label", *layout.dense, *layout.features] if c not in names]
    if missing:
        raise DatasetError(f"{where} lacks the columns {', '.join(missing)} that metadata.json lists")
    sizes = dict(zip(layout.features, layout.num_embeddings))
    columns = [(i, top) for i in range(md.num_columns) if (top := md.schema.column(i).path.split(".")[0]) in sizes]
    for r in range(md.num_row_groups):
        group = md.row_group(r)
        for i, name in columns:
            stats = group.column(i).statistics
            if stats is not None and stats.has_min_max and (stats.min < 0 or stats.max >= sizes[name]):
                raise IdOutOfRangeError(
                    f"feature {name!r} has ids up to {stats.max} (min {stats.min}) in {where} row group {r}, outside "
                    f"its table [0, {sizes[name]}): the data does not match metadata.json (modified after "
                    "`torchrec-me prepare`?)"
                )


def to_batch(block: Block, layout: Layout) -> Batch:
    """The Batch of a block: dense (B, num_dense), the KJT drawn in the module docstring, labels (B,)."""
    b = block.n
    values: List[np.ndarray] = []
    lengths: List[np.ndarray] = []
    scalar_col = {f: j for j, f in enumerate(layout.scalar)}
    bag_col = {f: k for k, f in enumerate(layout.bags)}
    ones = np.ones(b, dtype=np.int32)
    ids_t = np.ascontiguousarray(block.ids.T)  # (F_scalar, B)
    for f in layout.features:
        if f in scalar_col:
            values.append(ids_t[scalar_col[f]])
            lengths.append(ones)
        else:
            offsets, vals = block.bags[bag_col[f]]
            values.append(vals)
            lengths.append(np.diff(offsets).astype(np.int32))
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=layout.features,
        values=torch.from_numpy(np.concatenate(values).astype(np.int64) if values else np.zeros(0, np.int64)),
        lengths=torch.from_numpy(np.concatenate(lengths) if lengths else np.zeros(0, np.int32)),
    )
    return Batch(
        dense_features=torch.from_numpy(np.ascontiguousarray(block.dense)),
        sparse_features=kjt,
        labels=torch.from_numpy(np.ascontiguousarray(block.labels)),
    )
