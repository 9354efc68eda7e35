"""The parts of a training run, each owning one job; ``train.train`` drives them.

* :class:`LoopState`: what a checkpoint carries besides tensors (step, timing, best).
* :class:`Checkpointer`: saving, resuming and the best checkpoint.
* :class:`Validator`: validation, early stopping and the test of the best checkpoint.
* :class:`LiveIA`: information abundance of the live tables during training.
* :class:`Progress`: the progress bar and the training log.
* :func:`run_segment`: ``TrainPipelineSparseDist`` over the steps up to the next pause.
"""

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from torchrec.distributed.train_pipeline import TrainPipelineBase, TrainPipelineSparseDist
from tqdm import tqdm

from torchrec_me.analysis.frequency import IdFrequencyTracker
from torchrec_me.analysis.report import collapse_report, ia_log_record
from torchrec_me.config import RESUMABLE_KEYS, Config, ConfigError, changed_keys
from torchrec_me.distributed import checkpoint as ckpt
from torchrec_me.distributed.sharding import restart_attempt, sync_batchnorm_stats
from torchrec_me.job import Job, dataset_signature
from torchrec_me.run_dir import RunDir


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where."""


class LoopState:
    """Mutable state of one run: what a checkpoint must carry besides tensors."""

    SAVED = ("step", "train_seconds", "best_value", "best_step", "bad_evals", "stopped_early")

    def __init__(self) -> None:
        self.step = 0
        self.train_seconds = 0.0
        self.best_value = -math.inf  # of the family's primary validation metric
        self.best_test: Optional[Dict[str, float]] = None  # the reference protocol's best
        self.best_step: Optional[int] = None
        self.bad_evals = 0
        self.stopped_early = False
        self.last_val: Optional[Dict[str, float]] = None
        self.last_val_step = -1
        self.last_checkpoint: Optional[str] = None

    def meta(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self.SAVED} | {"reader_position": self.step, "best_test": self.best_test}

    def restore(self, meta: Dict[str, Any]) -> None:
        meta = {"best_value": meta.get("best_auc"), **meta}  # checkpoints from before the rename
        for key in self.SAVED:
            setattr(self, key, meta[key])
        self.best_test = meta.get("best_test")


def boundaries(cfg: Config, start: int) -> List[int]:
    """Steps after ``start`` where training pauses (validate, checkpoint, IA), and the end."""
    stops = {cfg.train.steps}
    for every in (cfg.train.eval_every, cfg.train.checkpoint_every, cfg.train.ia_every):
        if every:
            stops.update(range(every, cfg.train.steps, every))
    return sorted(s for s in stops if s > start)


def _due(every: int, step: int, last: int) -> bool:
    return bool(every) and (step % every == 0 or step == last)


def resume_config(cfg: Config, run_dir: Path, world_size: int, say: Any) -> "tuple[Config, Optional[Path]]":
    """The config a ``--resume`` continues with, and the checkpoint it continues from.

    The newest intact checkpoint's model and data config must equal ``cfg`` (only
    :data:`RESUMABLE_KEYS` may change). At another world size the global batch is kept,
    so the reader's global sample stream continues where it stopped: the per-rank batch
    becomes the saved global batch over the new world size (refused when it does not
    divide), unless ``train.keep_per_rank_batch`` keeps the per-rank batch (the global
    batch, and with it the sample order, then changes).
    """
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None:
        if ckpt.list_checkpoints(run_dir):
            raise ckpt.CorruptCheckpointError(f"--resume: no checkpoint in {run_dir} is intact (see the warnings)")
        say(f"attempt {restart_attempt()}: --resume: no complete checkpoint in {run_dir}, starting from step 0")
        return cfg, None
    meta = ckpt.read_meta(latest)
    saved, saved_ws = meta["config"], int(meta.get("world_size", world_size))
    if saved_ws != world_size and not cfg.train.keep_per_rank_batch:
        global_batch = saved["train"]["batch_size"] * saved_ws
        if global_batch % world_size:
            raise ConfigError(
                f"--resume: checkpoint {latest} was trained at world size {saved_ws} with a global batch of "
                f"{global_batch}, which {world_size} ranks cannot split evenly; resume on a divisor of it, or set "
                "train.keep_per_rank_batch=true (the global batch and the sample order then change)"
            )
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=global_batch // world_size))
        say(f"world size {saved_ws} -> {world_size}: per-rank batch {cfg.train.batch_size}, global batch {global_batch} kept")
    elif saved_ws != world_size:
        say(f"world size {saved_ws} -> {world_size}: train.keep_per_rank_batch keeps the per-rank batch "
            f"{cfg.train.batch_size}; the global batch and the sample order change")  # fmt: skip
    ignore = {"train.batch_size"} if saved_ws != world_size else set()
    changed = [k for k in changed_keys(saved, cfg) if k not in ignore]
    if changed:
        raise ConfigError(
            f"--resume: the config differs from checkpoint {latest} in {', '.join(changed)}; only "
            f"{', '.join(sorted(RESUMABLE_KEYS))} may change on resume"
        )
    return cfg, latest


class Checkpointer:
    """Writes and reads the run's checkpoints (nothing without a run dir).

    Args:
        job (Job): the sharded model and optimizers to save.
        run (RunDir): where checkpoints go.
        state (LoopState): saved as the checkpoint's meta.
        tracker (IdFrequencyTracker): its global id counts are saved beside the tensors.
    """

    def __init__(self, job: Job, run: RunDir, state: LoopState, tracker: IdFrequencyTracker) -> None:
        self.job, self.run, self.state, self.tracker = job, run, state, tracker

    def save(self, best: bool = False) -> None:
        if self.run.path is None:
            return
        sync_batchnorm_stats(self.job.model)
        meta = {**self.state.meta(), "config": self.job.cfg.to_dict(),
                "dataset": dataset_signature(self.job.family, self.job.dataset)}  # fmt: skip
        extra = {"id_counts": self.tracker.synced().flat_counts().cpu()}
        path = ckpt.save_checkpoint(
            ckpt.step_path(self.run.path, self.state.step, best=best), self.job.model, self.job.optimizer, meta, extra
        )
        self.state.last_checkpoint = str(path)
        ckpt.prune_checkpoints(self.run.path, self.job.cfg.train.keep_checkpoints, just_written=path)

    def save_if_due(self) -> None:
        every, steps = self.job.cfg.train.checkpoint_every, self.job.cfg.train.steps
        if every and self.state.step % every == 0 and self.state.step < steps:
            self.save()

    def resume(self, latest: Optional[Path], say: Any) -> Optional[str]:
        """Load checkpoint ``latest`` (from :func:`resume_config`), if any; returns its path."""
        if latest is None:
            return None
        self.state.restore(ckpt.load_checkpoint(latest, self.job.model, self.job.optimizer))
        counts = ckpt.read_extra(latest).get("id_counts")
        if counts is not None and self.job.ctx.rank == 0:  # global counts live on rank 0 only
            self.tracker.add_counts(counts)
        self.state.last_checkpoint = str(latest)
        say(f"attempt {restart_attempt()}: resumed from {latest} at step {self.state.step}")
        return str(latest)

    def load_best(self) -> bool:
        """Load the best checkpoint's weights; False when there is none (no run dir)."""
        best = ckpt.best_checkpoint(self.run.path) if self.run.path is not None else None
        if best is None:
            return False
        ckpt.load_checkpoint(best, self.job.model)
        return True


