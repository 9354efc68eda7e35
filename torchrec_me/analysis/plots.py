"""PNG figures of collapse reports (needs matplotlib; this module imports it).

Why: the paper's evidence for embedding collapse is visual: normalised singular
spectra of each field's table that fall off after a few indices for single-embedding
models and stay flat for multi-embedding ones, and information abundance (IA) per field
and over training. These functions draw those from :func:`collapse_report` outputs and
from JSON-lines IA logs (rows ``{"step": int, "ia": {"set0": mean IA, ...}}`` as written by
:func:`torchrec_me.analysis.report.ia_log_record`).

Everything uses ``matplotlib.figure.Figure`` directly (no pyplot state, no display), so
it is safe in training processes and tests. Each function saves the PNG atomically
(:func:`torchrec_me.atomic.atomic_file`: a crash leaves the old file or none, never half
a PNG) and returns the figure so callers can inspect or restyle it.
"""

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from torchrec_me.atomic import atomic_file

__all__ = ["plot_ia_over_steps", "plot_ia_per_field", "plot_spectra", "read_ia_log"]

Report = Mapping[str, Any]
PathLike = Union[str, Path]

# Singular values under this fraction of s_1 are drawn at it: a log axis cannot show the
# exact zeros of a collapsed table, and the Gram path resolves nothing below ~1e-7 anyway.
SPECTRUM_FLOOR = 1e-6
_MAX_LEGEND = 14


def _save(fig: Figure, path: PathLike) -> Figure:
    """Write ``fig`` as a PNG atomically (creating parent folders) and return it."""
    with atomic_file(path) as tmp:
        # The temporary name does not end in .png: the format is explicit.
        fig.savefig(tmp, dpi=110, format="png")
    return fig


def _fields(report: Report, fields: Optional[Sequence[str]]) -> List[str]:
    """The requested fields (default: all of the report's), checked to exist."""
    names = list(report["fields"])
    if fields is None:
        return names
    missing = [f for f in fields if f not in report["fields"]]
    if missing:
        raise KeyError(f"fields {missing} not in report")
    return list(fields)


def _table(report: Report, set_index: int, feature: str) -> Optional[Mapping[str, Any]]:
    """The report entry of ``feature``'s table in set ``set_index``, if any."""
    for s in report["sets"]:
        if s["set"] == set_index:
            for entry in s["tables"].values():
                if entry["feature"] == feature:
                    return entry
    return None


def _clip(values: Sequence[float]) -> List[float]:
    """Values raised to ``SPECTRUM_FLOOR`` so a log axis can draw them."""
    return [max(float(v), SPECTRUM_FLOOR) for v in values]


def _field_spectrum(
    report: Report, feature: str, variant: str, set_index: Optional[int]
) -> Optional[List[float]]:
    """Normalised spectrum of a field: one set's table, or the concatenation if set_index is None."""
    if set_index is None:
        return report["fields"][feature].get(f"spectrum_concat_{variant}")
    entry = _table(report, set_index, feature)
    return None if entry is None else entry.get(f"spectrum_{variant}")


def _draw_field_spectra(
    ax: Axes, report: Report, names: Sequence[str], variant: str, set_index: Optional[int]
) -> Tuple[int, str]:
    """One line per field (``set_index``'s table, or the concatenation); (lines, what)."""
    cmap = matplotlib.colormaps["viridis"]
    lines = 0
    for i, feature in enumerate(names):
        spec = _field_spectrum(report, feature, variant, set_index)
        if spec is None:
            continue
        color = cmap(i / max(len(names) - 1, 1))
        ax.plot(range(1, len(spec) + 1), _clip(spec), color=color, lw=1.2, alpha=0.85, label=feature)
        lines += 1
    return lines, "concatenated sets" if set_index is None else f"set {set_index}"


def _draw_set_spectra(ax: Axes, report: Report, names: Sequence[str], variant: str) -> Tuple[int, str]:
    """One line per set: the mean normalised spectrum of its ``names`` tables; (lines, what)."""
    lines = 0
    for j, s in enumerate(report["sets"]):
        specs = [
            e[f"spectrum_{variant}"]
            for e in s["tables"].values()
            if e["feature"] in names and e.get(f"spectrum_{variant}") is not None
        ]
        if not specs or len({len(sp) for sp in specs}) != 1:
            continue
        mean = [sum(col) / len(col) for col in zip(*specs)]
        color = matplotlib.colormaps["tab10"](j % 10)
        ax.plot(range(1, len(mean) + 1), _clip(mean), color=color, lw=1.8, marker="o", ms=3,
                label=f"set {s['set']} (D={len(mean)})")  # fmt: skip
        lines += 1
    return lines, "mean over fields"


