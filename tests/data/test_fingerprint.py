"""The vocabulary fingerprint: equal for equal vocabularies, different for other ids of the same sizes."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.rawfiles import criteo_rows, write_criteo
from torchrec_me.config import DataConfig
from torchrec_me.data.parquet import ParquetDataset
from torchrec_me.data.prepare.common import PrepareOptions
from torchrec_me.data.prepare.criteo import prepare_criteo
from torchrec_me.data.store import SPLITS, vocab_fingerprint
from torchrec_me.data.synthetic import SyntheticCriteo, scaled_cardinalities
from torchrec_me.data.synthetic import fingerprint as synthetic_fingerprint


def _load(path: Path) -> ParquetDataset:
    return ParquetDataset(DataConfig(name="parquet", path=str(path)))


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_criteo(tmp_path_factory.mktemp("raw") / "c.txt", criteo_rows(300))


def _prepare(raw: Path, out: Path, **options: int) -> dict:
    return prepare_criteo(str(raw), str(out), PrepareOptions(progress=False, summary=False, **options), min_count=2)


def _permute_ids(src: Path, dst: Path, feature: str) -> None:
    """A copy of ``src`` in which the tokens of ``feature`` trade ids (reversed), data and vocabulary
    alike, with a metadata fingerprint recomputed as ``prepare`` would: a consistent dataset
    with the same sizes whose ids mean other tokens."""
    shutil.copytree(src, dst)
    vocab = pq.read_table(dst / "vocab.parquet")
    mine = np.flatnonzero(vocab.column("field").to_numpy(zero_copy_only=False) == feature)
    n = len(mine)
    ids = vocab.column("id").to_numpy().copy()
    ids[mine] = n - 1 - ids[mine]
    pq.write_table(vocab.set_column(vocab.schema.get_field_index("id"), "id", pa.array(ids, pa.int32())), dst / "vocab.parquet")
    for split in SPLITS:
        t = pq.read_table(dst / f"{split}.parquet")
        col = t.column(feature).to_numpy().copy()
        col[col < n] = n - 1 - col[col < n]  # the OOV id (n) stays
        t = t.set_column(t.schema.get_field_index(feature), feature, pa.array(col, pa.int32()))
        pq.write_table(t, dst / f"{split}.parquet", row_group_size=16)
    meta = json.loads((dst / "metadata.json").read_text())
    meta["vocab_fingerprint"] = vocab_fingerprint(str(dst / "vocab.parquet"), meta["sparse_features"])
    (dst / "metadata.json").write_text(json.dumps(meta))


def test_prepared_datasets(raw: Path, tmp_path: Path) -> None:
    a = _prepare(raw, tmp_path / "a")
    fingerprint = _load(tmp_path / "a").fingerprint
    assert fingerprint == a["vocab_fingerprint"] and len(fingerprint) == 64
    b = _prepare(raw, tmp_path / "b", seed=7, row_group_size=10)  # other splits and row groups, same vocabularies
    assert b["vocab_fingerprint"] == fingerprint

    vocab = pq.read_table(tmp_path / "b" / "vocab.parquet")  # the same vocabulary in other bytes
    pq.write_table(vocab.select(["count", "id", "token", "field"]), tmp_path / "b" / "vocab.parquet", compression="snappy", row_group_size=7)
    assert _load(tmp_path / "b").fingerprint == fingerprint

    _permute_ids(tmp_path / "a", tmp_path / "permuted", "C3")
    permuted = _load(tmp_path / "permuted")
    original = _load(tmp_path / "a")
    assert (permuted.feature_names, permuted.num_embeddings) == (original.feature_names, original.num_embeddings)
    assert permuted.fingerprint != fingerprint

    fewer_tokens = prepare_criteo(str(raw), str(tmp_path / "d"), PrepareOptions(progress=False, summary=False), min_count=3)
    assert fewer_tokens["vocab_fingerprint"] != fingerprint


def _synthetic(cfg: DataConfig) -> str:
    """What ``SyntheticCriteo(cfg).fingerprint`` is, without drawing its teacher."""
    return synthetic_fingerprint(cfg, scaled_cardinalities(cfg.cardinality_scale, cfg.max_cardinality))


def test_synthetic_datasets() -> None:
    base = DataConfig(cardinality_scale=0.002)
    fingerprint = SyntheticCriteo(base).fingerprint
    assert fingerprint == _synthetic(base) and len(fingerprint) == 64
    same_ids = DataConfig(cardinality_scale=0.002, val_samples=128, positive_rate=0.1, zipf_alpha=1.3)
    assert SyntheticCriteo(same_ids).fingerprint == fingerprint  # other frequencies and bias, same ids
    assert _synthetic(DataConfig(cardinality_scale=0.0020001)) == fingerprint  # the same sizes
    others = [
        DataConfig(cardinality_scale=0.002, seed=1),  # other Zipf permutations and teacher
        DataConfig(cardinality_scale=0.003),  # other sizes
        DataConfig(cardinality_scale=0.002, max_cardinality=50),
        DataConfig(cardinality_scale=0.002, teacher_dim=8),  # other teacher vectors per id
    ]
    assert len({_synthetic(cfg) for cfg in others} | {fingerprint}) == len(others) + 1
