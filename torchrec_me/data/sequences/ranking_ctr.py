"""The ranking rows of a prepared sequence dataset as a CTR dataset, for the CTR models.

``torchrec-me prepare ranking-rows`` writes the rows the sequential ranker trains and is
evaluated on (:class:`~torchrec_me.data.sequences.ranking.RankingRows`, same
``max_seq_len``, label, negatives and seed) in the CTR layout of
:mod:`torchrec_me.data.prepare.output`, so a DCNv2 or DNN (SE or ME) sees the very same
examples, split and labels as the sequence model::

    torchrec-me prepare ranking-rows --input ml-100k-seq --output ml-100k-rank --max-seq-len 50
    torchrec-me train model=dcnv2-me-4x data.path=ml-100k-rank

Features of a row (a user u, the interaction at position p, and the candidate item):

* ``user_id``: the user's raw id;
* ``item_id``: the candidate's raw item id;
* ``history``: a bag of the user's ``max_seq_len - 1`` most recent items before p (the
  ranker's history tokens, pooled by the model's EmbeddingBag);
* ``history_liked`` (rated data only): the items of that history the user rated at least
  ``positive_rating``, the rating signal the ranker reads as action embeddings.

The sequence datasets keep no item-side attributes (MovieLens genres stay in the raw
files), so neither model sees any; the CTR rows add the user id, which the ranker does
not read. Splits are the ranker's: ``train`` every training example (interactions with
a history, times ``1 + negatives``), ``val`` and ``test`` each user's target of that
split. The training rows are written in one permutation seeded by ``seed`` (the CTR
reader shuffles within windows of row groups only, and the examples are user-major).
Vocabularies count every split, as the other converters do; with the default
``min_count=1`` no id is out of vocabulary.
"""

import argparse
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from torchrec_me.data.prepare.common import FeatureSpec, PrepareError, PrepareOptions, report_errors
from torchrec_me.data.prepare.destination import output_path
from torchrec_me.data.prepare.output import print_summary, write_tables
from torchrec_me.data.prepare.vocab import Vocab
from torchrec_me.data.sequences.dataset import SequenceDataset
from torchrec_me.data.sequences.layout import ITEMS_FILE, USERS_FILE
from torchrec_me.data.sequences.ranking import RankingOptions, RankingRows
from torchrec_me.data.store import join

DEFAULT_MAX_SEQ_LEN = 50
DEFAULT_ROW_GROUP_SIZE = 4096
Examples = Tuple[np.ndarray, np.ndarray, np.ndarray]  # users, positions, copies


def ranking_features(rated: bool) -> List[FeatureSpec]:
    """The columns of a ranking-rows dataset (``history_liked`` on rated data only)."""
    features = [
        FeatureSpec("user_id", "sparse", "user", "raw user id"),
        FeatureSpec("item_id", "sparse", "item", "raw item id of the candidate"),
        FeatureSpec("history", "bag", "items", "the max_seq_len - 1 most recent items before the candidate"),
    ]
    if rated:
        features.append(FeatureSpec("history_liked", "bag", "items", "history items rated >= positive_rating"))
    return features


def _bag(lengths: np.ndarray, values: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int32), pa.int32()))


def _columns(rows: RankingRows, examples: Examples, max_seq_len: int, rated: bool) -> Dict[str, Any]:
    """Dense-id columns of ``examples``: label, user, candidate, history bags (values, lengths)."""
    users, positions, copies = examples
    t = rows.reader.table
    index, hist_len = rows.history(users, positions, max_seq_len)
    candidates, labels = rows.candidates(users, positions, copies)
    cols: Dict[str, Any] = {"label": labels.astype(np.int8), "user_id": users, "item_id": candidates,
                            "history": (hist_len, t.items[index])}  # fmt: skip
    if rated:
        liked = t.ratings[index] >= rows.options.positive_rating
        row_of = np.repeat(np.arange(len(users)), hist_len)
        cols["history_liked"] = (np.bincount(row_of[liked], minlength=len(users)), t.items[index][liked])
    return cols


def _vocabularies(
    splits: Mapping[str, Dict[str, Any]], user_tokens: List[str], item_tokens: List[str], min_count: int
) -> Tuple[Dict[str, Vocab], Dict[str, np.ndarray]]:
    """A vocabulary per feature counted over every split, and its dense id -> vocab id table."""
    vocabs: Dict[str, Vocab] = {}
    tables: Dict[str, np.ndarray] = {}
    for name in splits["train"]:
        if name == "label":
            continue
        tokens = user_tokens if name == "user_id" else item_tokens
        counts = np.zeros(len(tokens), np.int64)
        for cols in splits.values():
            ids = cols[name][1] if isinstance(cols[name], tuple) else cols[name]
            counts += np.bincount(ids, minlength=len(tokens))
        seen = np.flatnonzero(counts)
        vocab = Vocab(name)
        vocab.add_counts([tokens[i] for i in seen], counts[seen].tolist())
        vocab.finalize(min_count)
        vocabs[name], tables[name] = vocab, vocab.lookup(tokens)
    return vocabs, tables


def _table(cols: Mapping[str, Any], lookups: Mapping[str, np.ndarray]) -> pa.Table:
    data: Dict[str, pa.Array] = {"label": pa.array(cols["label"])}
    for name, column in cols.items():
        if name == "label":
            continue
        if isinstance(column, tuple):
            data[name] = _bag(column[0], lookups[name][column[1]])
        else:
            data[name] = pa.array(lookups[name][column])
    return pa.table(data)


