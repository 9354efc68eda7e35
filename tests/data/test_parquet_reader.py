"""The Parquet reader: one global stream for every world size, exact resume, eval coverage, id checks, URIs."""

import json
import shutil
from pathlib import Path
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchrec.datasets.utils import Batch

from torchrec_me.analysis.frequency import IdFrequencyTracker
from torchrec_me.config import DataConfig
from torchrec_me.data.blocks import IdOutOfRangeError
from torchrec_me.data.parquet import ParquetDataset
from torchrec_me.data.prepare.common import FeatureSpec, split_sizes
from torchrec_me.data.prepare.output import write_tables
from torchrec_me.data.prepare.vocab import Vocab
from torchrec_me.data.store import DatasetError
from torchrec_me.job import dataset_config, load_job_config

N = 1000  # rows; feature "row" holds each row's own index
FEATURES = [
    FeatureSpec("row"), FeatureSpec("tags", "bag"), FeatureSpec("cat"), FeatureSpec("x", "dense"),
]  # fmt: skip


def _tags(i: int) -> List[int]:
    return [(i * 7 + k) % 5 for k in range(i % 4)]  # 0 to 3 ids


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vocabs = {f.name: Vocab(f.name) for f in FEATURES if f.kind != "dense"}
    vocabs["row"].add_tokens([str(i) for i in range(N)])
    vocabs["tags"].add_tokens([str(t) for t in range(5)])
    vocabs["cat"].add_tokens([str(t) for t in range(3)])
    for v in vocabs.values():
        v.finalize(1)  # ties keep first-seen order: token str(i) has id i
    rows = np.arange(N)
    sizes = np.cumsum(split_sizes(N))
    splits = {}
    for name, lo, hi in (("train", 0, sizes[0]), ("val", sizes[0], sizes[1]), ("test", sizes[1], N)):
        r = rows[lo:hi]
        splits[name] = pa.table({
            "label": pa.array((r % 3 == 0).astype(np.int8)), "x": pa.array(r.astype(np.float32) / N),
            "row": pa.array(r.astype(np.int32)), "cat": pa.array((r % 3).astype(np.int32)),
            "tags": pa.array([_tags(int(i)) for i in r], pa.list_(pa.int32())),
        })  # fmt: skip
    path, _ = write_tables(str(tmp_path_factory.mktemp("pq") / "ds"), "test", FEATURES, vocabs, splits, {}, row_group_size=37)
    return path


def _rows(batch: Batch) -> List[int]:
    return batch.sparse_features["row"].values().tolist()


def _same(a: Batch, b: Batch) -> bool:
    ka, kb = a.sparse_features, b.sparse_features
    return (
        torch.equal(ka.values(), kb.values()) and torch.equal(ka.lengths(), kb.lengths())
        and torch.equal(a.labels, b.labels) and torch.equal(a.dense_features, b.dense_features)
    )  # fmt: skip


def test_batch_layout(dataset_dir: Path) -> None:
    ds = ParquetDataset(DataConfig(name="parquet", path=str(dataset_dir)))
    assert ds.feature_names == ["row", "tags", "cat"] and ds.num_embeddings == [N + 1, 6, 4] and ds.num_dense == 1
    assert not ds.has_teacher and [g.rows for g in ds.row_groups("train")] == [37] * 21 + [23]
    batch = next(iter(ds.train_batches(0, 1, 16, 0, 1)))
    rows = np.array(_rows(batch))
    kjt = batch.sparse_features.to_dict()
    assert kjt["tags"].lengths().tolist() == [len(_tags(i)) for i in rows]
    assert kjt["tags"].values().tolist() == [t for i in rows for t in _tags(i)]
    assert kjt["cat"].values().tolist() == (rows % 3).tolist()
    torch.testing.assert_close(batch.dense_features, torch.tensor(rows / N, dtype=torch.float32)[:, None])
    assert batch.labels.tolist() == (rows % 3 == 0).astype(float).tolist() and len(set(rows)) == 16


