"""Wrong input stops with one clear error; an interrupted prepare leaves nothing that looks complete."""

import os
from pathlib import Path

import pytest

from tests.data.rawfiles import avazu_rows, criteo_rows, write_avazu, write_criteo, write_lines
from torchrec_me.cli import main as cli_main
from torchrec_me.config import ConfigError
from torchrec_me.data.prepare.avazu import prepare_avazu
from torchrec_me.data.prepare.common import PrepareError, PrepareOptions
from torchrec_me.data.prepare.criteo import prepare_criteo
from torchrec_me.data.prepare.output import SplitWriter
from torchrec_me.data.store import DatasetError, load_metadata
from torchrec_me.job import load_job_config


def _prepare(raw: Path, out: Path, **kw) -> dict:
    return prepare_criteo(str(raw), str(out), PrepareOptions(progress=False, summary=False, **kw))


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(PrepareError, match="is empty"):
        _prepare(tmp_path / "e.txt", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match="does not exist"):
        _prepare(tmp_path / "nope.txt", tmp_path / "o")


def test_not_criteo_at_all(tmp_path: Path) -> None:
    raw = write_avazu(tmp_path / "a.csv", avazu_rows(50))
    with pytest.raises(PrepareError, match="no tab character"):
        _prepare(raw, tmp_path / "o")
    tabs = write_lines(tmp_path / "t.tsv", ["a\tb\tc"] * 2000)  # tabs, but three columns
    with pytest.raises(PrepareError, match="t.tsv does not look like criteo data: 2000 of the first 2000 lines"):
        _prepare(tabs, tmp_path / "o")


def test_more_than_one_percent_bad_lines(tmp_path: Path) -> None:
    rows = criteo_rows(1000)
    raw = write_criteo(tmp_path / "c.txt", rows, [(k * 50, "1\t2") for k in range(11)])  # 11 of 1011
    with pytest.raises(PrepareError, match=r"11 of 1,011 lines \(1.1%\) are malformed, more than the 1%"):
        _prepare(raw, tmp_path / "o")
    raw = write_criteo(tmp_path / "c.txt", rows, [(k * 50, "") for k in range(10)])  # 10 blank lines: 0.99%
    meta = _prepare(raw, tmp_path / "o")
    assert meta["rows"]["kept"] == 1000 and meta["skipped"]["by_reason"] == {"blank line": 10}


def test_avazu_wrong_header(tmp_path: Path) -> None:
    raw = write_lines(tmp_path / "a.csv", ["1,0,14102100"], header="id,click,hour")
    with pytest.raises(PrepareError, match="expected the header 'id,click,hour,C1,banner_pos"):
        prepare_avazu(str(raw), str(tmp_path / "o"), PrepareOptions(progress=False))
    only_header = write_avazu(tmp_path / "h.csv", [])
    with pytest.raises(PrepareError, match="has no valid avazu rows"):
        prepare_avazu(str(only_header), str(tmp_path / "o"), PrepareOptions(progress=False))


def test_existing_output_and_overwrite(tmp_path: Path) -> None:
    raw = write_criteo(tmp_path / "c.txt", criteo_rows(200))
    _prepare(raw, tmp_path / "o")
    with pytest.raises(PrepareError, match="already exists"):
        _prepare(raw, tmp_path / "o")
    meta = _prepare(raw, tmp_path / "o", overwrite=True, seed=5)
    assert load_metadata(str(tmp_path / "o"))["preprocessing"]["split_seed"] == 5 == meta["preprocessing"]["split_seed"]
    assert sorted(os.listdir(tmp_path)) == ["c.txt", "o"]


def test_crash_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = write_criteo(tmp_path / "c.txt", criteo_rows(3000))
    calls = []
    real_write = SplitWriter.write

    def failing_write(self, table):  # type: ignore[no-untyped-def]
        calls.append(table.num_rows)
        if len(calls) == 4:
            raise OSError("disk full (simulated)")
        real_write(self, table)

    monkeypatch.setattr(SplitWriter, "write", failing_write)
    with pytest.raises(OSError, match="simulated"):
        _prepare(raw, tmp_path / "o", block_size=1 << 16)  # several blocks: the crash is mid-way
    assert len(calls) == 4
    assert sorted(os.listdir(tmp_path)) == ["c.txt"]  # no output, no temporary directory


def test_killed_run_leftover_is_refused(tmp_path: Path) -> None:
    raw = write_criteo(tmp_path / "c.txt", criteo_rows(200))
    _prepare(raw, tmp_path / "o")
    (tmp_path / "o" / "metadata.json").unlink()  # what a kill -9 before the final rename would leave
    with pytest.raises(DatasetError, match="no metadata.json"):
        load_metadata(str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="config key 'data.path'.*no metadata.json"):
        load_job_config(overrides=[f"data.path={tmp_path / 'o'}"])
    with pytest.raises(ConfigError, match="config key 'data.path': data.name=parquet needs data.path"):
        load_job_config(overrides=["data.name=parquet"])


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "e.txt").write_text("")
    assert cli_main(["prepare", "criteo", "--input", str(tmp_path / "e.txt"), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("torchrec-me: error: input") and "is empty" in err[0]
    raw = write_criteo(tmp_path / "c.txt", criteo_rows(300), [(10, "oops")])
    argv = ["prepare", "criteo", "--input", f"file://{raw}", "--output", str(tmp_path / "o"), "--no-progress"]
    assert cli_main(argv + ["--min-count", "2", "--split", "time"]) == 0
    out = capsys.readouterr().out
    assert "rows: 300 kept of 301 (train 240, val 30, test 30)" in out
    assert "1 wrong column count (expected 40); e.g. line 11: 'oops'" in out
    meta = load_metadata(str(tmp_path / "o"))
    assert meta["preprocessing"]["min_count"] == 2 and meta["preprocessing"]["split"] == "time"


def test_gzip_input(tmp_path: Path) -> None:
    import gzip

    rows = criteo_rows(300)
    plain = write_criteo(tmp_path / "c.txt", rows)
    with open(plain, "rb") as src, gzip.open(tmp_path / "c.txt.gz", "wb") as dst:
        dst.write(src.read())
    a = _prepare(plain, tmp_path / "a")
    b = _prepare(tmp_path / "c.txt.gz", tmp_path / "b")
    assert a["sparse_features"] == b["sparse_features"] and a["splits"] == b["splits"]
