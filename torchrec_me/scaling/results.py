"""A sweep's results table: one row per cell, ``DIR/results.parquet`` and ``DIR/results.csv``.

Columns:

* ``cell``, ``status`` (done, failed, pending), ``attempts``, ``wall_seconds``, ``error``;
* ``overrides`` (the cell's ``KEY=VALUE`` list, space-separated) and one column per
  varying key, named as the key (``model.num_sets``, ``train.seed``);
* every entry of the run's ``metrics.json``: the final metrics, ``dense_params`` and
  ``sparse_params``, ``train_flops_per_sample`` or ``train_flops_per_token``,
  ``train_flops``, ``train_samples``, ``train_tokens``, and the IA summary
  (``ia_mean_trained_rows``, ...). Nested values are flattened (``ia_trained_rows.set0``);
  lists become JSON text.

A column whose values mix text and numbers is written as text.
"""

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from torchrec_me.atomic import atomic_file, write_text_atomic

STATUS_FILE = "cell.json"
METRICS_FILE = "metrics.json"
FIRST_COLUMNS = ("cell", "status", "attempts", "wall_seconds", "error", "overrides")


def read_cell_status(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The sweep's record of one cell (``cell.json``), or None if it never finished an attempt."""
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _flatten(prefix: str, value: Any, out: Dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = json.dumps(value)
    else:
        out[prefix] = value


def cell_row(cell: Any, run_dir: Path) -> Dict[str, Any]:
    """The results row of ``cell`` (a :class:`~torchrec_me.scaling.grid.Cell`)."""
    status = read_cell_status(run_dir) or {"status": "pending", "attempts": 0, "wall_seconds": None, "error": None}
    row: Dict[str, Any] = {
        "cell": cell.name, "status": status["status"], "attempts": status["attempts"],
        "wall_seconds": status["wall_seconds"], "error": status["error"], "overrides": " ".join(cell.overrides),
    }  # fmt: skip
    for key, value in cell.values.items():
        _flatten(key, value, row)
    metrics_path = run_dir / METRICS_FILE
    if status["status"] == "done" and metrics_path.is_file():
        metrics: Dict[str, Any] = {}
        _flatten("", json.loads(metrics_path.read_text()), metrics)
        row.update({k: v for k, v in metrics.items() if k not in row})
    return row


def _column(values: List[Any]) -> pa.Array:
    present = [v for v in values if v is not None]
    if all(isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.bool_())
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        kind = pa.int64() if all(isinstance(v, int) for v in present) else pa.float64()
        return pa.array(values, type=kind)
    return pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values], type=pa.string())


def rows_to_table(rows: Sequence[Dict[str, Any]]) -> pa.Table:
    """The Arrow table of ``rows`` (union of their keys; the fixed columns first)."""
    names = list(FIRST_COLUMNS)
    for row in rows:
        names += [k for k in row if k not in names]
    return pa.table({name: _column([row.get(name) for row in rows]) for name in names})


def write_results(out: Path, cells: Sequence[Any]) -> Path:
    """Write ``results.parquet`` and ``results.csv`` of every cell into ``out`` (atomically)."""
    out = Path(out)
    table = rows_to_table([cell_row(c, out / "cells" / c.name) for c in cells])
    path = out / "results.parquet"
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(["" if v is None else v for v in row.values()])
    write_text_atomic(out / "results.csv", text.getvalue())
    return path


def read_results(sweep_dir: Path) -> List[Dict[str, Any]]:
    """The rows of ``sweep_dir/results.parquet``."""
    path = Path(sweep_dir) / "results.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `torchrec-me sweep` first")
    return pq.read_table(path).to_pylist()
