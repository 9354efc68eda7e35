"""The sweep's results table: one row per cell, flattened metrics, Parquet and CSV."""

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq

from torchrec_me.scaling.grid import Cell
from torchrec_me.scaling.results import read_results, rows_to_table, write_results


def _cell(out: Path, name: str, status: dict, metrics: dict = None) -> Cell:
    run = out / "cells" / name
    run.mkdir(parents=True)
    (run / "cell.json").write_text(json.dumps(status))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    return Cell(name, [f"train.seed={name[-1]}"], {"train.seed": int(name[-1])})


def test_rows_hold_overrides_metrics_and_failures(tmp_path: Path) -> None:
    done = {"status": "done", "attempts": 1, "wall_seconds": 3.5, "error": None}
    failed = {"status": "failed", "attempts": 2, "wall_seconds": 1.0, "error": "boom"}
    metrics = {"test_auc": 0.7, "dense_params": 10, "set_dims": [8, 8], "ia_trained_rows": {"set0": 3.0, "set1": 4.0}}
    cells = [_cell(tmp_path, "s0", done, metrics), _cell(tmp_path, "s1", failed), Cell("s2", ["train.seed=2"], {"train.seed": 2})]
    write_results(tmp_path, cells)
    rows = read_results(tmp_path)
    assert [r["status"] for r in rows] == ["done", "failed", "pending"]
    assert rows[0]["test_auc"] == 0.7 and rows[0]["ia_trained_rows.set1"] == 4.0 and rows[0]["set_dims"] == "[8, 8]"
    assert rows[1]["error"] == "boom" and rows[1]["test_auc"] is None and rows[1]["attempts"] == 2
    assert [r["train.seed"] for r in rows] == [0, 1, 2] and rows[2]["overrides"] == "train.seed=2"
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert table[0]["test_auc"] == "0.7" and table[1]["test_auc"] == ""


def test_mixed_columns_become_text_and_ints_stay_ints() -> None:
    table = rows_to_table([{"a": 1, "b": 1, "c": True}, {"a": "x", "b": 2, "c": None}])
    assert table.column("a").to_pylist() == ["1", "x"]
    assert str(table.schema.field("b").type) == "int64" and str(table.schema.field("c").type) == "bool"
    assert table.column_names[:6] == ["cell", "status", "attempts", "wall_seconds", "error", "overrides"]


def test_results_are_replaced_atomically(tmp_path: Path) -> None:
    write_results(tmp_path, [])
    assert pq.read_table(tmp_path / "results.parquet").num_rows == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
