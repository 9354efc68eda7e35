"""Parquet reader throughput against training throughput (default ME-DCNv2, batch 1024).

Writes a synthetic file in Criteo's exact text format (label, I1..I13, C1..C26; Zipf
tokens over Criteo's vocabulary shapes scaled by ``--vocab-scale``) into a temporary
directory, prepares it with ``torchrec_me.data.prepare.criteo.prepare_criteo`` (the paper's 39
categorical fields), then measures

* the reader: batches/s of ``ParquetDataset.train_batches`` alone (rank 0 of 1), and
* training: steps/s of ``torchrec_me.train.train`` with the default model (ME-DCNv2,
  K=4, D=12) on the same dataset, reader included,

and prints one markdown table with both and their ratio. Nothing is kept unless
``--keep DIR`` is given.

    python benchmarks/reader.py                     # 300k rows, 1000 reader batches, 40 train steps
    python benchmarks/reader.py --rows 1000000 --train-steps 100
"""

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict

import numpy as np

from torchrec_me.atomic import atomic_file
from torchrec_me.config import DataConfig
from torchrec_me.data.prepare.common import PrepareOptions
from torchrec_me.data.prepare.criteo import prepare_criteo
from torchrec_me.data.parquet import ParquetDataset
from torchrec_me.data.synthetic import CRITEO_CARDINALITIES
from torchrec_me.job import load_job_config
from torchrec_me.train import train


def write_raw_criteo(path: Path, rows: int, vocab_scale: float, seed: int = 0) -> None:
    """``rows`` lines of Criteo's format: Zipf 8-hex tokens per C field, skewed ints, some empties."""
    rng = np.random.default_rng(seed)
    int_pool = np.array([""] + [str(v) for v in range(-3, 20000)])
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        for lo in range(0, rows, 100_000):
            n = min(100_000, rows - lo)
            cols = [rng.binomial(1, 0.25, n).astype(str)]
            for i in range(13):
                v = np.minimum(rng.zipf(1.6, n) - 4 + i, 19999)  # -3..: small values, a long tail
                v[rng.random(n) < 0.1] = -4  # empty
                cols.append(int_pool[v + 4])
            for c in range(26):
                card = max(4, int(CRITEO_CARDINALITIES[13 + c] * vocab_scale))
                rank = np.minimum(rng.zipf(1.2, n), card)
                tokens = np.char.zfill(np.char.mod("%x", (rank * 2654435761) % (1 << 32)), 8)
                tokens[rng.random(n) < 0.05] = ""
                cols.append(tokens)
            f.write("\n".join("\t".join(r) for r in zip(*cols)) + "\n")


def bench_reader(path: str, batch_size: int, batches: int) -> float:
    """Batches/s of the training stream, after 20 warm-up batches."""
    ds = ParquetDataset(DataConfig(name="parquet", path=path))
    it = ds.train_batches(0, 1, batch_size, 0, 20 + batches)
    for _ in range(20):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t0)


def bench_train(path: str, batch_size: int, steps: int) -> float:
    """Steps/s of the default model's training on ``path`` (the loop's own timing, no eval)."""
    cfg = load_job_config(overrides=[f"data.path={path}", f"train.steps={steps}", f"train.batch_size={batch_size}"])
    metrics = train(cfg, progress=False)
    return metrics["train_samples_per_s"] / batch_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=300_000, help="raw lines to generate (default 300000)")
    p.add_argument("--vocab-scale", type=float, default=0.05, help="Criteo's C vocabularies times this (default 0.05)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--reader-batches", type=int, default=1000)
    p.add_argument("--train-steps", type=int, default=40)
    p.add_argument("--keep", help="write the raw and prepared data here instead of a temporary directory")
    args = p.parse_args()

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="torchrec-me-reader-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        raw, out = tmp / "train.txt", tmp / "prepared"
        t0 = time.perf_counter()
        write_raw_criteo(raw, args.rows, args.vocab_scale)
        t1 = time.perf_counter()
        meta = prepare_criteo(str(raw), str(out), PrepareOptions(overwrite=True, summary=False))
        t2 = time.perf_counter()
        prep: Dict[str, float] = {
            "generate_s": t1 - t0, "prepare_s": t2 - t1,
            "prepare_rows_per_s": args.rows / (t2 - t1),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        }  # fmt: skip
        reader = bench_reader(str(out), args.batch_size, args.reader_batches)
        steps = bench_train(str(out), args.batch_size, args.train_steps)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    vocab = sum(f["vocab_size"] for f in meta["sparse_features"])
    print(
        f"\n{args.rows:,} synthetic Criteo lines, 39 categorical fields, "
        f"{vocab:,} table rows; prepare: {prep['prepare_s']:.1f}s ({prep['prepare_rows_per_s']:,.0f} rows/s, "
        f"two passes), peak RSS {prep['peak_rss_gib']:.2f} GiB; {os.cpu_count()} CPU cores\n"
    )
    print("| batch | reader batches/s | ME-DCNv2 train steps/s | reader / train |")
    print("|---|---|---|---|")
    print(f"| {args.batch_size} | {reader:,.1f} | {steps:,.2f} | {reader / steps:,.1f}x |")


if __name__ == "__main__":
    main()
