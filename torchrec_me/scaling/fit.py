"""``torchrec-me fit --sweep DIR --x X --y METRIC``: scaling laws of a sweep's results.

The finished cells of ``DIR/results.parquet`` are split into groups (``--group``
columns; by default the backbone and the arm, SE when ``num_sets`` is 1 and ME
otherwise). ME-1x is SE-1x, so with the arm among the groups each SE cell at its
group's smallest x also joins the ME curve of the same backbone. Per group, the law of
:mod:`torchrec_me.scaling.laws` is fitted to ``y`` against ``x``:

* ``--x params``: dense + sparse parameters; ``dense_params``; ``sparse_params``;
  ``flops``: total training FLOPs (``train_flops``); ``data``: tokens trained on
  (``train_tokens``) or, for CTR models, samples (``train_samples``).
* ``--form auto`` (default) takes ``power`` for losses (``loss``/``logloss`` in the
  name) and ``loglinear`` for everything else.

Outputs in ``--out`` (default ``DIR/fits``): ``Y_vs_X.png`` (y against x on log axes,
mean +- std over seeds, each group's fitted curve, the held-out largest point marked
and the curve fitted without it, dashed), ``Y_vs_X.md`` (the fits with bootstrap
intervals and the extrapolation check) and ``Y_vs_X.json``.
"""

import argparse
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from torchrec_me.atomic import atomic_file, write_json_atomic, write_text_atomic
from torchrec_me.command import run_command
from torchrec_me.config import ConfigError
from torchrec_me.scaling.laws import PARAMS, LawReport, analyse_law
from torchrec_me.scaling.results import read_results

X_CHOICES = ("params", "dense_params", "sparse_params", "flops", "data")
DEFAULT_GROUPS = ("backbone", "arm")


def x_value(row: Dict[str, Any], x: str) -> Optional[float]:
    """The ``--x`` quantity of a results row (None when the row lacks it)."""
    if x == "params":
        parts = [row.get("dense_params"), row.get("sparse_params")]
        return None if None in parts else float(sum(parts))
    if x == "flops":
        return row.get("train_flops")
    if x == "data":
        return row.get("train_tokens") if row.get("train_tokens") is not None else row.get("train_samples")
    return row.get(x)


def _arm(row: Dict[str, Any]) -> str:
    return "SE" if int(row.get("num_sets") or 1) == 1 else "ME"


def group_points(rows: Sequence[Dict[str, Any]], x: str, y: str, groups: Sequence[str]) -> Dict[Tuple, List[Tuple[float, float]]]:
    """``{group values: [(x, y), ...]}`` of the finished rows; SE base points join ME curves."""
    out: Dict[Tuple, List[Tuple[float, float]]] = {}
    done = [r for r in rows if r.get("status") == "done"]
    missing = [c for c in groups if c != "arm" and not any(c in r for r in done)]
    if missing:
        columns = sorted({k for r in done for k in r})
        raise ConfigError(f"--group: column(s) {missing} are not in the results; columns: {columns}")
    for row in done:
        xv, yv = x_value(row, x), row.get(y)
        if xv is None or yv is None or (isinstance(yv, float) and math.isnan(yv)):
            continue
        key = tuple(_arm(row) if c == "arm" else row.get(c) for c in groups)
        out.setdefault(key, []).append((float(xv), float(yv)))
    if "arm" in groups:
        i = list(groups).index("arm")
        for key, points in list(out.items()):
            me = key[:i] + ("ME",) + key[i + 1:]
            if key[i] == "SE" and me in out:
                smallest = min(p[0] for p in points)
                out[me] = [p for p in points if p[0] == smallest] + out[me]
    return out


def choose_form(form: str, y: str) -> str:
    if form != "auto":
        return form
    return "power" if "loss" in y else "loglinear"


def _label(key: Tuple) -> str:
    return " ".join(str(k) for k in key)


def fit_groups(points: Dict[Tuple, List[Tuple[float, float]]], form: str, bootstrap: int) -> Dict[Tuple, LawReport]:
    reports = {}
    for key, pts in points.items():
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        try:
            reports[key] = analyse_law(form, xs, ys, bootstrap=bootstrap)
        except ValueError as e:
            print(f"group {_label(key)}: not fitted: {e}")
    return reports


def _summary(pts: List[Tuple[float, float]]) -> List[Tuple[float, float, float, int]]:
    """(x, mean, std, n) per distinct x."""
    out = []
    for xv in sorted({p[0] for p in pts}):
        ys = np.array([p[1] for p in pts if p[0] == xv])
        out.append((xv, float(ys.mean()), float(ys.std(ddof=1)) if len(ys) > 1 else 0.0, len(ys)))
    return out


