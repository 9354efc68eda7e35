"""``torchrec-me analyze``: collapse analysis of a checkpoint or a finished run.

Loads a checkpoint into the model sharded at the current world size (one process, or
``torchrun -m torchrec_me.analyze``), computes every table's spectrum without gathering
it (:func:`torchrec_me.analysis.collapse_report`), and writes into ``--out``:

* ``ia.json``: per set, per table, each variant (all rows, trained rows,
  frequency-weighted), per field the IA of the K sets concatenated along D;
* ``spectra.png``: normalised spectra per field, the analysed model and each
  ``--compare`` model side by side (e.g. SE and ME, as in the paper's figure);
* ``ia_per_field.png``: IA of every field as bars (per-set mean and concatenated);
* ``ia_over_steps.png``: live IA over training, from the runs' ``ia_log.jsonl``.
"""

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from torchrec_me.analysis.frequency import IdFrequencyTracker
from torchrec_me.analysis.report import collapse_report
from torchrec_me.atomic import write_json_atomic
from torchrec_me.command import parse_with_overrides, run_command
from torchrec_me.config import ConfigError
from torchrec_me.distributed import checkpoint as ckpt
from torchrec_me.distributed.sharding import DistContext, init_distributed
from torchrec_me.job import job_from_checkpoint


def analyze_checkpoint(path: Path, ctx: DistContext, chunk_rows: int) -> Dict[str, Any]:
    """Collective: the collapse report of one checkpoint, with a ``model`` summary."""
    meta = ckpt.read_meta(path)
    job = job_from_checkpoint(path, ctx)
    cfg, dataset, dmp = job.cfg, job.dataset, job.model
    counts = ckpt.read_extra(path).get("id_counts")
    tracker = None
    if counts is not None:
        sizes = job.family.id_tables(dataset)
        tracker = IdFrequencyTracker.from_global_counts(sizes, counts.to(ctx.device))
    report = collapse_report(dmp, tracker, chunk_rows=chunk_rows)
    report["model"] = {
        "checkpoint": str(path),
        "step": meta["step"],
        "backbone": cfg.model.backbone,
        "num_sets": cfg.model.num_sets,
        "set_dims": cfg.model.dims(),
        "label": f"{cfg.model.backbone} {'SE' if cfg.model.num_sets == 1 else 'ME'} K={cfg.model.num_sets} "
        f"D={'/'.join(map(str, sorted(set(cfg.model.dims()))))}",
    }
    return report


def _write_outputs(out: Path, reports: List[Dict[str, Any]], runs: List[Optional[Path]]) -> List[Path]:
    from torchrec_me.analysis import plots

    written = [write_json_atomic(out / "ia.json", reports[0], indent=1)]
    for i, report in enumerate(reports[1:], start=1):
        written.append(write_json_atomic(out / f"ia_compare{i}.json", report, indent=1))
    labels = {}
    for r in reports:
        label = r["model"]["label"]
        labels[label if label not in labels else f"{label} ({len(labels)})"] = r
    variant = "trained_rows" if reports[0]["sets"][0].get("mean_ia_trained_rows") is not None else "all_rows"
    # Concatenated tables for ME, the one table for SE: the same total dim per field.
    for name, fn in (
        ("spectra.png", lambda p: plots.plot_spectra(labels, p, variant=variant, set_index=None,
                                                     title=f"normalised singular spectra per field ({variant})")),
        ("ia_per_field.png", lambda p: plots.plot_ia_per_field(labels, p, variant=variant, aggregate="concat",
                                                               title=f"information abundance per field ({variant}, sets concatenated)")),
    ):  # fmt: skip
        fn(out / name)
        written.append(out / name)
    logs = {label: run / "ia_log.jsonl" for label, run in zip(labels, runs) if run is not None and (run / "ia_log.jsonl").is_file()}
    if logs:
        plots.plot_ia_over_steps(logs, out / "ia_over_steps.png", title="mean IA per set over training (trained rows)")
        written.append(out / "ia_over_steps.png")
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="torchrec-me analyze", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_analyze_arguments(parser)
    return run_from_args(parse_with_overrides(parser, argv))


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint dir (or a run dir: its newest checkpoint)")
    src.add_argument("--run", help="a finished training run dir (its newest checkpoint and live IA log)")
    parser.add_argument("--compare", nargs="*", default=[], metavar="DIR", help="more runs/checkpoints to plot beside it (e.g. SE vs ME)")
    parser.add_argument("--out", required=True, help="output dir for ia.json and the PNGs")
    parser.add_argument("--chunk-rows", type=int, default=65536, help="rows per step of the sharded Gram computation")


def run_from_args(args: argparse.Namespace) -> int:
    def job() -> None:
        if args.chunk_rows < 1:
            raise ConfigError(f"--chunk-rows must be >= 1, got {args.chunk_rows}")
        sources = [ckpt.resolve_checkpoint(p) for p in [args.checkpoint or args.run, *args.compare]]
        ctx = init_distributed("auto")
        reports = [analyze_checkpoint(path, ctx, args.chunk_rows) for path, _ in sources]
        if ctx.rank == 0:
            for path in _write_outputs(Path(args.out), reports, [run for _, run in sources]):
                print(f"wrote {path}")
            for r in reports:
                print(_summary_line(r))

    return run_command(job)


def _summary_line(report: Dict[str, Any]) -> str:
    means = ", ".join(
        f"set{s['set']} {s['mean_ia_all_rows']:.2f}/{s['mean_ia_trained_rows'] or float('nan'):.2f}" for s in report["sets"]
    )
    return f"{report['model']['label']} (step {report['model']['step']}): mean IA all/trained rows: {means}"


if __name__ == "__main__":
    sys.exit(main())
