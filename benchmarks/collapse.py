"""Collapse reproduction: SE vs ME DCNv2 at the same embedding parameter count.

For each dataset, trains ``dcnv2-se-{S}x`` (one set of dim 12·S) and ``dcnv2-me-{S}x``
(S sets of dim 12) with live IA logging, analyses both final checkpoints with
``torchrec-me analyze`` and prints one markdown table: validation AUC, the mean IA of
the per-set tables, and the mean over fields of the IA of each field's embedding with
all sets concatenated along D (dim 12·S for both models, so directly comparable).

    python benchmarks/collapse.py --scale 4 --steps 200 --out runs/collapse
    python benchmarks/collapse.py --datasets synthetic movielens=PATH_TO_PREPARED_ML100K

Numbers are what this script measured; nothing is tuned to make ME look better.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional


def _run(cmd: List[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def _mean(values: List[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def measure(name: str, data_overrides: List[str], preset: str, steps: int, out: Path) -> Dict[str, Any]:
    run_dir = out / name / preset
    train = [sys.executable, "-m", "torchrec_me.train", f"model={preset}", f"train.steps={steps}",
             f"train.ia_every={max(1, steps // 10)}", *data_overrides, "--run-dir", str(run_dir), "--no-progress"]  # fmt: skip
    if not (run_dir / "metrics.json").is_file():
        _run(train)
    analysis = run_dir / "analysis"
    _run([sys.executable, "-m", "torchrec_me.analyze", "--run", str(run_dir), "--out", str(analysis)])
    report = json.loads((analysis / "ia.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fields = report["fields"].values()
    return {
        "dataset": name,
        "preset": preset,
        "val_auc": metrics["val_auc"],
        "set_ia_all": _mean([s["mean_ia_all_rows"] for s in report["sets"]]),
        "set_ia_trained": _mean([s["mean_ia_trained_rows"] for s in report["sets"]]),
        "concat_ia_all": _mean([f.get("ia_concat_all_rows") for f in fields]),
        "concat_ia_trained": _mean([f.get("ia_concat_trained_rows") for f in fields]),
        "dims": report["model"]["set_dims"],
        "run_dir": str(run_dir),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=4, choices=[2, 3, 4, 10])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", default="runs/collapse")
    p.add_argument(
        "--datasets", nargs="*", default=["synthetic"],
        help="'synthetic' or NAME=PREPARED_DIR (trained with data.name=parquet data.path=DIR)",
    )  # fmt: skip
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()

    rows = []
    for spec in args.datasets:
        name, _, path = spec.partition("=")
        overrides = [] if not path else ["data.name=parquet", f"data.path={path}"]
        for variant in ("se", "me"):
            row = measure(name, overrides, f"dcnv2-{variant}-{args.scale}x", args.steps, Path(args.out))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"\nsteps={args.steps}, scale {args.scale}x (embedding dim {12 * args.scale} per field in both models)\n")
    print("| dataset | model | set dims | val AUC | mean IA per set table (all / trained rows) | mean IA per field, sets concatenated (all / trained rows) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['preset']} | {r['dims']} | {r['val_auc']:.4f} | {fmt(r['set_ia_all'])} / {fmt(r['set_ia_trained'])} "
            f"| {fmt(r['concat_ia_all'])} / {fmt(r['concat_ia_trained'])} |"
        )


if __name__ == "__main__":
    main()