def plot_fits(points, reports, x: str, y: str, form: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (key, pts) in enumerate(sorted(points.items(), key=lambda kv: _label(kv[0]))):
        color = f"C{i % 10}"
        stats = _summary(pts)
        xs = np.array([s[0] for s in stats])
        ax.errorbar(xs, [s[1] for s in stats], yerr=[s[2] for s in stats], fmt="o", color=color, label=_label(key), capsize=3)
        report = reports.get(key)
        if report is None:
            continue
        grid = np.geomspace(xs.min(), xs.max(), 100)
        ax.plot(grid, report.fit.predict(grid), "-", color=color, alpha=0.8)
        if report.holdout_fit is not None:
            ax.plot(grid, report.holdout_fit.predict(grid), "--", color=color, alpha=0.6)
            ax.scatter([report.held_out_x], [report.held_out_mean], s=160, facecolors="none", edgecolors=color, linewidths=2)
            ax.scatter([report.held_out_x], [report.predicted], marker="x", s=60, color=color)
    ax.set_xscale("log")
    if form == "power":
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{y} vs {x} ({form} fit; circle: held out, x: its prediction; dashed: fit without it)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _law_text(report: LawReport) -> str:
    names = PARAMS[report.form]
    parts = []
    for name, value in zip(names, report.fit.params):
        lo, hi = report.intervals[name]
        parts.append(f"{name} = {value:.4g} [{lo:.4g}, {hi:.4g}]")
    return ", ".join(parts)


def markdown_report(points, reports, x: str, y: str, form: str, sweep: str) -> str:
    law = "y = E + A·(x/x0)^(−alpha)" if form == "power" else "y = a + b·log10(x)"
    lines = [
        f"# {y} vs {x}", "", f"Sweep `{sweep}`; form `{form}`: {law}; 95% bootstrap intervals over seeds. The check fits "
        "without the largest x and predicts it; it holds when the error is within the tolerance (2 standard "
        "errors: the held-out mean's over seeds and the prediction's, in quadrature).", "",
        "| group | points (x: mean ± std, n) | fit | held-out x | observed | predicted [95%] | error | seed std | tolerance | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for key in sorted(points, key=_label):
        stats = "; ".join(f"{s[0]:.3g}: {s[1]:.4f} ± {s[2]:.4f} ({s[3]})" for s in _summary(points[key]))
        r = reports.get(key)
        if r is None:
            lines.append(f"| {_label(key)} | {stats} | not fitted | | | | | | | |")
            continue
        if r.predicted is None:
            check = "| | | | | | | not checked (too few x) |"
        else:
            lo, hi = r.predicted_interval
            std = "n/a" if r.held_out_std is None else f"{r.held_out_std:.4f}"
            check = (f"| {r.held_out_x:.3g} | {r.held_out_mean:.4f} | {r.predicted:.4f} [{lo:.4f}, {hi:.4f}] "
                     f"| {r.prediction_error:+.4f} | {std} | {r.tolerance:.4f} | {r.verdict} |")
        lines.append(f"| {_label(key)} | {stats} | {_law_text(r)} {check}")
    return "\n".join(lines) + "\n"


def run_fit(sweep: str, x: str, y: str, groups: Sequence[str], form: str, bootstrap: int, out: Optional[str]) -> Path:
    """Fit, plot and report; returns the markdown report's path."""
    if x not in X_CHOICES:
        raise ConfigError(f"--x must be one of {X_CHOICES}, got {x!r}")
    try:
        rows = read_results(Path(sweep))
    except FileNotFoundError as e:
        raise ConfigError(str(e))
    form = choose_form(form, y)
    points = group_points(rows, x, y, groups)
    if not points:
        raise ConfigError(f"no finished cell of {sweep} has both {x!r} and {y!r}")
    reports = fit_groups(points, form, bootstrap)
    out_dir = Path(out) if out else Path(sweep) / "fits"
    stem = f"{y}_vs_{x}".replace("@", "at").replace("/", "_")
    plot_fits(points, reports, x, y, form, out_dir / f"{stem}.png")
    text = markdown_report(points, reports, x, y, form, sweep)
    write_text_atomic(out_dir / f"{stem}.md", text)
    payload = {
        _label(k): {"points": points[k], "form": form, "params": dict(zip(PARAMS[form], r.fit.params)),
                    "intervals": r.intervals, "held_out_x": r.held_out_x, "observed": r.held_out_mean,
                    "predicted": r.predicted, "prediction_error": r.prediction_error, "seed_std": r.held_out_std,
                    "tolerance": r.tolerance, "verdict": r.verdict}
        for k, r in reports.items()
    }  # fmt: skip
    write_json_atomic(out_dir / f"{stem}.json", payload)
    print(text)
    return out_dir / f"{stem}.md"


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", required=True, help="a sweep directory (with results.parquet)")
    parser.add_argument("--x", required=True, choices=X_CHOICES, help="what the law is a function of")
    parser.add_argument("--y", required=True, help="a metric column, e.g. test_auc, test_hr@10, val_logloss")
    parser.add_argument("--group", nargs="+", default=list(DEFAULT_GROUPS), help="columns that split the curves (arm: SE/ME)")
    parser.add_argument("--form", default="auto", choices=("auto", "power", "loglinear"), help="law form (auto: power for losses)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples over seeds")
    parser.add_argument("--out", help="output directory (default SWEEP/fits)")


def run_from_args(args: argparse.Namespace) -> int:
    return run_command(lambda: run_fit(args.sweep, args.x, args.y, args.group, args.form, args.bootstrap, args.out) and None)
