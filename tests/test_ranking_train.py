"""`torchrec-me train model.task=ranking` on the synthetic default and on prepared rated sequences."""

import json
from pathlib import Path

import pytest

from tests.data.sequences.rawseq import random_log, write_udata
from torchrec_me.cli import main as cli_main
from torchrec_me.data.prepare.common import PrepareOptions
from torchrec_me.data.sequences.prepare import prepare_sequences

pytestmark = pytest.mark.slow

SMALL = ["model.task=ranking", "model.hidden_dim=32", "model.max_seq_len=20", "train.eval_every=40", "train.steps=80",
         "train.log_every=20", "--no-progress"]  # fmt: skip
KEYS = ["val_auc", "val_logloss", "val_gauc", "test_auc", "test_logloss", "test_gauc", "dense_params", "train_flops"]


def test_synthetic_implicit_rows_learn_to_rank(tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["train", "model=hstu-me-2x", "data.num_users=512", "data.num_items=256", *SMALL, "--run-dir", str(run)]
    assert cli_main(argv) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert all(k in m for k in KEYS) and m["implicit_labels"] and m["ranking_negatives"] == 1
    # One sampled negative per interaction of an item-transition process: easy to beat chance.
    assert m["test_auc"] > 0.6 and m["test_gauc"] > 0.6 and m["test_gauc_users"] > 400
    assert m["test_model"] == "best_checkpoint"


def test_rated_rows_label_four_stars_and_up(tmp_path: Path) -> None:
    raw = write_udata(tmp_path / "raw" / "u.data", random_log(n_users=200, n_items=80, max_len=40, seed=4))
    data = tmp_path / "seq"
    prepare_sequences(str(raw), str(data), PrepareOptions(summary=False), fmt="movielens")
    metrics = tmp_path / "m.json"
    argv = ["train", "model=sasrec-se-1x", f"data.path={data}", *SMALL, "--metrics-out", str(metrics)]
    assert cli_main(argv) == 0
    m = json.loads(metrics.read_text())
    assert not m["implicit_labels"] and m["ranking_negatives"] == 0
    assert m["test_gauc"] is None and m["test_gauc_users"] == 0  # leave-one-out: one labelled row per user
    assert 0 < m["test_logloss"] < 1.5 and 0.0 <= m["test_auc"] <= 1.0
