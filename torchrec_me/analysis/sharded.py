"""Embedding-collapse statistics of (possibly sharded) embedding tables, never gathered.

Why: the paper's collapse diagnostics (singular spectra, information abundance) need
only the D x D Gram matrix ``G = E^T E`` of each table E (N x D), and ``G`` is a sum over
rows. Under ``DistributedModelParallel`` a table is split into shards (a grid of row
and column ranges, each on one rank), so ``G`` is assembled block by block:

* ``G[C_a, C_b]`` for two shards ``a``, ``b`` with column ranges ``C_a``, ``C_b`` is the sum
  over their common rows of ``E[r, C_a]^T E[r, C_b]``. Table-wise shards hold whole
  tables, so only the local diagonal block exists; column-wise and
  table-column-wise shards need cross blocks between ranks.
* A cross block is computed by the owner of ``b``: the owner of ``a`` broadcasts its rows
  in chunks of at most ``chunk_rows`` rows and the receiver multiplies each chunk with
  its own rows of ``b``. Memory per step is ``O(chunk_rows * shard_cols)``, independent
  of N; no rank ever holds another rank's full shard.
* Every block is computed on exactly one rank, so one all-reduce (sum) of all Grams
  gives every rank the same result.

The same machinery gives Grams of several tables concatenated along D (a field's K
set tables, ``[E_0 | E_1 | ... ]``): their cross blocks ``E_i^T E_j`` are just more
shard pairs. Row weights turn ``E^T E`` into ``E^T diag(w) E``: a 0/1 mask of the rows
training touched, or their frequencies (:class:`IdFrequencyTracker`).

Plain (unsharded) tables are treated as held by every rank, so a plain module needs no
process group at all; with sharded tables every rank must call collectively, in the
same order.
"""

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from torchrec_me.modules.naming import is_packed_table, parse_table_name

__all__ = ["EmbeddingTable", "find_embedding_tables", "gram_matrices"]

# ``...embedding_bags.{table}.weight`` in the state dict of an (un)sharded EBC, and
# ``...embeddings.{table}.weight`` of an EmbeddingCollection (the sequential item tables).
_TABLE_KEY = re.compile(r"(?:^|\.)(?:embedding_bags|embeddings)\.([^.]+)\.weight$")

VARIANTS: Dict[str, str] = {
    "all_rows": "every row of the table: singular values of E (N x D), from E^T E",
    "trained_rows": (
        "only rows whose id occurred at least once in the tracked training batches "
        "(frequency > 0): untouched rows keep their random init and would hide collapse"
    ),
    "freq_weighted": (
        "E^T diag(f) E with f the id's occurrence count: each row weighted by how often "
        "training read it, i.e. the spectrum the model sees on average"
    ),
    "concat": (
        "a field's K set tables concatenated along the embedding dim, [E_0 | ... | E_{K-1}] "
        "(N x sum_k D_k): whether the sets span different directions"
    ),
}

TableWeight = Union[Tensor, ShardedTensor]


@dataclass(frozen=True)
class EmbeddingTable:
    """One embedding table found in a model's state dict.

    Attributes:
        name (str): table name, e.g. ``set1__C3``.
        key (str): its state-dict key.
        set_index (int): k of ``set{k}__...``.
        feature (str): the feature it embeds.
        num_rows (int): N, rows of the full table.
        dim (int): D, its embedding dim.
        weight (Tensor | ShardedTensor): the (N, D) plain tensor or the sharded one
            whose local shards this rank holds.
    """

    name: str
    key: str
    set_index: int
    feature: str
    num_rows: int
    dim: int
    weight: TableWeight