def prepare_ranking_rows(
    input_dir: str,
    output: str,
    options: Optional[PrepareOptions] = None,
    *,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    positive_rating: float = 4.0,
    negatives: int = -1,
    min_count: int = 1,
) -> Dict[str, Any]:
    """Write the ranking rows of the prepared sequence dataset ``input_dir`` as a CTR
    dataset at ``output``; returns its metadata.

    Args:
        input_dir (str): a ``prepare sequences`` output.
        output (str): the CTR dataset directory to create (atomically).
        options (Optional[PrepareOptions]): ``seed`` (the negatives and the training row
            order, as the ranker's ``data.seed``), ``row_group_size``, ``overwrite``.
        max_seq_len (int): the ranker's ``model.max_seq_len``: the history is the
            ``max_seq_len - 1`` most recent items.
        positive_rating (float): ``data.positive_rating``.
        negatives (int): ``data.ranking_negatives`` (-1: 1 on implicit data, 0 on rated).
        min_count (int): rarer ids share their field's out-of-vocabulary id.

    Raises:
        DatasetError: ``input_dir`` is not a prepared sequence dataset, or it yields no
            ranking row (see :class:`RankingRows`).
        PrepareError: a bad argument, or ``output`` exists without ``overwrite``.
    """
    options = options or PrepareOptions()
    started = time.perf_counter()
    if max_seq_len < 2:
        raise PrepareError(f"--max-seq-len must be >= 2 (history and candidate), got {max_seq_len}")
    if min_count < 1:
        raise PrepareError(f"--min-count must be >= 1, got {min_count}")
    output_path(output, options.overwrite, inputs=[input_dir])  # refuse a wrong output before reading
    dataset = SequenceDataset(input_dir)
    rows = RankingRows(dataset, RankingOptions(positive_rating, negatives, options.seed, max_seq_len))
    rated = not rows.implicit
    train = rows.train_examples()
    if len(train[0]) == 0:
        raise PrepareError(f"{input_dir}: no training interaction has a history, so there is no ranking row")
    order = np.random.default_rng(np.random.SeedSequence([options.seed, 0x2C7])).permutation(len(train[0]))
    examples = {"train": tuple(a[order] for a in train), **{s: rows.eval_examples(s) for s in ("val", "test")}}
    columns = {s: _columns(rows, ex, max_seq_len, rated) for s, ex in examples.items()}  # type: ignore[arg-type]
    user_tokens = pq.read_table(join(input_dir, USERS_FILE), columns=["token"])["token"].to_pylist()
    item_tokens = pq.read_table(join(input_dir, ITEMS_FILE), columns=["token"])["token"].to_pylist()
    vocabs, lookups = _vocabularies(columns, user_tokens, item_tokens, min_count)
    params = {
        "max_seq_len": max_seq_len, "positive_rating": positive_rating, "negatives": rows.negatives,
        "implicit": rows.implicit, "seed": options.seed, "min_count": min_count,
        "sequence_split": dataset.metadata.get("split", {}).get("mode"),
    }  # fmt: skip
    source = {"path": os.path.abspath(input_dir), "fingerprint": dataset.fingerprint}
    path, meta = write_tables(
        output, "ranking-rows", ranking_features(rated), vocabs, {s: _table(c, lookups) for s, c in columns.items()},
        params, source=source, row_group_size=options.row_groups(DEFAULT_ROW_GROUP_SIZE), overwrite=options.overwrite,
    )  # fmt: skip
    if options.summary:
        print_summary(meta, Path(path), time.perf_counter() - started)
    return meta


def add_prepare_ranking_rows_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ranking-rows`` to the ``prepare`` subparsers ``subparsers``; sets ``func``."""
    d = subparsers.add_parser(
        "ranking-rows", help="a prepared sequence dataset's ranking rows as a CTR dataset (DCNv2 vs the ranker)",
        description=(__doc__ or "").split("\n\n")[0],
    )  # fmt: skip
    d.add_argument("--input", required=True, help="a `prepare sequences` output directory")
    d.add_argument("--output", required=True, help="CTR dataset directory to create (written atomically)")
    d.add_argument(
        "--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN,
        help=f"the ranker's model.max_seq_len: the history is its max_seq_len - 1 last items (default {DEFAULT_MAX_SEQ_LEN})",
    )  # fmt: skip
    d.add_argument("--positive-rating", type=float, default=4.0, help="rating >= this is a positive (default 4)")
    d.add_argument(
        "--negatives", type=int, default=-1,
        help="sampled negatives per interaction, as data.ranking_negatives (default -1: 1 on implicit data, 0 on rated)",
    )  # fmt: skip
    d.add_argument("--seed", type=int, default=0, help="seed of the negatives and the training row order (data.seed)")
    d.add_argument("--min-count", type=int, default=1, help="rarer ids share one out-of-vocabulary id (default 1)")
    d.add_argument("--row-group-size", type=int, default=DEFAULT_ROW_GROUP_SIZE, help="rows per Parquet row group")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output once the new one is complete")
    d.set_defaults(func=run_prepare_ranking_rows)
    return d


def run_prepare_ranking_rows(args: argparse.Namespace) -> int:
    """Run ``prepare ranking-rows``; on bad input print one error line and return 1."""

    def prepare() -> None:
        options = PrepareOptions(seed=args.seed, row_group_size=args.row_group_size, overwrite=args.overwrite)
        prepare_ranking_rows(
            args.input, args.output, options, max_seq_len=args.max_seq_len, positive_rating=args.positive_rating,
            negatives=args.negatives, min_count=args.min_count,
        )  # fmt: skip

    return report_errors(prepare, "no dataset was written")


__all__ = ["add_prepare_ranking_rows_command", "prepare_ranking_rows", "ranking_features", "run_prepare_ranking_rows"]
