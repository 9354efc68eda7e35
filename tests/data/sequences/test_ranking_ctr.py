"""``prepare ranking-rows``: the CTR dataset holds exactly the ranker's rows (labels,
candidates, histories), split as the ranker splits them, and bad input is refused."""

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.data.sequences.rawseq import random_log, write_pairs
from torchrec_me.cli import main as cli_main
from torchrec_me.config import DataConfig
from torchrec_me.data.parquet import ParquetDataset
from torchrec_me.data.prepare.common import PrepareError, PrepareOptions
from torchrec_me.data.sequences.dataset import SequenceDataset
from torchrec_me.data.sequences.prepare import prepare_sequences
from torchrec_me.data.sequences.ranking import RankingOptions, RankingRows
from torchrec_me.data.sequences.ranking_ctr import prepare_ranking_rows
from torchrec_me.data.store import DatasetError

S = 6  # the ranker's max_seq_len: 5 history items and the candidate
QUIET = PrepareOptions(summary=False, seed=3)

Row = Tuple[int, str, str, Tuple[str, ...], Tuple[str, ...]]  # label, user, candidate, history, liked


def _decode(out: Path) -> Dict[str, List[Row]]:
    """Every split's rows with ids turned back into raw tokens through vocab.parquet."""
    vocab = pq.read_table(out / "vocab.parquet").to_pylist()
    token = {(v["field"], v["id"]): v["token"] for v in vocab}
    splits = {}
    for split in ("train", "val", "test"):
        t = pq.read_table(out / f"{split}.parquet").to_pydict()
        liked = t.get("history_liked", [[] for _ in t["label"]])
        splits[split] = [
            (lab, token[("user_id", u)], token[("item_id", i)], tuple(token[("history", h)] for h in hist),
             tuple(token[("history_liked", h)] for h in lk))
            for lab, u, i, hist, lk in zip(t["label"], t["user_id"], t["item_id"], t["history"], liked)
        ]  # fmt: skip
    return splits


def _expected(rows: RankingRows, examples, user_tokens: List[str], item_tokens: List[str]) -> List[Row]:
    """The ranker's own rows of ``examples`` (its batch), as raw tokens."""
    users, positions, copies = examples
    batch = rows.batch(users, positions, copies, S)
    t = rows.reader.table
    out = []
    tokens = np.split(batch.items.values().numpy(), np.cumsum(batch.lengths.numpy())[:-1])
    for b, (u, p) in enumerate(zip(users, positions)):
        history = tokens[b][:-1]
        ratings = t.ratings[t.offsets[u] + max(p - (S - 1), 0) : t.offsets[u] + p]
        liked = tuple(item_tokens[i] for i, r in zip(history, ratings) if r >= rows.options.positive_rating)
        out.append((int(batch.labels[b]), user_tokens[u], item_tokens[tokens[b][-1]],
                    tuple(item_tokens[i] for i in history), liked if not rows.implicit else ()))  # fmt: skip
    return out


def _tokens(seq_dir: Path) -> Tuple[List[str], List[str]]:
    users = pq.read_table(seq_dir / "users.parquet", columns=["token"])["token"].to_pylist()
    items = pq.read_table(seq_dir / "items.parquet", columns=["token"])["token"].to_pylist()
    return users, items


@pytest.mark.parametrize("negatives", [-1, 2])
def test_rated_rows_are_the_rankers_rows(prepared_dir: Path, tmp_path: Path, negatives: int) -> None:
    out = tmp_path / "rank"
    meta = prepare_ranking_rows(str(prepared_dir), str(out), QUIET, max_seq_len=S, negatives=negatives)
    rows = RankingRows(SequenceDataset(str(prepared_dir)), RankingOptions(4.0, negatives, QUIET.seed, S))
    user_tokens, item_tokens = _tokens(prepared_dir)
    got = _decode(out)
    assert [f["name"] for f in meta["sparse_features"]] == ["user_id", "item_id", "history", "history_liked"]
    assert [f["multi_hot"] for f in meta["sparse_features"]] == [False, False, True, True]
    for split in ("val", "test"):  # in the ranker's order
        assert got[split] == _expected(rows, rows.eval_examples(split), user_tokens, item_tokens)
    train = _expected(rows, rows.train_examples(), user_tokens, item_tokens)
    assert len(got["train"]) == len(train) == meta["splits"]["train"]["rows"]
    assert sorted(got["train"]) == sorted(train)  # the same rows, permuted
    assert got["train"] != train  # ... not user-major
    labels = np.array([r[0] for r in got["train"]])
    assert 0 < labels.mean() < 1
    if negatives == 2:  # each interaction and two sampled candidates labelled 0
        assert (labels == 0).sum() >= 2 * len(train) // 3
    assert all(len(r[3]) <= S - 1 and set(r[4]) <= set(r[3]) for r in got["train"])
    # The CTR reader takes it as is: one table per feature, bags included.
    ds = ParquetDataset(DataConfig(path=str(out)))
    assert ds.feature_names == ["user_id", "item_id", "history", "history_liked"]


def test_implicit_rows_get_negatives_and_no_liked_bag(tmp_path: Path) -> None:
    raw = write_pairs(tmp_path / "raw" / "pairs.txt", random_log(n_users=30, n_items=20, max_len=10, seed=4))
    seq = tmp_path / "seq"
    prepare_sequences(str(raw), str(seq), PrepareOptions(summary=False), fmt="pairs")
    out = tmp_path / "rank"
    meta = prepare_ranking_rows(str(seq), str(out), QUIET, max_seq_len=S)
    assert [f["name"] for f in meta["sparse_features"]] == ["user_id", "item_id", "history"]
    assert meta["preprocessing"]["negatives"] == 1 and meta["preprocessing"]["implicit"]
    rows = RankingRows(SequenceDataset(str(seq)), RankingOptions(negatives=-1, seed=QUIET.seed, max_seq_len=S))
    got = _decode(out)
    assert got["test"] == _expected(rows, rows.eval_examples("test"), *_tokens(seq))
    assert sorted(got["train"]) == sorted(_expected(rows, rows.train_examples(), *_tokens(seq)))
    assert meta["splits"]["train"]["positive_rate"] == pytest.approx(0.5)


def test_bad_input_is_refused_and_nothing_written(prepared_dir: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(DatasetError, match="metadata.json"):
        prepare_ranking_rows(str(tmp_path), str(tmp_path / "out"), QUIET)
    with pytest.raises(PrepareError, match="max-seq-len"):
        prepare_ranking_rows(str(prepared_dir), str(tmp_path / "out"), QUIET, max_seq_len=1)
    assert not (tmp_path / "out").exists()
    out = tmp_path / "rank"
    argv = ["prepare", "ranking-rows", "--input", str(prepared_dir), "--output", str(out), "--max-seq-len", str(S)]
    assert cli_main(argv) == 0
    assert cli_main(argv) == 1  # exists: refused without --overwrite, in one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0] and "overwrite" in err[0]
    assert cli_main([*argv, "--overwrite"]) == 0