def find_embedding_tables(model: Union[nn.Module, Mapping[str, Any]]) -> Dict[str, EmbeddingTable]:
    """Every ``embedding_bags.{table}.weight`` of a module, DMP model or state dict, by name.

    Why the state dict: it names tables identically for a plain module and for DMP
    (where they are ``ShardedTensor``s), and a saved checkpoint can be passed as-is.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tables: Dict[str, EmbeddingTable] = {}
    for key, value in state.items():
        m = _TABLE_KEY.search(key)
        if m is None:
            continue
        if not isinstance(value, (Tensor, ShardedTensor)):
            raise TypeError(f"{key}: unsupported table type {type(value).__name__}")
        name = m.group(1)
        if is_packed_table(name):
            raise ValueError(
                f"table {name!r} packs the K sets column-wise (model.layout=packed); the collapse "
                "analysis needs per-set tables: train with model.layout=separate or grouped"
            )
        if name in tables:
            raise ValueError(f"table name {name!r} appears twice ({tables[name].key}, {key})")
        rows, dim = (int(s) for s in value.size())
        set_index, feature = parse_table_name(name)
        tables[name] = EmbeddingTable(name, key, set_index, feature, rows, dim, value)
    return tables


# --------------------------------------------------------------------------------------
# Gram matrices


@dataclass
class _Piece:
    """A rectangle of a (concatenated) table: rows [row0, row0+rows), cols [col0, col0+cols).

    ``owner`` is the rank holding it, None for a plain tensor every rank holds;
    ``local`` is its (rows, cols) data when this rank holds it.
    """

    row0: int
    rows: int
    col0: int
    cols: int
    owner: Optional[int]
    dtype: torch.dtype
    local: Optional[Tensor]

    def overlaps(self, other: "_Piece") -> bool:
        """Whether the two pieces share rows, i.e. contribute a block ``E[r, C_a]^T E[r, C_b]``."""
        return max(self.row0, other.row0) < min(self.row0 + self.rows, other.row0 + other.rows)


def _pieces(weight: TableWeight, col_shift: int) -> List[_Piece]:
    """The shards of one table as pieces, columns shifted by ``col_shift``, global order."""
    if isinstance(weight, ShardedTensor):
        local = {
            tuple(int(o) for o in s.metadata.shard_offsets): s.tensor.detach() for s in weight.local_shards()
        }
        out = []
        for sm in weight.metadata().shards_metadata:
            (r0, c0), (nr, nc) = sm.shard_offsets, sm.shard_sizes
            if nr == 0 or nc == 0:
                continue
            rank = sm.placement.rank() if sm.placement is not None else None
            if rank is None:
                raise ValueError("a ShardedTensor shard has no placement rank")
            out.append(_Piece(r0, nr, c0 + col_shift, nc, rank, weight.dtype, local.get((r0, c0))))
        return out
    w = weight.detach()
    return [_Piece(0, w.shape[0], col_shift, w.shape[1], None, w.dtype, w)]


def _compute_rank(a: _Piece, b: _Piece) -> int:
    """The one rank that computes block (a, b): it holds b (and a, or receives it)."""
    if b.owner is not None:
        return b.owner
    if a.owner is not None:
        return a.owner
    return 0


def _rows(t: Tensor, row0: int, r0: int, r1: int, idx: Optional[Tensor]) -> Tensor:
    """Rows [r0, r1) (global ids; or the global ids ``idx``) of a piece starting at row0."""
    if idx is None:
        return t[r0 - row0 : r1 - row0]
    return t.index_select(0, idx - row0)


def _needed_rows(weights: Sequence[Optional[Tensor]], r0: int, r1: int) -> Optional[Tensor]:
    """Global ids of rows in [r0, r1) with a non-zero weight in some variant; None = all."""
    if any(w is None for w in weights):
        return None
    nz = torch.zeros(r1 - r0, dtype=torch.bool, device=weights[0].device)  # type: ignore[union-attr]
    for w in weights:
        nz |= w[r0:r1] != 0  # type: ignore[index]
    idx = nz.nonzero().squeeze(1)
    if idx.numel() == r1 - r0:
        return None
    return idx + r0


def _chunk_of(
    a: _Piece, r0: int, r1: int, idx: Optional[Tensor], me: int, needs_comm: bool, device: torch.device
) -> Tensor:
    """Rows [r0, r1) (or the global ids ``idx``) of piece ``a`` on this rank.

    With ``needs_comm`` the owner broadcasts them and every rank takes part, including
    those that then compute nothing with them.
    """
    if needs_comm and me != a.owner:
        n = r1 - r0 if idx is None else idx.numel()
        buf = torch.empty(n, a.cols, dtype=a.dtype, device=device)
    elif a.local is None:
        if needs_comm:
            raise RuntimeError(f"rank {me} owns a shard it does not hold locally")
        raise RuntimeError(f"rank {me} must compute a block of a shard it does not hold")
    else:
        buf = _rows(a.local, a.row0, r0, r1, idx)
    if needs_comm:
        buf = buf.contiguous()
        dist.broadcast(buf, src=a.owner)
    return buf


def _overlap(
    rows_a: Tensor, a: _Piece, b: _Piece, r0: int, r1: int, idx: Optional[Tensor]
) -> Optional[Tuple[Tensor, Tensor, Union[slice, Tensor]]]:
    """(rows of a, rows of b, their global row ids) that the chunk of ``a`` shares with ``b``.

    ``rows_a`` holds the chunk's rows [r0, r1) (or the global ids ``idx``); None when
    ``b`` holds none of them.
    """
    assert b.local is not None, "the caller checks that this rank holds b"
    b0, b1 = b.row0, b.row0 + b.rows
    if idx is None:
        s0, s1 = max(r0, b0), min(r1, b1)
        if s0 >= s1:
            return None
        sub_a = rows_a[s0 - r0 : s1 - r0]
        return sub_a, (b.local[s0 - b0 : s1 - b0] if b is not a else sub_a), slice(s0, s1)
    pos = ((idx >= b0) & (idx < b1)).nonzero().squeeze(1)
    if pos.numel() == 0:
        return None
    rows_w = idx[pos]
    sub_a = rows_a.index_select(0, pos)
    return sub_a, (b.local.index_select(0, rows_w - b0) if b is not a else sub_a), rows_w


def _accumulate(
    grams: List[Tensor],
    weights: Sequence[Optional[Tensor]],
    a: _Piece,
    b: _Piece,
    overlap: Tuple[Tensor, Tensor, Union[slice, Tensor]],
) -> None:
    """Add block ``E[r, C_a]^T diag(w) E[r, C_b]`` (and its transpose) to every variant's Gram."""
    sub_a, sub_b, rows_w = overlap
    sub_b = sub_b.to(device=sub_a.device, dtype=torch.float64)
    ca = slice(a.col0, a.col0 + a.cols)
    cb = slice(b.col0, b.col0 + b.cols)
    for g, w in zip(grams, weights):
        left = sub_a if w is None else sub_a * w[rows_w].unsqueeze(1)
        block = left.T @ sub_b
        g[ca, cb] += block
        if b is not a:
            g[cb, ca] += block.T


