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
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
from torchmetrics.functional.classification import binary_auroc
from torchrec.datasets.utils import Batch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from torchrec_me.analysis.frequency import IdFrequencyTracker
from torchrec_me.analysis.report import collapse_report, ia_log_record
from torchrec_me.config import Config, ConfigError, dump_config, load_config
from torchrec_me.data import build_dataset
from torchrec_me.distributed import checkpoint as ckpt
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


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's 1-D tensor (of possibly different lengths) on all ranks."""
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([t.numel()], device=t.device))
    longest = int(max(s.item() for s in sizes))
    padded = [torch.zeros(longest, dtype=t.dtype, device=t.device) for _ in sizes]
    dist.all_gather(padded, torch.nn.functional.pad(t, (0, longest - t.numel())))
    return torch.cat([p[: int(s.item())] for p, s in zip(padded, sizes)])


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Any, ctx: DistContext, batch_size: int, split: str = "val") -> Dict[str, float]:
    """AUC and logloss of ``model`` (and of the teacher, when the data has one) on ``split``.

    Every rank scores its share; scores and labels are gathered so that all ranks
    compute the same exact AUC (torchmetrics' binary AUROC) and logloss.
    """
    was_training = model.training
    model.eval()
    scores, teacher, labels = [], [], []
    for batch, teacher_prob, real in dataset.eval_batches(split, ctx.rank, ctx.world_size, batch_size):
        _, (_, logits, batch_labels) = model(batch.to(ctx.device))
        if real:
            scores.append(logits.float())
            labels.append(batch_labels.float())
            if teacher_prob is not None:
                teacher.append(teacher_prob.to(ctx.device))
    empty = torch.zeros(0, device=ctx.device)
    logits = gather_cat(torch.cat(scores) if scores else empty)
    target = gather_cat(torch.cat(labels) if labels else empty)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    out = {
        "auc": float(binary_auroc(torch.sigmoid(logits), target.long())),
        "logloss": float(bce(logits.double(), target.double())),
        "samples": int(target.numel()),
    }
    if getattr(dataset, "has_teacher", False):
        prob = gather_cat(torch.cat(teacher) if teacher else empty).double()
        out["oracle_auc"] = float(binary_auroc(prob, target.long()))
        out["oracle_logloss"] = float(torch.nn.functional.binary_cross_entropy(prob, target.double()))
    model.train(was_training)
    return out


def _tracked(batches: Iterator[Batch], tracker: IdFrequencyTracker) -> Iterator[Batch]:
    for batch in batches:
        tracker.update(batch.sparse_features)
        yield batch


class _Loop:
    """Mutable state of one training job: what a checkpoint must carry besides tensors."""

    def __init__(self) -> None:
        self.step = 0
        self.train_seconds = 0.0
        self.best_auc = -math.inf
        self.best_step: Optional[int] = None
        self.bad_evals = 0
        self.stopped_early = False
        self.last_val: Optional[Dict[str, float]] = None
        self.last_val_step = -1

    def meta(self) -> Dict[str, Any]:
        saved = ("step", "train_seconds", "best_auc", "best_step", "bad_evals", "stopped_early")
        return {k: getattr(self, k) for k in saved} | {"reader_position": self.step}

    def restore(self, meta: Dict[str, Any]) -> None:
        for key in ("step", "train_seconds", "best_auc", "best_step", "bad_evals", "stopped_early"):
            setattr(self, key, meta[key])


def _boundaries(cfg: Config, start: int) -> List[int]:
    """Steps after ``start`` where training pauses (validate, checkpoint, IA), and the end."""
    stops = {cfg.train.steps}
    for every in (cfg.train.eval_every, cfg.train.checkpoint_every, cfg.train.ia_every):
        if every:
            stops.update(range(every, cfg.train.steps, every))
    return sorted(s for s in stops if s > start)


