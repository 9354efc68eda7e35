"""The sequential ranker: shapes, rows that do not see each other, every set trained,
and GAUC against a pairwise count."""

import itertools

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_me.data.sequences.ranking import RankingBatch
from torchrec_me.evaluation import gauc
from torchrec_me.models.ranking import SequentialRanker, SequentialRankerTrain
from torchrec_me.models.sequential import SequentialConfig


def _batch(rows, actions=None, labels=None) -> RankingBatch:
    values = torch.tensor([i for r in rows for i in r])
    lengths = torch.tensor([len(r) for r in rows])
    acts = torch.tensor(actions) if actions is not None else torch.randint(1, 7, (len(values),))
    return RankingBatch(KeyedJaggedTensor.from_lengths_sync(["item"], values, lengths), 60 * torch.arange(len(values)),
                        acts, torch.tensor(labels or [1.0] * len(rows)), torch.arange(len(rows)))  # fmt: skip


@pytest.mark.parametrize("backbone", ["hstu", "sasrec", "llama"])
def test_rows_are_scored_alone_and_every_set_learns(backbone: str) -> None:
    torch.manual_seed(0)
    model = SequentialRanker(40, SequentialConfig(backbone=backbone, num_sets=2, embedding_dim=8, max_seq_len=6, dropout=0.0), 16)
    model.eval()
    rows = [[3, 1, 4], [1, 5, 9, 2, 6], [5]]
    actions = [[2, 3, 0], [1, 6, 2, 5, 0], [0]]
    together = model(_batch(rows, [a for r in actions for a in r]))
    alone = [model(_batch([r], a)) for r, a in zip(rows, actions)]
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-6)  # padding changes nothing
    model.train()
    loss, (_, logits, labels) = SequentialRankerTrain(model)(_batch(rows, [a for r in actions for a in r], [1.0, 0.0, 1.0]))
    loss.backward()
    assert logits.shape == (3,) and labels.tolist() == [1.0, 0.0, 1.0]
    for ec in model.item_sets.ecs:
        (weight,) = [p for p in ec.parameters()]
        assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.arch.fuse.parameters())


def test_the_candidate_action_is_unknown_and_history_actions_matter() -> None:
    torch.manual_seed(1)
    model = SequentialRanker(20, SequentialConfig(num_sets=1, embedding_dim=8, max_seq_len=4, dropout=0.0), 8).eval()
    base = model(_batch([[2, 7, 5]], [3, 4, 0]))
    assert not torch.allclose(base, model(_batch([[2, 7, 5]], [6, 1, 0])))  # the user's ratings are read


def _pairwise_gauc(scores, labels, groups) -> float:
    total, weight = 0.0, 0
    for g in sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        pos = [scores[i] for i in idx if labels[i] == 1]
        neg = [scores[i] for i in idx if labels[i] == 0]
        if not pos or not neg:
            continue
        wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
        total += len(idx) * wins / (len(pos) * len(neg))
        weight += len(idx)
    return total / weight


def test_gauc_is_the_impression_weighted_mean_of_user_aucs() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 300).astype(np.float32)  # many ties
    labels = rng.integers(0, 2, 300).astype(np.float32)
    groups = rng.integers(0, 25, 300)
    value, used = gauc(torch.from_numpy(scores), torch.from_numpy(labels), torch.from_numpy(groups))
    assert value == pytest.approx(_pairwise_gauc(scores.tolist(), labels.tolist(), groups.tolist()), rel=1e-12)
    assert used == sum(1 for g in set(groups.tolist()) if len(set(labels[groups == g].tolist())) == 2)
    nan, none = gauc(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 0.0]), torch.tensor([0, 1]))
    assert np.isnan(nan) and none == 0