def _stream(ds: ParquetDataset, world_size: int, batch_size: int, start: int, stop: int) -> List[List[int]]:
    """The global batches of steps ``start..stop-1``: the ranks' rows in rank order."""
    per_rank = [[_rows(b) for b in ds.train_batches(r, world_size, batch_size, start, stop)] for r in range(world_size)]
    return [[row for rank in per_rank for row in rank[s]] for s in range(stop - start)]


def test_lanes_are_disjoint_and_cover_each_epoch(dataset_dir: Path) -> None:
    ds = ParquetDataset(DataConfig(name="parquet", path=str(dataset_dir), seed=3))
    train = split_sizes(N)[0]
    assert ds.lanes() == 16 and [ds.lane_rows(lane) for lane in range(16)] == [train // 16] * 16
    for epoch in (0, 1):
        lanes = [[g.start + r for g, a, z in ds.lane_pieces(lane, epoch) for r in range(a, z)] for lane in range(16)]
        rows = [r for lane in lanes for r in lane]
        assert sorted(rows) == list(range(train))  # disjoint, and together the whole split
    # With G = the split's size, every lane gives its whole epoch to each step: step e is epoch e.
    for batch in _stream(ds, 1, train, 0, 2):
        assert sorted(batch) == list(range(train)) and batch != sorted(batch)  # each row once, shuffled


@pytest.mark.parametrize("world_size,batch_size", [(2, 16), (4, 8), (3, 10), (40, 1)])
def test_rank_batches_are_slices_of_the_global_batch(dataset_dir: Path, world_size: int, batch_size: int) -> None:
    # Rank r reads rows [r*b, (r+1)*b) of the global batch of G = W*b rows, whatever W is:
    # the W-rank steps equal the one-process steps of batch G. (Until 2026-11-30 rank r of
    # W read the row groups perm[r::W]: a stream of (W, r), so a restart at another world
    # size read some rows twice and others never.) 40 ranks exceed the 16 lanes: each
    # decodes a lane it shares with others, and the stream is still the same.
    ds = ParquetDataset(DataConfig(name="parquet", path=str(dataset_dir), seed=3))
    G = world_size * batch_size
    assert _stream(ds, world_size, batch_size, 0, 30) == _stream(ds, 1, G, 0, 30)


@pytest.mark.parametrize("k", [5, 24, 26])
def test_restart_at_another_world_size_reads_every_row_once(dataset_dir: Path, k: int) -> None:
    # 2 ranks of batch 16 for steps [0, k), then 1 rank of batch 32 (the same global batch)
    # for [k, 25): 25 steps of 32 rows are one epoch of the 800 train rows, k = 26 crosses it.
    ds = ParquetDataset(DataConfig(name="parquet", path=str(dataset_dir), seed=3))
    before, after = _stream(ds, 2, 16, 0, k), _stream(ds, 1, 32, k, max(k, 25))
    read = [r for b in before + after for r in b]
    uninterrupted = [r for b in _stream(ds, 1, 32, 0, max(k, 25)) for r in b]
    assert read == uninterrupted
    first_epoch = read[: split_sizes(N)[0]]
    assert sorted(first_epoch) == list(range(split_sizes(N)[0]))  # every row once, none twice


def test_resume_from_any_step_is_exact(dataset_dir: Path) -> None:
    ds = ParquetDataset(DataConfig(name="parquet", path=str(dataset_dir)))
    full = list(ds.train_batches(1, 2, 24, 0, 40))  # ~17 steps per epoch: crosses two epoch ends
    assert len(full) == 40
    segments = [b for lo, hi in ((0, 7), (7, 8), (8, 33), (33, 40)) for b in ds.train_batches(1, 2, 24, lo, hi)]
    assert len(segments) == 40 and all(_same(a, b) for a, b in zip(full, segments))
    endless = ds.train_batches(1, 2, 24, 30)
    assert all(_same(next(endless), full[s]) for s in range(30, 40))
    other_seed = ParquetDataset(DataConfig(name="parquet", path=str(dataset_dir), seed=1))
    assert not _same(next(iter(other_seed.train_batches(1, 2, 24, 0, 1))), full[0])
    big = list(ds.train_batches(0, 2, 500, 0, 5))  # a lane's 62-63 rows a step: more than its epoch (50 rows)
    assert all(_same(a, b) for a, b in zip(big[3:], ds.train_batches(0, 2, 500, 3, 5)))


@pytest.mark.parametrize("world_size,batch_size", [(1, 64), (2, 7), (3, 16), (4, 200)])
def test_eval_covers_the_split_once_with_equal_batches_on_all_ranks(
    dataset_dir: Path, world_size: int, batch_size: int
) -> None:
    ds = ParquetDataset(DataConfig(name="parquet", path=str(dataset_dir)))
    per_rank = [list(ds.eval_batches("val", r, world_size, batch_size)) for r in range(world_size)]
    shapes = {tuple(int(b.labels.numel()) for b, _, _ in batches) for batches in per_rank}
    assert len(shapes) == 1  # same count and sizes on every rank: sharded forwards are collective
    real = sorted(r for batches in per_rank for b, prob, is_real in batches if is_real for r in _rows(b))
    assert real == list(range(800, 900))
    assert all(prob is None for batches in per_rank for _, prob, _ in batches)


def _copy_with(dataset_dir: Path, dest: Path, split: str, write_statistics: bool = True, **columns: np.ndarray) -> Path:
    """A copy of the dataset whose ``split`` file has ``columns`` replaced."""
    shutil.copytree(dataset_dir, dest)
    table = pq.read_table(dest / f"{split}.parquet")
    for name, values in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.int32()))
    pq.write_table(table, dest / f"{split}.parquet", row_group_size=37, write_statistics=write_statistics)
    return dest