def _group_grams(
    pieces: List[_Piece],
    dim: int,
    weights: Sequence[Optional[Tensor]],
    chunk_rows: int,
    me: int,
    collective: bool,
    device: torch.device,
) -> List[Tensor]:
    """(dim, dim) float64 Grams ``E^T diag(w) E``, one per weight, of this rank's blocks.

    Every rank walks the same pieces and chunks in the same order, so the broadcasts
    match; a block is accumulated only on ``_compute_rank``. Summing the result over
    ranks gives the full Grams.
    """
    grams = [torch.zeros(dim, dim, dtype=torch.float64, device=device) for _ in weights]
    for ia, a in enumerate(pieces):
        partners = [b for b in pieces[ia:] if a.overlaps(b)]
        mine = [b for b in partners if (_compute_rank(a, b) if collective else me) == me]
        needs_comm = collective and a.owner is not None and any(
            b.owner is not None and b.owner != a.owner for b in partners
        )
        if not needs_comm and not mine:
            continue
        for r0 in range(a.row0, a.row0 + a.rows, chunk_rows):
            r1 = min(r0 + chunk_rows, a.row0 + a.rows)
            idx = _needed_rows(weights, r0, r1)
            if idx is not None and idx.numel() == 0:
                continue
            buf = _chunk_of(a, r0, r1, idx, me, needs_comm, device)
            if not mine:
                continue
            rows_a = buf.to(device=device, dtype=torch.float64)
            for b in mine:
                if b.local is None:
                    raise RuntimeError(f"rank {me} must compute a block of a shard it does not hold")
                overlap = _overlap(rows_a, a, b, r0, r1, idx)
                if overlap is not None:
                    _accumulate(grams, weights, a, b, overlap)
    return grams


def _is_collective(tables: Sequence[EmbeddingTable]) -> bool:
    """Whether the computation needs the process group: some table is sharded over >1 rank."""
    return (
        dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size() > 1
        and any(isinstance(t.weight, ShardedTensor) for t in tables)
    )


def _work_device(tables: Sequence[EmbeddingTable], collective: bool) -> torch.device:
    """Where chunks and Grams live: the collective backend's device, else the tables'."""
    if collective and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    for t in tables:
        if isinstance(t.weight, ShardedTensor):
            shards = t.weight.local_shards()
            if shards:
                return shards[0].tensor.device
        else:
            return t.weight.device
    return torch.device("cpu")


def _check_same_weights(flat_weights: List[Tensor], device: torch.device) -> None:
    """Fail on every rank (rather than hang) if the row weights differ between ranks.

    Chunk sizes follow the weights' non-zero pattern, so different weights would make
    the ranks' broadcasts mismatch.
    """
    if not flat_weights:
        return
    prints = []
    for w in flat_weights:
        pos = torch.arange(1, w.numel() + 1, dtype=torch.float64, device=w.device)
        prints.append(torch.stack([w.sum(), (w * (pos % 9973.0 + 1.0)).sum(), (w != 0).sum().double()]))
    fp = torch.stack(prints).to(device)
    both = torch.cat([fp, -fp])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    high, low = both[: len(fp)], -both[len(fp) :]
    if not torch.allclose(high, low, rtol=1e-12, atol=0.0):
        raise ValueError("row weights differ between ranks; pass the same (e.g. synced) weights on every rank")


