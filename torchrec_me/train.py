"""The training job: build, plan, shard, train through TrainPipelineSparseDist, evaluate.

``python -m torchrec_me.train [--config FILE] [KEY=VALUE ...]`` is the same entry point
as ``torchrec-me train``, for ``torchrun --nproc_per_node N -m torchrec_me.train``.
"""

import argparse
import math
import sys
from typing import Any, Dict, Optional, Sequence

from torchrec_me.analysis.frequency import IdFrequencyTracker
from torchrec_me.command import parse_with_overrides, run_command
from torchrec_me.config import ConfigError, dump_config
from torchrec_me.job import Job, build_job, load_job_config
from torchrec_me.distributed.sharding import init_distributed
from torchrec_me.loop import Checkpointer, LiveIA, LoopState, Progress, Validator, boundaries, resume_config, run_segment
from torchrec_me.retrieval import popularity_baseline
from torchrec_me.run_dir import RunDir, check_output_file
from torchrec_me.scaling.cost import training_flops


def train(
    cfg: Any,
    run_dir: Optional[str] = None,
    metrics_out: Optional[str] = None,
    progress: bool = True,
    resume: bool = False,
) -> Dict[str, Any]:
    """Run one training job in this process (one rank of it) and return its metrics.

    Training runs through ``TrainPipelineSparseDist`` in segments that end at
    validation, checkpoint and live-IA steps. With a run dir, checkpoints are written
    every ``train.checkpoint_every`` steps and at the end, and ``resume`` continues from
    the newest complete one exactly (model, both optimizers, RNG and reader position).
    """
    if run_dir is None and (resume or cfg.train.checkpoint_every):
        raise ConfigError("--resume and train.checkpoint_every need --run-dir")
    check_output_file(metrics_out, "--metrics-out")
    ctx = init_distributed(cfg.train.device)
    run = RunDir(run_dir, is_writer=ctx.rank == 0)
    say = print if ctx.rank == 0 else (lambda text: None)
    latest = None
    if resume:
        cfg, latest = resume_config(cfg, run.path, ctx.world_size, say)  # type: ignore[arg-type]
    job = build_job(cfg, ctx)
    state = LoopState()
    tracker = IdFrequencyTracker(job.family.id_tables(job.dataset), device=job.ctx.device)
    checkpoints = Checkpointer(job, run, state, tracker)
    resumed_from = checkpoints.resume(latest, say)
    say(f"sharding plan (world size {job.ctx.world_size}, {job.ctx.device.type}):\n{job.plan}")
    bar = Progress(job, run, state, enabled=progress)
    run.write_config(dump_config(cfg))
    validator = Validator(job, state, checkpoints, bar)
    live_ia = LiveIA(job, tracker, run)
    try:
        for stop in boundaries(cfg, state.step):
            if state.stopped_early:
                break
            run_segment(job, state, tracker, stop, bar)
            validator.validate_if_due()
            checkpoints.save_if_due()
            live_ia.report_if_due(state.step)
            bar.postfix = live_ia.postfix
    finally:
        bar.close()
        run.close()
    val = validator.final()
    checkpoints.save()
    metrics = _metrics(job, state, val, resumed_from, live_ia.seconds)
    metrics.update(_cost(job, state, tracker), **live_ia.summary())
    # EMA (0.9) of the training loss at the log steps: the loss of the scaling fits.
    metrics["train_loss_ema"] = None if math.isnan(bar.loss_ema) else bar.loss_ema
    if cfg.train.eval_every:
        metrics.update(validator.test())
    _print_summary(job, metrics)
    run.write_metrics(metrics, also=metrics_out)
    return metrics


def _metrics(job: Job, state: LoopState, val: Dict[str, float], resumed_from: Optional[str], ia_seconds: float) -> Dict[str, Any]:
    cfg = job.cfg
    global_batch = cfg.train.batch_size * job.ctx.world_size
    metrics: Dict[str, Any] = {
        **FAMILY_METRICS[job.family.kind](job, val),
        "train_samples_per_s": (state.step * global_batch / state.train_seconds) if state.train_seconds > 0 else 0.0,
        "train_seconds": state.train_seconds,
        "steps": state.step,
        "world_size": job.ctx.world_size,
        "num_sets": cfg.model.num_sets,
        "embedding_dim": cfg.model.embedding_dim,
        "set_dims": cfg.model.dims(),
        "backbone": cfg.model.backbone,
        "dataset": job.dataset_name,
        "device": job.ctx.device.type,
        "resumed_from": resumed_from,
        "ia_seconds": ia_seconds,
    }
    return metrics