def test_out_of_range_ids_are_refused(dataset_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(dataset_dir, bad)
    meta = json.loads((bad / "metadata.json").read_text())
    meta["sparse_features"][1]["vocab_size"] = 3  # tags has 5 tokens and ids up to 4
    (bad / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="has 5 tokens of feature 'tags' with ids 0..4, but metadata.json says vocab_size 3"):
        ParquetDataset(DataConfig(name="parquet", path=str(bad)))

    cat = np.arange(100) % 3
    cat[57] = 7  # the val split: ids beyond the table of 'cat', vocabulary intact
    stats = _copy_with(dataset_dir, tmp_path / "stats", "val", cat=cat)
    with pytest.raises(IdOutOfRangeError, match=r"feature 'cat' has ids up to 7 .*val.parquet row group 1, outside its table \[0, 4\)"):
        ParquetDataset(DataConfig(name="parquet", path=str(stats)))  # from the footer, before any batch
    no_stats = _copy_with(dataset_dir, tmp_path / "no_stats", "val", write_statistics=False, cat=cat)
    ds = ParquetDataset(DataConfig(name="parquet", path=str(no_stats)))
    with pytest.raises(IdOutOfRangeError, match=r"feature 'cat' has id 7 outside its table \[0, 4\) in .*val.parquet row group 1"):
        list(ds.eval_batches("val", 0, 1, 8))  # as the row group is decoded

    good = next(iter(ParquetDataset(DataConfig(name="parquet", path=str(dataset_dir))).train_batches(0, 1, 64, 0, 1)))
    tracker = IdFrequencyTracker({"row": N + 1, "tags": 3, "cat": 4})
    with pytest.raises(ValueError, match=r"feature 'tags': id [34] outside \[0, 3\)"):
        tracker.update(good.sparse_features)


def test_uri_config_and_errors(dataset_dir: Path) -> None:
    data = dataset_config(load_job_config(overrides=[f"data.path=file://{dataset_dir}"]))
    assert data.name == "parquet"  # a path alone selects the prepared dataset
    ds = ParquetDataset(data)
    assert len(list(ds.eval_batches("test", 0, 1, 1000))) == 1
    with pytest.raises(ValueError, match="bad rank 2 of 2"):
        ds.train_batches(2, 2, 8, 0, 1)
    with pytest.raises(DatasetError, match="is not a directory"):
        ParquetDataset(DataConfig(name="parquet", path=str(dataset_dir / "missing")))
