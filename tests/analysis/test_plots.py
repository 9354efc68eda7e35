"""The PNG writers draw exactly what the reports and IA logs hold."""

import json
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from torchrec_me.analysis import collapse_report  # noqa: E402
from torchrec_me.analysis.plots import (  # noqa: E402
    SPECTRUM_FLOOR,
    plot_ia_over_steps,
    plot_ia_per_field,
    plot_spectra,
    read_ia_log,
)
from torchrec_me.modules.multi_embedding import MultiEmbeddingBagCollection  # noqa: E402

FIELDS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def reports() -> Dict[str, Dict[str, Any]]:
    """SE with rank-2 tables (collapsed) and ME with random ones."""
    g = torch.Generator().manual_seed(0)
    se = MultiEmbeddingBagCollection(FIELDS, [60, 50, 40], [16])
    me = MultiEmbeddingBagCollection(FIELDS, [60, 50, 40], [16, 16])
    with torch.no_grad():
        for f, n in zip(FIELDS, [60, 50, 40]):
            se.ebcs[0].embedding_bags[f"set0__{f}"].weight.copy_(
                torch.randn(n, 2, generator=g) @ torch.randn(2, 16, generator=g)
            )
    return {"SE": collapse_report(se), "ME": collapse_report(me)}


def _is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spectra_one_panel_per_report_one_line_per_field(reports: Dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "spectra.png"
    fig = plot_spectra(reports, out)
    assert _is_png(out)
    axes = fig.get_axes()
    assert len(axes) == 2 and all(ax.get_yscale() == "log" for ax in axes)
    for ax, report in zip(axes, reports.values()):
        lines = ax.get_lines()
        assert len(lines) == len(FIELDS)
        for line, f in zip(lines, FIELDS):
            spec = report["sets"][0]["tables"][f"set0__{f}"]["spectrum_all_rows"]
            np.testing.assert_allclose(line.get_xdata(), np.arange(1, 17))
            np.testing.assert_allclose(line.get_ydata(), np.maximum(spec, SPECTRUM_FLOOR))
    se_line = axes[0].get_lines()[0].get_ydata()
    assert se_line[1] > 1e-3 and se_line[2] == SPECTRUM_FLOOR  # rank 2: collapsed after index 2
    assert min(axes[1].get_lines()[0].get_ydata()) > 1e-2


def test_spectra_per_set_average_fields(reports: Dict[str, Any], tmp_path: Path) -> None:
    fig = plot_spectra(reports, tmp_path / "sets.png", per="set")
    me_lines = fig.get_axes()[1].get_lines()
    assert len(me_lines) == 2
    specs = [reports["ME"]["sets"][1]["tables"][f"set1__{f}"]["spectrum_all_rows"] for f in FIELDS]
    np.testing.assert_allclose(me_lines[1].get_ydata(), np.mean(specs, axis=0))


def test_ia_per_field_bar_heights(reports: Dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "ia.png"
    fig = plot_ia_per_field(reports, out)
    assert _is_png(out)
    ax = fig.get_axes()[0]
    heights = [p.get_height() for p in ax.patches]
    se = [reports["SE"]["sets"][0]["tables"][f"set0__{f}"]["ia_all_rows"] for f in FIELDS]
    me = [np.mean([reports["ME"]["fields"][f]["ia_per_set_all_rows"]]) for f in FIELDS]
    np.testing.assert_allclose(heights, se + me)
    assert max(se) <= 2 + 1e-6 < min(me)
    fig = plot_ia_per_field(reports, tmp_path / "ia_concat.png", aggregate="concat", normalize_by_dim=True)
    heights = [p.get_height() for p in fig.get_axes()[0].patches]
    concat = [reports["ME"]["fields"][f]["ia_concat_all_rows"] / 32 for f in FIELDS]
    np.testing.assert_allclose(heights[3:], concat)


def test_ia_over_steps_reads_json_lines(tmp_path: Path) -> None:
    log = tmp_path / "ia.jsonl"
    rows = [
        {"step": 20, "ia": {"set0": 3.0, "set1": 5.0}},
        {"loss": 0.3},
        {"step": 10, "ia": {"set0": 4.0, "set1": 6.0}},
    ]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [r["step"] for r in read_ia_log(log)] == [10, 20]
    out = tmp_path / "steps.png"
    fig = plot_ia_over_steps({"ME": log, "SE": [{"step": 0, "ia": {"set0": 9.0}}]}, out)
    assert _is_png(out)
    lines = fig.get_axes()[0].get_lines()
    assert [line.get_label() for line in lines] == ["ME: set0", "ME: set1", "SE: set0"]
    np.testing.assert_allclose(lines[0].get_xdata(), [10, 20])
    np.testing.assert_allclose(lines[1].get_ydata(), [6.0, 5.0])