class Validator:
    """Validation every ``train.eval_every`` steps, early stopping on the family's primary
    metric (AUC, or NDCG@10 for sequential models), and the test at the end.

    Protocols (``train.eval_protocol``): ``honest`` reports the test metrics of the best
    validation checkpoint (the multi-embedding paper's protocol, and the default);
    ``reference`` evaluates the test split at every validation and reports its best, as
    the published HSTU numbers were obtained.

    Args:
        job (Job): the model and data to evaluate.
        state (LoopState): holds the best value and the early-stopping count.
        checkpoints (Checkpointer): saves each new best.
        progress (Progress): logs and prints each validation.
    """

    def __init__(self, job: Job, state: LoopState, checkpoints: Checkpointer, progress: "Progress") -> None:
        self.job, self.state, self.checkpoints, self.progress = job, state, checkpoints, progress
        self.metric = job.family.primary_metric
        self.reference = job.cfg.train.eval_protocol == "reference"

    def _evaluate(self, split: str) -> Dict[str, float]:
        job = self.job
        sync_batchnorm_stats(job.model)
        return job.family.evaluate(job.model, job.dataset, job.ctx, job.cfg, split)

    def validate_if_due(self) -> None:
        s, t = self.state, self.job.cfg.train
        if not _due(t.eval_every, s.step, t.steps):
            return
        s.last_val, s.last_val_step = self._evaluate("val"), s.step
        test = self._evaluate("test") if self.reference else None
        self.progress.log({"step": s.step, **{f"val_{k}": v for k, v in s.last_val.items()},
                           **{f"test_{k}": v for k, v in (test or {}).items()}})  # fmt: skip
        if s.last_val[self.metric] > s.best_value:
            s.best_value, s.best_step, s.bad_evals = s.last_val[self.metric], s.step, 0
            self.checkpoints.save(best=True)
        else:
            s.bad_evals += 1
            s.stopped_early = s.bad_evals >= t.early_stop_patience
        if test is not None and (s.best_test is None or test[self.metric] > s.best_test[self.metric]):
            s.best_test = test
        value = s.last_val[self.metric]
        self.progress.say(f"step {s.step}: val {self.metric} {value:.4f} (best {s.best_value:.4f} at {s.best_step})")

    def final(self) -> Dict[str, float]:
        """The validation metrics of the model as it is now."""
        if self.state.last_val_step != self.state.step or self.state.last_val is None:
            self.state.last_val, self.state.last_val_step = self._evaluate("val"), self.state.step
        return self.state.last_val

    def test(self) -> Dict[str, Any]:
        """Test metrics under the protocol; ``test_model`` says which model was measured:
        the best validation checkpoint, the final model (no run dir, so no checkpoint was
        kept), or the best test evaluation (reference protocol)."""
        s = self.state
        out: Dict[str, Any] = {"best_step": s.best_step, f"best_val_{self.metric}": s.best_value,
                               "stopped_early": s.stopped_early, "eval_protocol": self.job.cfg.train.eval_protocol}  # fmt: skip
        if self.reference and s.best_test is not None:
            return {**out, **{f"test_{k}": v for k, v in s.best_test.items()}, "test_model": "best_test_evaluation"}
        best = self.checkpoints.load_best()
        test = self._evaluate("test")
        return {**out, **{f"test_{k}": v for k, v in test.items()}, "test_model": "best_checkpoint" if best else "final"}


