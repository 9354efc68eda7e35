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
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torchmetrics.functional.classification import binary_auroc

from torchrec_me.analyze import resolve_checkpoint
from torchrec_me.config import ConfigError, config_from_dict
from torchrec_me.data import build_dataset
from torchrec_me.data.store import DatasetError
from torchrec_me.distributed import checkpoint as ckpt
from torchrec_me.distributed.sharding import DistContext, init_distributed
from torchrec_me.train import gather_cat


def _check_compatible(trained: Any, scored: Any, data: str) -> None:
    """The dataset must have the tables the checkpoint was trained with."""
    a = list(zip(trained.feature_names, trained.num_embeddings))
    b = list(zip(scored.feature_names, scored.num_embeddings))
    if a != b or trained.num_dense != scored.num_dense:
        raise ConfigError(
            f"--data {data!r} does not match the checkpoint's dataset: its features/vocabulary sizes "
            f"{b[:3]}... (and {scored.num_dense} dense) differ from the trained {a[:3]}... "
            f"(and {trained.num_dense} dense); score data prepared with the same vocabularies"
        )


def predict(
    checkpoint: str, data: str, out: str, split: str = "test", batch_size: Optional[int] = None,
    ctx: Optional[DistContext] = None,
) -> Dict[str, Any]:  # fmt: skip
    """Collective: score ``split`` of the prepared dataset ``data``; rank 0 writes ``out``.

    Returns ``{"auc", "rows", "checkpoint", "split"}`` on every rank.
    """
    path, _ = resolve_checkpoint(checkpoint)
    ctx = ctx or init_distributed("auto")
    cfg = config_from_dict(ckpt.read_meta(path)["config"], origin=f"{path}/{ckpt.META}")
    trained = build_dataset(cfg.data)
    cfg.data.name, cfg.data.path = "parquet", data
    try:
        dataset = build_dataset(cfg.data)
    except DatasetError as e:
        raise ConfigError(f"--data: {e}") from e
    _check_compatible(trained, dataset, data)
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split must be train, val or test, got {split!r}")
    batch_size = batch_size or cfg.train.eval_batch_size

    dmp = ckpt.load_sharded_model(path, cfg, dataset, ctx)
    dmp.eval()

    rows, logits, labels = [], [], []
    ranges = dataset.eval_ranges(split, ctx.rank, ctx.world_size, batch_size)
    for (batch, _, real), (lo, hi, _) in zip(dataset.eval_batches(split, ctx.rank, ctx.world_size, batch_size), ranges):
        with torch.no_grad():
            _, (_, batch_logits, batch_labels) = dmp(batch.to(ctx.device))
        if real:
            rows.append(torch.arange(lo, hi, device=ctx.device))
            logits.append(batch_logits.float())
            labels.append(batch_labels.float())
    empty = torch.zeros(0, device=ctx.device)
    all_rows = gather_cat(torch.cat(rows) if rows else empty.long())
    all_logits = gather_cat(torch.cat(logits) if logits else empty)
    all_labels = gather_cat(torch.cat(labels) if labels else empty)
    auc = float(binary_auroc(torch.sigmoid(all_logits), all_labels.long()))
    if ctx.rank == 0:
        order = torch.argsort(all_rows)
        table = pa.table({
            "row": pa.array(all_rows[order].cpu().numpy()),
            "label": pa.array(all_labels[order].cpu().numpy().astype("int8")),
            "logit": pa.array(all_logits[order].cpu().numpy()),
            "score": pa.array(torch.sigmoid(all_logits[order]).cpu().numpy()),
        })  # fmt: skip
        target = Path(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, target)
    return {"auc": auc, "rows": int(all_rows.numel()), "checkpoint": str(path), "split": split}


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint dir, or a run dir (its newest checkpoint)")
    parser.add_argument("--data", required=True, help="a dataset written by `torchrec-me prepare` (dir or URI)")
    parser.add_argument("--out", required=True, help="Parquet file to write (row, label, logit, score)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to score (default test)")
    parser.add_argument("--batch-size", type=int, default=None, help="per-rank batch (default: the run's eval batch)")


def run_from_args(args: argparse.Namespace) -> int:
    warnings.filterwarnings("ignore", message=".*DTensor instead.*")
    try:
        result = predict(args.checkpoint, args.data, args.out, args.split, args.batch_size)
        if dist.get_rank() == 0:
            print(f"scored {result['rows']} {result['split']} rows with {result['checkpoint']}: "
                  f"auc {result['auc']:.4f} -> {args.out}")  # fmt: skip
    except (ConfigError, DatasetError, FileNotFoundError) as e:
        print(f"torchrec-me: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="torchrec-me predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_predict_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
