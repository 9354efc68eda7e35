"""The training job: build, plan, shard, train through TrainPipelineSparseDist, evaluate.

``python -m torchrec_me.train [--config FILE] [KEY=VALUE ...]`` is the same entry point
as ``torchrec-me train``, for ``torchrun --nproc_per_node N -m torchrec_me.train``.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torchmetrics.classification import BinaryAUROC
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from torchrec_me.config import Config, ConfigError, dump_config, load_config
from torchrec_me.data import build_dataset
from torchrec_me.distributed.sharding import (
    DistContext,
    apply_sparse_optimizer,
    build_optimizer,
    init_distributed,
    plan_and_shard,
)
from torchrec_me.models import MultiEmbeddingTrain, build_model


def _write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Any, ctx: DistContext, batch_size: int, split: str = "val") -> Dict[str, float]:
    """AUC and logloss of ``model`` (and of the teacher, when the data has one) on ``split``.

    Every rank scores its share; AUC states are gathered by torchmetrics and the
    logloss sums are all-reduced, so all ranks return the same numbers.
    """
    was_training = model.training
    model.eval()
    auc, oracle = BinaryAUROC().to(ctx.device), BinaryAUROC().to(ctx.device)
    sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # loss, oracle loss, count
    has_oracle = True
    for batch, teacher_prob, real in dataset.eval_batches(split, ctx.rank, ctx.world_size, batch_size):
        batch = batch.to(ctx.device)
        _, (_, logits, labels) = model(batch)
        if not real:
            continue
        labels = labels.float()
        sums[0] += torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum").double()
        sums[2] += labels.numel()
        auc.update(torch.sigmoid(logits), labels.int())
        if teacher_prob is None:
            has_oracle = False
            continue
        teacher_prob = teacher_prob.to(ctx.device)
        sums[1] += torch.nn.functional.binary_cross_entropy(teacher_prob, labels, reduction="sum").double()
        oracle.update(teacher_prob, labels.int())
    dist.all_reduce(sums)
    out = {"auc": float(auc.compute()), "logloss": float(sums[0] / sums[2]), "samples": int(sums[2])}
    if has_oracle:
        out["oracle_auc"] = float(oracle.compute())
        out["oracle_logloss"] = float(sums[1] / sums[2])
    model.train(was_training)
    return out


def train(cfg: Config, run_dir: Optional[str] = None, metrics_out: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Run one training job in this process (one rank of it) and return its metrics."""
    ctx = init_distributed(cfg.train.device)
    is_rank0 = ctx.rank == 0
    torch.manual_seed(cfg.train.seed)
    dataset = build_dataset(cfg.data)
    model = build_model(cfg.model, dataset.feature_names, dataset.num_embeddings, device=torch.device("meta"))
    train_module = MultiEmbeddingTrain(model)
    apply_sparse_optimizer(train_module, cfg.train.sparse_optimizer, cfg.train.sparse_lr)
    dmp, plan = plan_and_shard(train_module, ctx, cfg.train.batch_size)
    if is_rank0:
        print(f"sharding plan (world size {ctx.world_size}, {ctx.device.type}):\n{plan}", flush=True)
    optimizer = build_optimizer(dmp, cfg.train)
    pipeline = TrainPipelineSparseDist(dmp, optimizer, ctx.device)

    rd = Path(run_dir) if run_dir else None
    if rd is not None and is_rank0:
        rd.mkdir(parents=True, exist_ok=True)
        (rd / "config.yaml").write_text(dump_config(cfg))
    log_file = open(rd / "train_log.jsonl", "a") if rd is not None and is_rank0 else None

    global_batch = cfg.train.batch_size * ctx.world_size
    batches = iter(dataset.train_batches(ctx.rank, ctx.world_size, cfg.train.batch_size, 0, cfg.train.steps))
    bar = tqdm(total=cfg.train.steps, disable=not (progress and is_rank0), desc="train", unit="step", file=sys.stderr)
    steps, loss_ema = 0, math.nan
    start = time.perf_counter()
    try:
        while True:
            try:
                loss, _, _ = pipeline.progress(batches)
            except StopIteration:
                break
            steps += 1
            if steps % cfg.train.log_every == 0 or steps == cfg.train.steps:
                value = float(loss)
                loss_ema = value if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * value
                rate = steps * global_batch / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss_ema:.4f}", samples_per_s=f"{rate:,.0f}")
                bar.update(steps - bar.n)
                if log_file is not None:
                    log_file.write(json.dumps({"step": steps, "loss": value, "samples_per_s": rate}) + "\n")
                    log_file.flush()
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    elapsed = time.perf_counter() - start
    pipeline.detach()

    val = evaluate(dmp, dataset, ctx, cfg.train.eval_batch_size)
    metrics: Dict[str, Any] = {
        "val_auc": val["auc"],
        "val_logloss": val["logloss"],
        "val_samples": val["samples"],
        "oracle_auc": val.get("oracle_auc"),
        "oracle_logloss": val.get("oracle_logloss"),
        "train_samples_per_s": steps * global_batch / elapsed if elapsed > 0 else 0.0,
        "train_seconds": elapsed,
        "steps": steps,
        "world_size": ctx.world_size,
        "num_sets": cfg.model.num_sets,
        "embedding_dim": cfg.model.embedding_dim,
        "set_dims": cfg.model.dims(),
        "backbone": cfg.model.backbone,
        "dataset": cfg.data.name,
        "device": ctx.device.type,
    }
    if metrics["oracle_auc"] is not None:
        metrics["oracle_lift_fraction"] = (val["auc"] - 0.5) / (val["oracle_auc"] - 0.5)
    if is_rank0:
        print(
            f"validation: auc {val['auc']:.4f}  logloss {val['logloss']:.4f}"
            + (f"  (oracle auc {val['oracle_auc']:.4f}, lift recovered {metrics['oracle_lift_fraction']:.1%})" if "oracle_auc" in val else "")
            + f"  | {metrics['train_samples_per_s']:,.0f} train samples/s",
            flush=True,
        )
        if rd is not None:
            _write_json_atomic(rd / "metrics.json", metrics)
        if metrics_out:
            _write_json_atomic(Path(metrics_out), metrics)
    return metrics


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.num_sets=1")
    parser.add_argument("--config", help="YAML config file (sections data, model, train)")
    parser.add_argument("--run-dir", help="directory for the resolved config, logs and metrics")
    parser.add_argument("--metrics-out", help="write the final metrics JSON here")
    parser.add_argument("--no-progress", action="store_true", help="disable the progress bar")


def run_from_args(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"torchrec-me: error: {e}", file=sys.stderr)
        return 2
    try:
        train(cfg, run_dir=args.run_dir, metrics_out=args.metrics_out, progress=not args.no_progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="torchrec-me train", description="Train a multi-embedding model.")
    add_train_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