def _cost(job: Job, state: LoopState, tracker: IdFrequencyTracker) -> Dict[str, Any]:
    """Collective: parameter counts and training FLOPs (:mod:`torchrec_me.scaling.cost`),
    samples (CTR rows, sequences, ranking rows) and, for sequential models, tokens (item
    ids read) trained on."""
    cost = training_flops(job.cfg, job.dataset)
    samples = state.step * job.cfg.train.batch_size * job.ctx.world_size
    out: Dict[str, Any] = {"dense_params": cost["dense_params"], "sparse_params": cost["sparse_params"], "train_samples": samples}
    if job.family.sequential:
        out["train_tokens"] = tracker.synced().total_ids
    if "flops_per_token" in cost:
        out.update(train_flops_per_token=cost["flops_per_token"], train_flops=cost["flops_per_token"] * out["train_tokens"])
    else:
        out.update(train_flops_per_sample=cost["flops_per_sample"], train_flops=cost["flops_per_sample"] * samples)
    return out


def _ranking_metrics(job: Job, val: Dict[str, float]) -> Dict[str, Any]:
    """Validation metrics as the CTR models name them, GAUC, and the rows' make-up."""
    ds = job.dataset
    out: Dict[str, Any] = {f"val_{k}": v for k, v in val.items()}
    out.update(task="ranking", num_items=ds.num_items, num_users=ds.num_users, implicit_labels=ds.implicit,
               ranking_negatives=ds.negatives)  # fmt: skip
    return out


def _ctr_metrics(job: Job, val: Dict[str, float]) -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "val_auc": val["auc"], "val_logloss": val["logloss"], "val_samples": val["samples"],
        "oracle_auc": val.get("oracle_auc"), "oracle_logloss": val.get("oracle_logloss"),
    }  # fmt: skip
    if out["oracle_auc"] is not None:
        out["oracle_lift_fraction"] = (val["auc"] - 0.5) / (val["oracle_auc"] - 0.5)
    return out


def _sequential_metrics(job: Job, val: Dict[str, float]) -> Dict[str, Any]:
    """Validation metrics, the dataset's size, the popularity baseline's test metrics and,
    for synthetic data, the Bayes-optimal ranking's expected metrics."""
    ds, cfg = job.dataset, job.cfg
    out: Dict[str, Any] = {f"val_{k}": v for k, v in val.items()}
    out.update(num_items=ds.num_items, num_users=ds.num_users, exclude_history=cfg.train.exclude_history)
    out.update({f"popularity_test_{k}": v for k, v in popularity_baseline(ds, job.ctx, cfg, "test").items()})
    if hasattr(ds, "oracle_metrics"):
        for split in ("val", "test"):
            oracle = ds.oracle_metrics(split, exclude_seen=cfg.train.exclude_history)
            out.update({f"{split}_{k}": v for k, v in oracle.items()})
    return out


FAMILY_METRICS = {"ctr": _ctr_metrics, "retrieval": _sequential_metrics, "ranking": _ranking_metrics}


def _print_summary(job: Job, metrics: Dict[str, Any]) -> None:
    if job.ctx.rank != 0:
        return
    metric = job.family.primary_metric
    line = f"validation: {metric} {metrics[f'val_{metric}']:.4f}"
    if job.family.kind == "ranking":
        gauc = "n/a (one row per user)" if metrics["val_gauc"] is None else f"{metrics['val_gauc']:.4f}"
        line += f"  gauc {gauc}  logloss {metrics['val_logloss']:.4f}"
    elif job.family.sequential:
        line += f"  hr@10 {metrics['val_hr@10']:.4f}  (popularity test hr@10 {metrics['popularity_test_hr@10']:.4f}"
        line += f", oracle {metrics['val_oracle_hr@10']:.4f})" if "val_oracle_hr@10" in metrics else ")"
    else:
        line += f"  logloss {metrics['val_logloss']:.4f}"
        if metrics["oracle_auc"] is not None:
            line += f"  (oracle auc {metrics['oracle_auc']:.4f}, lift recovered {metrics['oracle_lift_fraction']:.1%})"
    print(line + f"  | {metrics['train_samples_per_s']:,.0f} train samples/s", flush=True)
    if f"test_{metric}" in metrics:
        which = {
            "best_checkpoint": f"best checkpoint, step {metrics['best_step']}",
            "final": f"final model, step {metrics['steps']}; no --run-dir, so no best checkpoint was kept",
            "best_test_evaluation": "reference protocol: the best test evaluation",
        }[metrics["test_model"]]
        print(f"test ({which}): {metric} {metrics[f'test_{metric}']:.4f}", flush=True)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.num_sets=1")
    parser.add_argument("--config", help="YAML config file (sections data, model, train)")
    parser.add_argument("--run-dir", help="directory for the resolved config, logs and metrics")
    parser.add_argument("--metrics-out", help="write the final metrics JSON here")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --run-dir")
    parser.add_argument("--no-progress", action="store_true", help="disable the progress bar")


def run_from_args(args: argparse.Namespace) -> int:
    def job() -> None:
        cfg = load_job_config(args.config, args.overrides)
        train(cfg, run_dir=args.run_dir, metrics_out=args.metrics_out, progress=not args.no_progress, resume=args.resume)

    return run_command(job)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="torchrec-me train", description="Train a multi-embedding model.")
    add_train_arguments(parser)
    return run_from_args(parse_with_overrides(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
