"""Validation AUC of the paper's SE/ME presets on the embedded synthetic data.

Each cell is one ``torchrec-me train model=PRESET ...`` run in its own process; the
script prints a markdown table (backbone x SE/ME x scale) with the oracle AUC and the
share of the oracle's lift each run recovered. ME-1x is SE-1x, so it is run once.

    python benchmarks/preset_auc.py --scales 1 4 --steps 300 --json auc.json
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from torchrec_me.models import BACKBONE_REGISTRY


def run(preset: str, steps: int, extra: List[str]) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m.json"
        cmd = [sys.executable, "-m", "torchrec_me.train", f"model={preset}", f"train.steps={steps}", *extra,
               "--no-progress", "--metrics-out", str(out)]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{preset} failed:\n{proc.stderr[-3000:]}")
        metrics = json.loads(out.read_text())
        metrics["wall_s"] = time.perf_counter() - start
        return metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="*", default=sorted(BACKBONE_REGISTRY))
    p.add_argument("--scales", nargs="*", type=int, default=[1, 4])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--json", help="write all rows here")
    p.add_argument("overrides", nargs="*", help="extra KEY=VALUE overrides for every run")
    args = p.parse_args()

    rows = []
    for backbone in args.backbones:
        for scale in args.scales:
            for variant in ("se", "me") if scale > 1 else ("se",):
                preset = f"{backbone}-{variant}-{scale}x"
                m = run(preset, args.steps, args.overrides)
                rows.append({"preset": preset, "backbone": backbone, "variant": variant, "scale": scale, **m})
                print(f"{preset}: auc {m['val_auc']:.4f} ({m['wall_s']:.0f}s)", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))

    print(f"\nsteps={args.steps}, per-rank batch from the config, overrides: {' '.join(args.overrides) or 'none'}\n")
    print("| backbone | scale | SE val AUC | ME val AUC | oracle AUC | SE lift | ME lift | SE / ME samples/s |")
    print("|---|---|---|---|---|---|---|---|")
    by = {(r["backbone"], r["variant"], r["scale"]): r for r in rows}
    for backbone in args.backbones:
        for scale in args.scales:
            se = by[(backbone, "se", scale)]
            me = by.get((backbone, "me", scale), se)
            lift = lambda r: (r["val_auc"] - 0.5) / (r["oracle_auc"] - 0.5)  # noqa: E731
            print(
                f"| {backbone} | {scale}x | {se['val_auc']:.4f} | {me['val_auc']:.4f} | {se['oracle_auc']:.4f} "
                f"| {lift(se):.1%} | {lift(me):.1%} | {se['train_samples_per_s']:,.0f} / {me['train_samples_per_s']:,.0f} |"
            )


if __name__ == "__main__":
    main()