def _style_spectrum_axes(ax: Axes, title: str, lines: int) -> None:
    """Log y, labels, grid, and a legend when it stays readable."""
    ax.set_yscale("log")
    ax.set_xlabel("singular value index k")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if 0 < lines <= _MAX_LEGEND:
        ax.legend(fontsize=7, ncol=2 if lines > 7 else 1)
    elif lines > _MAX_LEGEND:
        ax.text(0.02, 0.02, f"{lines} fields (colour = field order)", transform=ax.transAxes, fontsize=8)


def plot_spectra(
    reports: Mapping[str, Report],
    path: PathLike,
    variant: str = "all_rows",
    per: str = "field",
    set_index: Optional[int] = 0,
    fields: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Figure:
    """Normalised singular spectra ``s_k / s_1`` (log y) of each report, side by side.

    Args:
        reports: label -> report, e.g. ``{"SE": se_report, "ME": me_report}``; one panel
            each, sharing the y axis so the fall-off can be compared.
        path: PNG to write.
        variant: ``all_rows``, ``trained_rows`` or ``freq_weighted``.
        per: ``field``: one line per field (the table of ``set_index``, or the field's K
            tables concatenated along D when ``set_index`` is None); ``set``: one line
            per set, the mean normalised spectrum over the fields.
        set_index: which set's tables ``per="field"`` draws.
        fields: restrict to these fields (default: all).
        title: figure title.

    Values below ``SPECTRUM_FLOOR`` (exact zeros of a low-rank table) are drawn at it.
    """
    if per not in ("field", "set"):
        raise ValueError(f"per must be 'field' or 'set', got {per!r}")
    if not reports:
        raise ValueError("no reports to plot")
    fig = Figure(figsize=(5.2 * len(reports), 4.2), layout="constrained")
    axes = fig.subplots(1, len(reports), sharey=True, squeeze=False)[0]
    for ax, (label, report) in zip(axes, reports.items()):
        names = _fields(report, fields)
        if per == "field":
            lines, what = _draw_field_spectra(ax, report, names, variant, set_index)
        else:
            lines, what = _draw_set_spectra(ax, report, names, variant)
        _style_spectrum_axes(ax, f"{label}: {what}, {variant.replace('_', ' ')}", lines)
    axes[0].set_ylabel("normalised singular value  $s_k / s_1$")
    lows = [min(line.get_ydata()) for ax in axes for line in ax.get_lines()]
    axes[0].set_ylim(bottom=max(SPECTRUM_FLOOR / 2, min(lows, default=0.1) / 3), top=1.5)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _field_ia(
    report: Report, feature: str, variant: str, aggregate: Union[str, int], normalize_by_dim: bool
) -> float:
    """IA of one field per ``aggregate`` (see :func:`plot_ia_per_field`); NaN if undefined."""
    field = report["fields"][feature]
    if aggregate == "concat":
        value = field.get(f"ia_concat_{variant}")
        dim = sum(field["dims"])
    else:
        per_set = []
        for k in field["sets"]:
            if isinstance(aggregate, int) and k != aggregate:
                continue
            entry = _table(report, k, feature)
            if entry is not None and entry.get(f"ia_{variant}") is not None:
                per_set.append((entry[f"ia_{variant}"], entry["dim"]))
        if not per_set:
            return math.nan
        if aggregate == "mean" or isinstance(aggregate, int):
            value = sum(v for v, _ in per_set) / len(per_set)
            dim = sum(d for _, d in per_set) / len(per_set)
        else:
            raise ValueError(f"aggregate must be 'mean', 'concat' or a set index, got {aggregate!r}")
    if value is None:
        return math.nan
    return value / dim if normalize_by_dim else value


def plot_ia_per_field(
    reports: Mapping[str, Report],
    path: PathLike,
    variant: str = "all_rows",
    aggregate: Union[str, int] = "mean",
    normalize_by_dim: bool = False,
    fields: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Figure:
    """IA of every field as grouped bars, one bar per report.

    Args:
        reports: label -> report (e.g. SE and ME).
        path: PNG to write.
        variant: ``all_rows``, ``trained_rows`` or ``freq_weighted``.
        aggregate: ``mean`` (mean IA of the field's set tables), ``concat`` (IA of the
            field's sets concatenated along D) or a set index (that set's table).
        normalize_by_dim: divide by D (IA / D in [1/D, 1]) to compare different dims.
        fields: restrict to these fields (default: those of the first report).
        title: figure title.
    """
    if not reports:
        raise ValueError("no reports to plot")
    if not (aggregate in ("mean", "concat") or isinstance(aggregate, int)):
        raise ValueError(f"aggregate must be 'mean', 'concat' or a set index, got {aggregate!r}")
    first = next(iter(reports.values()))
    names = _fields(first, fields)
    width = 0.8 / len(reports)
    fig = Figure(figsize=(max(6.0, 0.32 * len(names) * max(len(reports), 2) + 1.5), 4.0), layout="constrained")
    ax = fig.subplots()
    for j, (label, report) in enumerate(reports.items()):
        values = [
            _field_ia(report, f, variant, aggregate, normalize_by_dim) if f in report["fields"] else math.nan
            for f in names
        ]
        xs = [i + (j - (len(reports) - 1) / 2) * width for i in range(len(names))]
        color = matplotlib.colormaps["tab10"](j % 10)
        ax.bar(xs, [0.0 if math.isnan(v) else v for v in values], width=width, color=color, label=label)
    dims = {
        d
        for report in reports.values()
        for f in names
        if f in report["fields"]
        for d in ([sum(report["fields"][f]["dims"])] if aggregate == "concat" else report["fields"][f]["dims"])
    }
    if not normalize_by_dim and len(dims) == 1:
        ax.axhline(dims.pop(), color="0.4", ls="--", lw=1, label="D (no collapse)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90 if len(names) > 12 else 0, fontsize=7 if len(names) > 12 else 9)
    what = {"mean": "mean over sets", "concat": "sets concatenated"}.get(str(aggregate), f"set {aggregate}")
    ax.set_ylabel("IA / D" if normalize_by_dim else "information abundance")
    ax.set_xlabel("field")
    ax.set_title(title or f"IA per field ({what}, {variant.replace('_', ' ')})", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def read_ia_log(path: PathLike) -> List[Dict[str, Any]]:
    """Rows ``{"step", "ia": {"set0": ...}}`` of a JSON-lines log, sorted by step.

    Lines without both keys (other records in a shared log) are skipped.
    """
    rows = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            if isinstance(row, dict) and "step" in row and isinstance(row.get("ia"), dict):
                rows.append(row)
    return sorted(rows, key=lambda r: r["step"])


def plot_ia_over_steps(
    logs: Union[PathLike, Mapping[str, Union[PathLike, Sequence[Mapping[str, Any]]]]],
    path: PathLike,
    title: Optional[str] = None,
) -> Figure:
    """Mean IA of each set over training steps, one line per (log, set).

    Args:
        logs: one JSON-lines log, or label -> log path (or already-read rows), e.g.
            ``{"SE": "se/ia.jsonl", "ME": "me/ia.jsonl"}``; each log gets one colour and
            its sets different line styles.
        path: PNG to write.
        title: figure title.
    """
    if isinstance(logs, (str, Path)):
        logs = {"": logs}
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    styles = ["-", "--", ":", "-."]
    lines = 0
    for j, (label, log) in enumerate(logs.items()):
        rows = read_ia_log(log) if isinstance(log, (str, Path)) else sorted(log, key=lambda r: r["step"])
        keys = sorted({k for r in rows for k in r["ia"]}, key=lambda k: (len(k), k))
        color = matplotlib.colormaps["tab10"](j % 10)
        for i, key in enumerate(keys):
            pts = [(r["step"], r["ia"][key]) for r in rows if r["ia"].get(key) is not None]
            if not pts:
                continue
            name = f"{label}: {key}" if label else key
            ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[i % len(styles)], color=color,
                    marker="o", ms=3, lw=1.4, label=name)
            lines += 1
    ax.set_xlabel("training step")
    ax.set_ylabel("mean information abundance")
    ax.set_title(title or "IA over training", fontsize=10)
    ax.grid(True, alpha=0.3)
    if lines:
        ax.legend(fontsize=8, ncol=2 if lines > 6 else 1)
    return _save(fig, path)
