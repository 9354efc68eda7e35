"""The throughput report: markdown tables of the result rows, and the rows as JSON.

Rows are the JSON rows of ``throughput.py`` (``dataclasses.asdict`` of a
``ThroughputResult``), so a saved ``--json`` file renders the same tables. Every table
is followed by the machine it ran on and the matmul peak measured in the same run: a
table pasted alone still says what its roofline fractions are measured against.
"""

import json
import os
import platform
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch

Row = Mapping[str, Any]

FORMATS = {
    "samples_per_s": "{:,.0f}", "step_ms": "{:.0f}", "dense_gflop_per_sample": "{:.4f}",
    "roofline_samples_per_s": "{:,.0f}", "roofline_fraction": "{:.1%}", "peak_mem_mb": "{:,.0f}",
    "roofline_fraction_best_peak": "{:.1%}", "ms_per_step": "{:.1f}",
}  # fmt: skip
CONFIG_COLUMNS = ["backbone", "model", "num_sets", "embedding_dim", "layout", "world_size"]
PERF_COLUMNS = ["samples_per_s", "step_ms", "roofline_fraction", "roofline_fraction_best_peak", "peak_mem_mb"]
#: The columns of each kind of table.
COLUMNS = {
    "SE vs ME by scale": CONFIG_COLUMNS + ["dense_gflop_per_sample", "roofline_samples_per_s"] + PERF_COLUMNS,
    "Layouts": CONFIG_COLUMNS + PERF_COLUMNS + ["cost_vs_fastest"],
    "Dense path": CONFIG_COLUMNS + ["dense_path"] + PERF_COLUMNS,
    "World size": CONFIG_COLUMNS + ["threads_per_rank"] + PERF_COLUMNS,
    "Profile": ["where", "ms_per_step"],
}


def describe_machine(device: torch.device) -> str:
    """The processor that ran the steps: the GPU's name, or the CPU model and usable cores."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def markdown_table(rows: Sequence[Row], columns: Sequence[str], formats: Mapping[str, str] = FORMATS) -> str:
    """One markdown table: a row per row, ``columns`` formatted by ``formats``; a value
    of None (not measured) is ``n/a``."""

    def cell(row: Row, column: str) -> str:
        value = row.get(column)
        return "n/a" if value is None else formats.get(column, "{}").format(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def machine_line(rows: Sequence[Row], threads: bool = False) -> str:
    """Where ``rows`` ran: the machine (and, with ``threads``, the threads of a rank), and
    the matmul peak of each world size among them."""
    extra = (lambda r: f", {r['threads_per_rank']} threads a rank") if threads else (lambda r: "")
    machines = ", ".join(sorted({f"{r['machine']} ({r['device']}{extra(r)})" for r in rows}))
    peaks = sorted({(r["world_size"], round(r["matmul_peak_gflops"]), round(r["matmul_peak_gflops_best"])) for r in rows})
    return (f"Machine: {machines}. fp32 matmul peak, all ranks at once (median of rounds / best of run): "
            + ", ".join(f"W={w}: {p} / {b} GFLOP/s" for w, p, b in peaks))  # fmt: skip


def _section(kind: str, title: str, rows: Sequence[Row], table_rows: Sequence[Row]) -> str:
    """Table ``kind`` of ``table_rows`` (``rows`` plus derived columns) under ``title``."""
    return f"### {title}\n\n{markdown_table(table_rows, COLUMNS[kind])}\n\n{machine_line(rows)}"


def _with_cost(rows: Sequence[Row]) -> List[Dict[str, Any]]:
    fastest = max(r["samples_per_s"] for r in rows)
    return [dict(r, cost_vs_fastest=f"{fastest / r['samples_per_s']:.2f}x") for r in rows]


def _key(row: Row) -> Tuple[Any, ...]:
    return (row["backbone"], row["num_sets"], row["embedding_dim"], row["layout"], row["dense_path"])


def _profile(row: Row) -> str:
    phases = [{"where": k, "ms_per_step": v} for k, v in row["profile"].items()]
    phases.append({"where": "pipelined step (median, above)", "ms_per_step": row["step_ms"]})
    title = (f"{row['backbone']} {row['model']} K={row['num_sets']} D={row['embedding_dim']} "
             f"{row['layout']} W={row['world_size']}")  # fmt: skip
    return _section("Profile", f"Profile: {title}", [row], phases)


def render(rows: Sequence[Row]) -> str:
    """The markdown tables: by scale, by layout, dense path, by world size, profiles."""
    out = []
    scale = [r for r in rows if "scale" in r["sections"] and r["world_size"] == 1]
    if scale:
        out.append(_section("SE vs ME by scale", "SE vs ME by scale (world size 1)", scale, scale))
    for ws in sorted({r["world_size"] for r in rows}):
        group = [r for r in rows if "layout" in r["sections"] and r["world_size"] == ws]
        if len(group) > 1:
            out.append(_section("Layouts", f"Layouts (world size {ws})", group, _with_cost(group)))
    dense = [r for r in rows if "dense" in r["sections"]]
    if dense:
        out.append(_section("Dense path", "Dense path (world size 1)", dense, dense))
    multi = {_key(r) for r in rows if r["world_size"] > 1}
    if multi:
        by_ws = sorted((r for r in rows if _key(r) in multi), key=lambda r: (_key(r), r["world_size"]))
        out.append(_section("World size", "World size", by_ws, by_ws))
    out += [_profile(r) for r in rows if r.get("profile")]
    return "\n\n".join(out)


def write_json(rows: Sequence[Row], path: str) -> None:
    """Every row, as a JSON list."""
    with open(path, "w") as f:
        json.dump(list(rows), f, indent=1)
