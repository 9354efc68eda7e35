"""The synthetic sequences' oracle metrics against the hits of the oracle ranking on the real targets."""

import math
from typing import Dict, Tuple

import numpy as np
import pytest

from torchrec_me.data.sequences.synthetic import SyntheticSequenceConfig, SyntheticSequences
from torchrec_me.data.store import DatasetError

KS = (10, 50)


@pytest.fixture(scope="module")
def synthetic() -> SyntheticSequences:
    return SyntheticSequences(SyntheticSequenceConfig(num_users=2048, num_items=1024, seed=11))


def realized(ds: SyntheticSequences, split: str, exclude_seen: bool) -> Dict[str, np.ndarray]:
    """Per target: the hit, NDCG and reciprocal rank of the oracle ranking, ties broken at random (in expectation)."""
    users = ds.eval_users(split)
    t = ds.table
    target = t.items[t.offsets[users] + t.targets[split][users]]
    p = ds.target_probs(split, users)
    rows = np.arange(len(users))
    in_history = np.zeros(len(users), dtype=bool)
    if exclude_seen:
        seen = ds.seen_items(split, users)
        seen_rows = np.repeat(rows, seen.lengths().numpy())
        p[seen_rows, seen.values().numpy()] = -1.0
        in_history = p[rows, target] < 0
    pt = p[rows, target]
    greater = (p > pt[:, None]).sum(1)
    equal = (p == pt[:, None]).sum(1)
    out: Dict[str, np.ndarray] = {}
    for k in KS:
        out[f"oracle_hr@{k}"] = np.clip(k - greater, 0, equal) / equal
        out[f"oracle_ndcg@{k}"] = np.array(
            [sum(1 / math.log2(r + 1) for r in range(g + 1, g + e + 1) if r <= k) / e for g, e in zip(greater, equal)]
        )
    out["oracle_mrr"] = np.array([sum(1 / r for r in range(g + 1, g + e + 1)) / e for g, e in zip(greater, equal)])
    return {key: np.where(in_history, 0.0, v) for key, v in out.items()}


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_oracle_metrics_match_the_realized_targets(synthetic: SyntheticSequences, exclude_seen: bool) -> None:
    """The targets are draws from the generator, so the oracle ranking's mean hits estimate its expectation."""
    expected = {s: synthetic.oracle_metrics(s, exclude_seen=exclude_seen, ks=KS) for s in ("val", "test")}
    hits = {s: realized(synthetic, s, exclude_seen) for s in ("val", "test")}
    for key in expected["val"]:
        sample = np.concatenate([hits["val"][key], hits["test"][key]])
        mean = (expected["val"][key] + expected["test"][key]) / 2
        assert abs(sample.mean() - mean) < 4 * sample.std() / math.sqrt(len(sample)) + 1e-9, key
    assert 0.2 < expected["test"]["oracle_hr@10"] < 0.9  # a ceiling that is neither trivial nor out of reach


def test_next_item_law_matches_the_formula(synthetic: SyntheticSequences) -> None:
    proc = synthetic.process
    users, previous = np.array([0, 5, 77]), np.array([3, 3, 500])
    p = proc.next_item_probs(users, previous)
    f = proc.cfg.follow_prob
    for b, (u, i) in enumerate(zip(users, previous)):
        for j in (0, int(proc.successors[i, 0]), int(proc.successors[i, -1]), 1023):
            follow = sum(w for s, w in zip(proc.successors[i], proc.successor_weights) if s == j)
            jump = proc.theta[u, proc.topic[j]] * proc.pop[j]
            assert p[b, j] == pytest.approx(f * follow + (1 - f) * jump, rel=1e-12)
    assert np.allclose(p.sum(1), 1.0)


def test_popularity_is_far_below_the_oracle(synthetic: SyntheticSequences) -> None:
    users = synthetic.eval_users("test")
    t = synthetic.table
    top10 = np.argsort(-synthetic.item_counts.numpy(), kind="stable")[:10]
    popularity_hr = np.isin(t.items[t.offsets[users] + t.targets["test"][users]], top10).mean()
    assert popularity_hr < synthetic.oracle_metrics("test", ks=(10,))["oracle_hr@10"] / 2


@pytest.mark.parametrize(
    "field, value",
    [("num_items", 1), ("num_topics", 5000), ("min_length", 2), ("follow_prob", 1.5), ("mean_length", 1000.0)],
)
def test_config_errors_name_the_parameter(field: str, value: float) -> None:
    with pytest.raises(DatasetError, match=field):
        SyntheticSequenceConfig(**{field: value}).validate()


def test_seed_changes_the_data_and_the_fingerprint() -> None:
    def make(seed: int) -> Tuple[str, np.ndarray]:
        ds = SyntheticSequences(SyntheticSequenceConfig(num_users=64, num_items=128, num_topics=4, seed=seed))
        return ds.fingerprint, ds.table.items

    (fa, a), (fb, b) = make(0), make(1)
    assert fa != fb and not (len(a) == len(b) and np.array_equal(a, b))