def _group_weights(
    gname: str, num_rows: int, row_weights: Sequence[Optional[Mapping[str, Tensor]]], device: torch.device
) -> List[Optional[Tensor]]:
    """Group ``gname``'s (N,) float64 row weight per variant (None = every row), checked."""
    weights: List[Optional[Tensor]] = []
    for variant in row_weights:
        if variant is None:
            weights.append(None)
            continue
        w = variant[gname]
        if w.dim() != 1 or w.numel() != num_rows:
            raise ValueError(f"group {gname!r}: row weights of shape {tuple(w.shape)}, need ({num_rows},)")
        weights.append(w.detach().to(device=device, dtype=torch.float64))
    return weights


def _plan_group(
    gname: str,
    members: Sequence[EmbeddingTable],
    row_weights: Sequence[Optional[Mapping[str, Tensor]]],
    device: torch.device,
) -> Tuple[List[_Piece], int, List[Optional[Tensor]]]:
    """(pieces of the concatenated tables, their total dim, row weights) of one group."""
    if not members:
        raise ValueError(f"group {gname!r} has no tables")
    rows = {t.num_rows for t in members}
    if len(rows) != 1:
        raise ValueError(f"group {gname!r}: tables have different row counts {sorted(rows)}")
    pieces: List[_Piece] = []
    shift = 0
    for t in members:
        pieces.extend(_pieces(t.weight, shift))
        shift += t.dim
    return pieces, shift, _group_weights(gname, rows.pop(), row_weights, device)


def _sum_over_ranks(grams: Dict[str, List[Tensor]]) -> None:
    """Replace every Gram by its sum over ranks, in one all-reduce."""
    if not grams:
        return
    flat = torch.cat([g.flatten() for gs in grams.values() for g in gs])
    dist.all_reduce(flat)
    offset = 0
    for gs in grams.values():
        for i, g in enumerate(gs):
            gs[i] = flat[offset : offset + g.numel()].view_as(g)
            offset += g.numel()


def _gram_matrices(
    tables: Mapping[str, EmbeddingTable],
    groups: Mapping[str, Sequence[str]],
    row_weights: Sequence[Optional[Mapping[str, Tensor]]],
    chunk_rows: int,
) -> Dict[str, List[Tensor]]:
    """:func:`gram_matrices` of tables already found (see there for the arguments)."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    if not row_weights:
        raise ValueError("row_weights needs at least one variant (None = all rows)")
    used = [tables[n] for names in groups.values() for n in names]
    collective = _is_collective(used)
    me = dist.get_rank() if collective else 0
    device = _work_device(used, collective)
    plan = {
        gname: _plan_group(gname, [tables[n] for n in names], row_weights, device) for gname, names in groups.items()
    }
    if collective:
        _check_same_weights([w for _, _, ws in plan.values() for w in ws if w is not None], device)
    out = {
        gname: _group_grams(pieces, dim, weights, chunk_rows, me, collective, device)
        for gname, (pieces, dim, weights) in plan.items()
    }
    if collective:
        _sum_over_ranks(out)
    return {k: [g.cpu() for g in gs] for k, gs in out.items()}


def gram_matrices(
    model: Union[nn.Module, Mapping[str, Any]],
    groups: Optional[Mapping[str, Sequence[str]]] = None,
    row_weights: Sequence[Optional[Mapping[str, Tensor]]] = (None,),
    chunk_rows: int = 65536,
) -> Dict[str, List[Tensor]]:
    """Float64 Gram matrices ``E^T diag(w) E`` of (groups of) tables, computed in place.

    Collective when any table is sharded over more than one rank: then every rank must
    call it with the same arguments, and every rank gets the same result. A plain module
    needs no process group.

    Args:
        model: a module, a DMP model or a state dict holding ``embedding_bags`` tables.
        groups: group name -> table names concatenated along D in that order (all with
            the same number of rows N); the group's Gram is (sum D, sum D) and its
            diagonal blocks are the tables' own Grams. Default: each table alone,
            under its own name.
        row_weights: one entry per variant: None (every row weight 1) or a mapping from
            group name to an (N,) weight tensor (bool mask or float frequencies), which
            must be identical on every rank. Rows whose weight is 0 in every variant are
            neither sent nor multiplied.
        chunk_rows: at most this many rows are sent or multiplied per step, bounding the
            extra memory to ``O(chunk_rows * shard_cols)``.

    Returns:
        Dict[str, List[Tensor]]: per group, one (sum D, sum D) float64 CPU tensor per
        variant of ``row_weights``.
    """
    tables = find_embedding_tables(model)
    if groups is None:
        groups = {name: [name] for name in sorted(tables)}
    missing = sorted({n for names in groups.values() for n in names} - set(tables))
    if missing:
        raise KeyError(f"no embedding tables named {missing}")
    return _gram_matrices(tables, groups, row_weights, chunk_rows)
