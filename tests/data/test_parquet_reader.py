"""The Parquet reader: disjoint rank shares, exact resume, eval coverage, id checks, URIs."""

import json
import shutil
from pathlib import Path
from typing import Dict, List

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


def test_rank_shares_are_disjoint_and_cover_each_epoch(dataset_dir: Path) -> None:
    ds = ParquetDataset(DataConfig(name="parquet", path=str(dataset_dir), seed=3))
    train_rows = set(range(split_sizes(N)[0]))
    for epoch in (0, 1):
        seen: Dict[int, List[int]] = {}
        for rank in (0, 1):
            before = sum(ds.epoch_rows(rank, 2, e) for e in range(epoch))
            n = ds.epoch_rows(rank, 2, epoch)
            steps = -(-(before + n) // 16)
            stream = [r for b in ds.train_batches(rank, 2, 16, 0, steps) for r in _rows(b)]
            seen[rank] = stream[before : before + n]
        assert len(set(seen[0])) == len(seen[0]) and len(set(seen[1])) == len(seen[1])  # nothing twice
        assert not set(seen[0]) & set(seen[1])  # disjoint
        assert set(seen[0]) | set(seen[1]) == train_rows  # nothing missed
    assert seen[0] != sorted(seen[0])  # shuffled


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
    big = list(ds.train_batches(0, 2, 500, 0, 5))  # batches larger than a shuffle window (8 x 37 rows)
    assert all(_same(a, b) for a, b in zip(big[3:], ds.train_batches(0, 2, 500, 3, 5)))
    rows = [r for b in big for r in _rows(b)]  # the train split's row i holds "row" i
    offset = 0
    for epoch in (0, 1):
        share = {r for g in ds.epoch_groups(0, 2, epoch) for r in range(g.start, g.start + g.rows)}
        got = rows[offset : offset + len(share)]
        assert len(got) == len(set(got)) and set(got) == share  # each epoch's share once, then the next
        offset += len(share)


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
    with pytest.raises(DatasetError, match="fewer than the 40 ranks"):
        ds.train_batches(0, 40, 8, 0, 1)
    with pytest.raises(DatasetError, match="is not a directory"):
        ParquetDataset(DataConfig(name="parquet", path=str(dataset_dir / "missing")))