class LiveIA:
    """Information abundance of every live table every ``train.ia_every`` steps,
    appended to ``ia_log.jsonl`` and shown in the progress bar (sharded Gram: no table
    is gathered).

    Args:
        job (Job): the sharded model whose tables are analysed.
        tracker (IdFrequencyTracker): which rows training has read (trained rows).
        run (RunDir): receives the log rows.
    """

    def __init__(self, job: Job, tracker: IdFrequencyTracker, run: RunDir) -> None:
        self.job, self.tracker, self.run = job, tracker, run
        self.seconds = 0.0
        self.postfix: Dict[str, str] = {}
        self.last: Optional[Dict[str, Any]] = None

    def summary(self) -> Dict[str, Any]:
        """The last report for the run's metrics: ``ia_step``, ``ia_trained_rows`` and
        ``ia_all_rows`` (mean IA over each set's tables, by set), and their means over
        the sets, ``ia_mean_trained_rows`` and ``ia_mean_all_rows``; empty when IA is off."""
        if self.last is None:
            return {}
        out: Dict[str, Any] = {"ia_step": self.last["step"]}
        for name, by_set in (("trained_rows", self.last["ia"]), ("all_rows", self.last["ia_all_rows"])):
            values = [v for v in by_set.values() if v is not None]
            out[f"ia_{name}"] = by_set
            out[f"ia_mean_{name}"] = sum(values) / len(values) if values else None
        return out

    def report_if_due(self, step: int) -> None:
        every = self.job.cfg.train.ia_every
        if not _due(every, step, self.job.cfg.train.steps):
            return
        t0 = time.perf_counter()
        report = collapse_report(self.job.model, self.tracker, concat_fields=False)
        row = ia_log_record(step, report, "trained_rows")
        row["ia_all_rows"] = ia_log_record(step, report, "all_rows")["ia"]
        row["seconds"] = time.perf_counter() - t0
        self.seconds += row["seconds"]
        self.run.log_ia(row)
        self.last = row
        self.postfix = {"ia": "/".join(f"{v:.1f}" for v in row["ia"].values() if v is not None)}


