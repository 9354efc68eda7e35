"""``torchrec-me predict``: score a prepared dataset with a checkpoint, over all ranks.

Every rank loads the checkpoint into the model sharded at the current world size
(``torch.distributed.checkpoint`` reshards, so a checkpoint from W training ranks scores
on any number of ranks), scores its share of one split with the same batches that
training's evaluation uses, and rank 0 writes one Parquet file with a row per sample::

    row     int64    index of the sample within the split (the split file's row order)
    label   int8     the sample's label
    logit   float32  the model's logit
    score   float32  sigmoid(logit), the predicted click probability

The file is written to a temporary name and renamed, so ``--out`` is either complete
or absent. Scoring uses training's evaluation batches, so the AUC of ``--split test``
equals the ``test_auc`` that training reported for the same checkpoint.
"""

import argparse
import sys
from typing import Any, Dict, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchmetrics.functional.classification import binary_auroc

from torchrec_me.atomic import atomic_file
from torchrec_me.command import parse_with_overrides, run_command
from torchrec_me.config import ConfigError
from torchrec_me.distributed import checkpoint as ckpt
from torchrec_me.distributed.sharding import DistContext
from torchrec_me.evaluation import score_split
from torchrec_me.job import job_from_checkpoint
from torchrec_me.run_dir import check_output_file

SPLITS = ("train", "val", "test")


def predict(
    checkpoint: str, data: Optional[str], out: str, split: str = "test", batch_size: Optional[int] = None,
    ctx: Optional[DistContext] = None,
) -> Dict[str, Any]:  # fmt: skip
    """Collective: score ``split`` of the prepared dataset ``data`` (None: the dataset the
    checkpoint was trained on); rank 0 writes ``out``.

    Returns ``{"auc", "rows", "checkpoint", "split"}`` on every rank.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    check_output_file(out, "--out")
    path, _ = ckpt.resolve_checkpoint(checkpoint)
    job = job_from_checkpoint(path, ctx, data_path=data)
    if job.family.sequential:
        raise ConfigError(f"{path} is a sequential ({job.cfg.model.backbone}) checkpoint; predict scores CTR models")
    scores = score_split(job.model, job.dataset, job.ctx, batch_size or job.cfg.train.eval_batch_size, split)
    if job.ctx.rank == 0:
        _write_scores(out, scores.rows, scores.labels, scores.logits)
    auc = float(binary_auroc(torch.sigmoid(scores.logits), scores.labels.long()))
    return {"auc": auc, "rows": int(scores.rows.numel()), "checkpoint": str(path), "split": split}


def _write_scores(out: str, rows: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> None:
    order = torch.argsort(rows)
    table = pa.table({
        "row": pa.array(rows[order].cpu().numpy()),
        "label": pa.array(labels[order].cpu().numpy().astype("int8")),
        "logit": pa.array(logits[order].cpu().numpy()),
        "score": pa.array(torch.sigmoid(logits[order]).cpu().numpy()),
    })  # fmt: skip
    with atomic_file(out) as tmp:
        pq.write_table(table, tmp)


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint dir, or a run dir (its newest checkpoint)")
    parser.add_argument("--data", default=None,
                        help="a dataset written by `torchrec-me prepare` (dir or URI); default: the dataset the "
                             "run was trained on, synthetic included, from its saved config")  # fmt: skip
    parser.add_argument("--out", required=True, help="Parquet file to write (row, label, logit, score)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to score (default test)")
    parser.add_argument("--batch-size", type=int, default=None, help="per-rank batch (default: the run's eval batch)")


def run_from_args(args: argparse.Namespace) -> int:
    def job() -> None:
        result = predict(args.checkpoint, args.data, args.out, args.split, args.batch_size)
        if torch.distributed.get_rank() == 0:
            print(f"scored {result['rows']} {result['split']} rows with {result['checkpoint']}: "
                  f"auc {result['auc']:.4f} -> {args.out}")  # fmt: skip

    return run_command(job)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="torchrec-me predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_predict_arguments(parser)
    return run_from_args(parse_with_overrides(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