def train(
    cfg: Config,
    run_dir: Optional[str] = None,
    metrics_out: Optional[str] = None,
    progress: bool = True,
    resume: bool = False,
) -> Dict[str, Any]:
    """Run one training job in this process (one rank of it) and return its metrics.

    Training runs through ``TrainPipelineSparseDist`` in segments that end at
    validation and checkpoint steps. With a run dir, checkpoints are written every
    ``train.checkpoint_every`` steps and at the end, and ``resume`` continues from the
    newest complete one exactly (model, both optimizers, RNG and reader position).
    """
    ctx = init_distributed(cfg.train.device)
    is_rank0 = ctx.rank == 0
    rd = Path(run_dir) if run_dir else None
    if rd is None and (resume or cfg.train.checkpoint_every):
        raise ConfigError("--resume and train.checkpoint_every need --run-dir")
    torch.manual_seed(cfg.train.seed)
    dataset = build_dataset(cfg.data)
    model = build_model(
        cfg.model, dataset.feature_names, dataset.num_embeddings, device=torch.device("meta"), num_dense=dataset.num_dense
    )
    train_module = MultiEmbeddingTrain(model)
    apply_sparse_optimizer(train_module, cfg.train.sparse_optimizer, cfg.train.sparse_lr)
    dmp, plan = plan_and_shard(train_module, ctx, cfg.train.batch_size)
    if is_rank0:
        print(f"sharding plan (world size {ctx.world_size}, {ctx.device.type}):\n{plan}", flush=True)
    optimizer = build_optimizer(dmp, cfg.train)
    # Counts every id read (the trained-rows mask of the collapse analysis) and refuses
    # ids outside a table before they reach FBGEMM.
    tracker = IdFrequencyTracker(dict(zip(dataset.feature_names, dataset.num_embeddings)), device=ctx.device)

    loop = _Loop()
    resumed_from = None
    if resume:
        latest = ckpt.latest_checkpoint(rd)
        if latest is None:
            if is_rank0:
                print(f"--resume: no complete checkpoint in {rd}, starting from step 0", flush=True)
        else:
            loop.restore(ckpt.load_checkpoint(latest, dmp, optimizer))
            counts = ckpt.read_extra(latest).get("id_counts")
            if counts is not None and is_rank0:  # global counts live on rank 0 only
                tracker.add_counts(counts)
            resumed_from = str(latest)
            if is_rank0:
                print(f"resumed from {latest} at step {loop.step}", flush=True)
    if rd is not None and is_rank0:
        rd.mkdir(parents=True, exist_ok=True)
        (rd / "config.yaml").write_text(dump_config(cfg))
    log = open(rd / "train_log.jsonl", "a") if rd is not None and is_rank0 else None

    def write_log(row: Dict[str, Any]) -> None:
        if log is not None:
            log.write(json.dumps(row) + "\n")
            log.flush()

    def save(best: bool = False) -> None:
        if rd is None:
            return
        meta = {**loop.meta(), "config": cfg.to_dict()}
        extra = {"id_counts": tracker.synced().flat_counts().cpu()}
        ckpt.save_checkpoint(ckpt.step_path(rd, loop.step, best=best), dmp, optimizer, meta, extra)
        ckpt.prune_checkpoints(rd, cfg.train.keep_checkpoints)

    global_batch = cfg.train.batch_size * ctx.world_size
    bar = tqdm(
        total=cfg.train.steps, initial=loop.step, disable=not (progress and is_rank0),
        desc="train", unit="step", file=sys.stderr,
    )  # fmt: skip
    loss_ema = math.nan
    ia_postfix: Dict[str, str] = {}
    ia_seconds = 0.0
    ia_log = open(rd / "ia_log.jsonl", "a") if rd is not None and is_rank0 and cfg.train.ia_every else None
    try:
        for stop in _boundaries(cfg, loop.step):
            if loop.stopped_early:
                break
            pipeline = TrainPipelineSparseDist(dmp, optimizer, ctx.device)
            batches = _tracked(
                dataset.train_batches(ctx.rank, ctx.world_size, cfg.train.batch_size, loop.step, stop), tracker
            )
            seg_start, seg_step = time.perf_counter(), loop.step
            while True:
                try:
                    loss, _, _ = pipeline.progress(batches)
                except StopIteration:
                    break
                loop.step += 1
                if loop.step % cfg.train.log_every == 0 or loop.step == stop:
                    value = float(loss)
                    loss_ema = value if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * value
                    elapsed = loop.train_seconds + time.perf_counter() - seg_start
                    rate = (loop.step - seg_step) * global_batch / max(time.perf_counter() - seg_start, 1e-9)
                    bar.set_postfix(loss=f"{loss_ema:.4f}", samples_per_s=f"{rate:,.0f}", **ia_postfix)
                    bar.update(loop.step - bar.n)
                    write_log({"step": loop.step, "loss": value, "samples_per_s": rate, "train_seconds": elapsed})
            loop.train_seconds += time.perf_counter() - seg_start
            pipeline.detach()

            if cfg.train.eval_every and (loop.step % cfg.train.eval_every == 0 or loop.step == cfg.train.steps):
                loop.last_val, loop.last_val_step = evaluate(dmp, dataset, ctx, cfg.train.eval_batch_size), loop.step
                write_log({"step": loop.step, **{f"val_{k}": v for k, v in loop.last_val.items()}})
                if loop.last_val["auc"] > loop.best_auc:
                    loop.best_auc, loop.best_step, loop.bad_evals = loop.last_val["auc"], loop.step, 0
                    save(best=True)
                else:
                    loop.bad_evals += 1
                    loop.stopped_early = loop.bad_evals >= cfg.train.early_stop_patience
                if is_rank0:
                    bar.write(f"step {loop.step}: val auc {loop.last_val['auc']:.4f} (best {loop.best_auc:.4f} at {loop.best_step})")
            if cfg.train.checkpoint_every and loop.step % cfg.train.checkpoint_every == 0 and loop.step < cfg.train.steps:
                save()
            if cfg.train.ia_every and (loop.step % cfg.train.ia_every == 0 or loop.step == cfg.train.steps):
                t0 = time.perf_counter()
                report = collapse_report(dmp, tracker, concat_fields=False)
                row = ia_log_record(loop.step, report, "trained_rows")
                row["ia_all_rows"] = ia_log_record(loop.step, report, "all_rows")["ia"]
                row["seconds"] = time.perf_counter() - t0
                ia_seconds += row["seconds"]
                if ia_log is not None:
                    ia_log.write(json.dumps(row) + "\n")
                    ia_log.flush()
                ia_postfix = {"ia": "/".join(f"{v:.1f}" for v in row["ia"].values() if v is not None)}
    finally:
        bar.close()
        for f in (log, ia_log):
            if f is not None:
                f.close()

    if loop.last_val_step != loop.step:
        loop.last_val = evaluate(dmp, dataset, ctx, cfg.train.eval_batch_size)
    val = loop.last_val
    assert val is not None
    save()
    metrics: Dict[str, Any] = {
        "val_auc": val["auc"],
        "val_logloss": val["logloss"],
        "val_samples": val["samples"],
        "oracle_auc": val.get("oracle_auc"),
        "oracle_logloss": val.get("oracle_logloss"),
        "train_samples_per_s": (loop.step * global_batch / loop.train_seconds) if loop.train_seconds > 0 else 0.0,
        "train_seconds": loop.train_seconds,
        "steps": loop.step,
        "world_size": ctx.world_size,
        "num_sets": cfg.model.num_sets,
        "embedding_dim": cfg.model.embedding_dim,
        "set_dims": cfg.model.dims(),
        "backbone": cfg.model.backbone,
        "dataset": cfg.data.name,
        "device": ctx.device.type,
        "resumed_from": resumed_from,
        "ia_seconds": ia_seconds,
    }
    if metrics["oracle_auc"] is not None:
        metrics["oracle_lift_fraction"] = (val["auc"] - 0.5) / (val["oracle_auc"] - 0.5)
    if cfg.train.eval_every:
        # The paper's protocol: report the test AUC of the best validation checkpoint.
        best = ckpt.best_checkpoint(rd) if rd is not None else None
        if best is not None:
            ckpt.load_checkpoint(best, dmp)
        test = evaluate(dmp, dataset, ctx, cfg.train.eval_batch_size, split="test")
        metrics.update(
            best_step=loop.best_step, best_val_auc=loop.best_auc, stopped_early=loop.stopped_early,
            test_auc=test["auc"], test_logloss=test["logloss"],
        )  # fmt: skip
    if is_rank0:
        print(
            f"validation: auc {val['auc']:.4f}  logloss {val['logloss']:.4f}"
            + (f"  (oracle auc {val['oracle_auc']:.4f}, lift recovered {metrics['oracle_lift_fraction']:.1%})" if "oracle_auc" in val else "")
            + f"  | {metrics['train_samples_per_s']:,.0f} train samples/s",
            flush=True,
        )
        if "test_auc" in metrics:
            print(f"test (best checkpoint, step {loop.best_step}): auc {metrics['test_auc']:.4f}", flush=True)
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
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --run-dir")
    parser.add_argument("--no-progress", action="store_true", help="disable the progress bar")


def run_from_args(args: argparse.Namespace) -> int:
    warnings.filterwarnings("ignore", message=".*DTensor instead.*")  # torchrec's ShardedTensor
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"torchrec-me: error: {e}", file=sys.stderr)
        return 2
    try:
        train(cfg, run_dir=args.run_dir, metrics_out=args.metrics_out, progress=not args.no_progress, resume=args.resume)
    except ConfigError as e:
        print(f"torchrec-me: error: {e}", file=sys.stderr)
        return 2
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