class Progress:
    """The progress bar (rank 0), the training log, and the non-finite-loss check.

    Args:
        job (Job): gives the step count, batch size and rank.
        run (RunDir): receives the log rows.
        state (LoopState): the step and the last good checkpoint.
        enabled (bool): show the bar.
    """

    def __init__(self, job: Job, run: RunDir, state: LoopState, enabled: bool) -> None:
        self.job, self.run, self.state = job, run, state
        self.is_rank0 = job.ctx.rank == 0
        self.global_batch = job.cfg.train.batch_size * job.ctx.world_size
        self.loss_ema = math.nan
        self.postfix: Dict[str, str] = {}
        self.bar = tqdm(
            total=job.cfg.train.steps, initial=state.step, disable=not (enabled and self.is_rank0),
            desc="train", unit="step", file=sys.stderr,
        )  # fmt: skip

    def say(self, text: str) -> None:
        if self.is_rank0:
            self.bar.write(text, file=sys.stdout)
            sys.stdout.flush()

    def log(self, row: Dict[str, Any]) -> None:
        self.run.log(row)

    def step(self, loss: Any, seg_start: float, seg_step: int) -> None:
        """Log step ``state.step`` (a log step); raises TrainingError on a non-finite loss."""
        value = float(loss)
        if not math.isfinite(value):
            last = self.state.last_checkpoint or "none (no checkpoint was written)"
            raise TrainingError(f"non-finite training loss {value} at step {self.state.step}; last good checkpoint: {last}")
        self.loss_ema = value if math.isnan(self.loss_ema) else 0.9 * self.loss_ema + 0.1 * value
        now = time.perf_counter()
        rate = (self.state.step - seg_step) * self.global_batch / max(now - seg_start, 1e-9)
        self.bar.set_postfix(loss=f"{self.loss_ema:.4f}", samples_per_s=f"{rate:,.0f}", **self.postfix)
        self.bar.update(self.state.step - self.bar.n)
        elapsed = self.state.train_seconds + now - seg_start
        self.log({"step": self.state.step, "loss": value, "samples_per_s": rate, "train_seconds": elapsed})

    def close(self) -> None:
        self.bar.close()


def _tracked(batches: Iterator[Any], tracker: IdFrequencyTracker, features: Any) -> Iterator[Any]:
    for batch in batches:
        tracker.update(features(batch))
        yield batch


def make_pipeline(job: Job) -> Any:
    """``TrainPipelineSparseDist`` over the sharded tables; TorchRec's plain
    ``TrainPipelineBase`` when nothing is sharded (``adam_dense``: replicated tables,
    nothing to pipeline, and the sparse-dist pipeline cannot trace unsharded collections)."""
    if not job.plan.plan:
        return TrainPipelineBase(job.model, job.optimizer, job.ctx.device)
    return TrainPipelineSparseDist(job.model, job.optimizer, job.ctx.device, pipeline_postproc=job.family.pipeline_postproc)


def run_segment(job: Job, state: LoopState, tracker: IdFrequencyTracker, stop: int, progress: Progress) -> None:
    """Train steps ``state.step .. stop-1`` through :func:`make_pipeline`'s pipeline.

    Every batch passes the tracker first, which counts the ids read (the trained-rows
    mask of the collapse analysis) and refuses ids outside a table before FBGEMM sees them.
    """
    ctx, family = job.ctx, job.family
    pipeline = make_pipeline(job)
    batches = family.train_batches(job.dataset, job.cfg, ctx.rank, ctx.world_size, state.step, stop)
    batches = _tracked(batches, tracker, family.id_features)
    seg_start, seg_step = time.perf_counter(), state.step
    try:
        while True:
            try:
                loss, _, _ = pipeline.progress(batches)
            except StopIteration:
                break
            state.step += 1
            if state.step % job.cfg.train.log_every == 0 or state.step == stop:
                progress.step(loss, seg_start, seg_step)
    finally:
        state.train_seconds += time.perf_counter() - seg_start
        if hasattr(pipeline, "detach"):  # TrainPipelineBase never rewrites the model
            pipeline.detach()
