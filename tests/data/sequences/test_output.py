"""Atomic output of ``prepare sequences`` and the reader's checks of what it reads."""

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.sequences.rawseq import random_log, write_udata
from torchrec_me.data.prepare.common import PrepareError, PrepareOptions
from torchrec_me.data.sequences import prepare as prepare_module
from torchrec_me.data.sequences.dataset import SequenceDataset
from torchrec_me.data.sequences.layout import vocabulary_fingerprint
from torchrec_me.data.sequences.prepare import prepare_sequences
from torchrec_me.data.store import DatasetError

QUIET = PrepareOptions(summary=False)
OVERWRITE = PrepareOptions(summary=False, overwrite=True)


def _raw(tmp_path: Path, seed: int = 0) -> str:
    return str(write_udata(tmp_path / f"raw{seed}" / "u.data", random_log(n_users=10, seed=seed)))


def test_existing_output_is_refused_before_reading(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(PrepareError, match="already exists"):
        prepare_sequences(str(tmp_path / "missing.data"), str(tmp_path / "out"), QUIET, fmt="movielens")


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(prepare_module, "build_metadata", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_sequences(_raw(tmp_path), str(tmp_path / "out"), QUIET, fmt="movielens")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw0"]  # no output, no .out.incomplete-*


def test_overwrite_replaces_only_when_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    first = prepare_sequences(_raw(tmp_path, 0), str(out), QUIET, fmt="movielens")
    monkeypatch.setattr(prepare_module, "write_files", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        prepare_sequences(_raw(tmp_path, 1), str(out), OVERWRITE, fmt="movielens")
    assert json.loads((out / "metadata.json").read_text())["fingerprint"] == first["fingerprint"]
    monkeypatch.undo()
    second = prepare_sequences(_raw(tmp_path, 1), str(out), OVERWRITE, fmt="movielens")
    assert json.loads((out / "metadata.json").read_text()) == second
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_reader_refuses_incomplete_or_foreign_datasets(prepared_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(prepared_dir, broken)
    (broken / "metadata.json").unlink()
    with pytest.raises(DatasetError, match="no metadata.json"):
        SequenceDataset(str(broken))
    meta = json.loads((prepared_dir / "metadata.json").read_text())
    (broken / "metadata.json").write_text(json.dumps({**meta, "format": "torchrec_me.parquet"}))
    with pytest.raises(DatasetError, match="not torchrec_me.sequences"):
        SequenceDataset(str(broken))


def test_reader_checks_the_vocabulary_fingerprint(prepared_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(prepared_dir, copy)
    items = pq.read_table(copy / "items.parquet")
    tokens = items.column("token").to_pylist()
    assert SequenceDataset(str(copy)).fingerprint == vocabulary_fingerprint(tokens)
    swapped = tokens[1:2] + tokens[:1] + tokens[2:]
    pq.write_table(items.set_column(1, "token", pa.array(swapped, pa.string())), copy / "items.parquet")
    with pytest.raises(DatasetError, match="do not match metadata.json"):
        SequenceDataset(str(copy))


def test_output_may_not_be_the_input_directory(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    with pytest.raises(PrepareError, match="input"):
        prepare_sequences(str(Path(raw).parent), str(Path(raw).parent), OVERWRITE, fmt="movielens")
    assert Path(raw).is_file()
