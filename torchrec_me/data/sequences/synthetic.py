"""Deterministic synthetic user sequences with a known generator: the sequential default.

Why: the default sequential job must run offline, be reproducible bit for bit, and have
a known ceiling, as the CTR default has its teacher's oracle AUC.

**Generator** (an item-transition process with per-user interests; N items, K topics):

* item ``j`` belongs to topic ``topic[j]`` (a seeded balanced assignment) and has a
  within-topic popularity ``pop[j]`` proportional to ``(rank + 1) ** -zipf_alpha``;
* item ``i`` has ``num_successors`` successors ``succ[i, s]`` (three quarters drawn from
  its own topic by popularity, the rest uniform) with weights ``w_s`` proportional to
  ``1 / (s + 1)``;
* user ``u`` has interests ``theta[u] ~ Dirichlet(concentration)`` over the topics and a
  length ``min_length - 1 + Geometric`` (mean ``mean_length``, at most ``max_length``);
* the first item is a *jump*: a topic ``k ~ theta[u]``, then an item ``j ~ pop`` within
  ``k``; every next item follows a successor of the previous item with probability
  ``follow_prob``, else jumps. So the next-item distribution of user ``u`` after item ``i`` is
  ``p(j) = follow_prob * sum_s w_s [succ[i, s] = j] + (1 - follow_prob) * theta[u, topic[j]] * pop[j]``.
* timestamps are a per-user start plus exponential gaps (mean one day); they carry no
  signal. Ratings are all 1 (implicit feedback). The split is leave-one-out.

**Oracle.** Given the previous item and the user's interests, ``p`` is the exact law of the
target, so ranking items by ``p`` is Bayes-optimal and its expected HR@k is the top-k mass
of ``p``, NDCG@k is ``sum_r p_(r) / log2(r + 2)`` over the top k and MRR is
``sum_r p_(r) / (r + 1)`` (``p_(r)`` sorted descending). :meth:`SyntheticSequences.oracle_metrics`
averages these over a split's targets: the best any model can expect. The oracle knows
``theta[u]``, which a model can only estimate from the history, so it is an upper bound
that long histories approach.

Generation is vectorised: every jump is drawn at once and only successor walks go step by
step (over all users together), so ten million interactions take seconds; all draws come
from generators seeded by ``(seed, part)``.
"""

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from torchrec_me.data.sequences.reader import ReadOptions, SequenceReader, SequenceTable
from torchrec_me.data.sequences.splits import leave_one_out
from torchrec_me.data.store import DatasetError

GENERATOR_VERSION = 1
START_TIME = 1_600_000_000
MEAN_GAP_SECONDS = 86_400.0
CACHE_FRIENDLY = 1 << 20  # table entries (8 MB) below which searching unsorted keys is fast enough


@dataclass(frozen=True)
class SyntheticSequenceConfig:
    """Parameters of the synthetic sequence generator (see the module docstring).

    Args:
        num_users (int): U users.
        num_items (int): N items.
        num_topics (int): K topics (interests); at most ``num_items``.
        mean_length (float): mean sequence length.
        min_length (int): shortest sequence; 3 gives every user a val and a test target.
        max_length (int): longest sequence.
        num_successors (int): successors per item.
        follow_prob (float): probability of following a successor rather than jumping.
        concentration (float): Dirichlet concentration of the user interests (small: focused users).
        zipf_alpha (float): exponent of the within-topic popularity.
        seed (int): seed of everything (also of the training shuffle).
    """

    num_users: int = 4096
    num_items: int = 2048
    num_topics: int = 16
    mean_length: float = 50.0
    min_length: int = 3
    max_length: int = 400
    num_successors: int = 32
    follow_prob: float = 0.5
    concentration: float = 0.1
    zipf_alpha: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`DatasetError` naming the first parameter out of range."""
        at_least = {"num_users": 1, "num_items": 2, "num_topics": 1, "min_length": 3, "num_successors": 1}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise DatasetError(f"synthetic sequences: {name} must be >= {low}, got {getattr(self, name)}")
        checks = {
            "num_topics": self.num_topics <= self.num_items,
            "max_length": self.max_length >= self.min_length,
            "mean_length": self.min_length <= self.mean_length <= self.max_length,
            "follow_prob": 0.0 <= self.follow_prob <= 1.0,
            "concentration": self.concentration > 0,
            "zipf_alpha": self.zipf_alpha >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise DatasetError(f"synthetic sequences: {name}={getattr(self, name)} is out of range")


def _rng(seed: int, part: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0x5E05, part]))


class RowSampler:
    """Inverse-CDF draws from many categorical laws at once, one binary search per draw.

    Row ``r`` of ``cdf`` (R, m) is stored shifted by ``+r``, so one ``searchsorted`` over
    the flat array finds the first column with ``cdf > u`` in any row.

    Args:
        cdf (np.ndarray): (R, m) non-decreasing rows ending at 1.0.
        sizes (np.ndarray): (R,) columns in use per row (the rest is padding).
    """

    def __init__(self, cdf: np.ndarray, sizes: np.ndarray) -> None:
        self.width = cdf.shape[1]
        self.shifted = (cdf + np.arange(len(cdf))[:, None]).ravel()
        self.last = sizes - 1

    def __call__(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n,) column drawn from each of ``rows``."""
        keys = rows + rng.random(len(rows))
        if len(self.shifted) <= CACHE_FRIENDLY:
            flat = np.searchsorted(self.shifted, keys, side="right")
        else:  # sorted keys walk a large table in order instead of at random
            order = np.argsort(keys, kind="stable")
            flat = np.empty(len(rows), dtype=np.int64)
            flat[order] = np.searchsorted(self.shifted, keys[order], side="right")
        return np.clip(flat - rows * self.width, 0, self.last[rows])


class InterestMarkovProcess:
    """The item-transition process of the module docstring, with its parameters drawn.

    Args:
        cfg (SyntheticSequenceConfig): sizes, shape parameters and seed.
    """

    def __init__(self, cfg: SyntheticSequenceConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        n, k, s = cfg.num_items, cfg.num_topics, cfg.num_successors
        rng = _rng(cfg.seed, 0)
        perm = rng.permutation(n)
        self.topic, rank = perm % k, perm // k
        weight = (rank + 1.0) ** -cfg.zipf_alpha
        self.pop = weight / np.bincount(self.topic, weights=weight, minlength=k)[self.topic]
        width = math.ceil(n / k)
        self.topic_items = np.zeros((k, width), dtype=np.int64)
        self.topic_items[self.topic, rank] = np.arange(n)
        cdf = np.zeros((k, width))
        cdf[self.topic, rank] = self.pop
        cdf = np.cumsum(cdf, axis=1)
        sizes = np.bincount(self.topic, minlength=k)
        cdf[np.arange(width)[None, :] >= sizes[:, None] - 1] = 1.0
        self._within_topic = RowSampler(cdf, sizes)
        n_cross = s // 4
        own_topics = np.repeat(self.topic, s - n_cross)
        own = self.topic_items[own_topics, self._within_topic(own_topics, rng)].reshape(n, s - n_cross)
        self.successors = np.concatenate([own, rng.integers(0, n, size=(n, n_cross))], axis=1)
        w = 1.0 / np.arange(1, s + 1)
        self.successor_weights = w / w.sum()
        self.successor_cdf = np.cumsum(self.successor_weights)
        self.successor_cdf[-1] = 1.0
        users = _rng(cfg.seed, 1)
        theta = users.gamma(cfg.concentration, size=(cfg.num_users, k))
        empty = theta.sum(1) == 0
        theta[empty, users.integers(0, k, size=int(empty.sum()))] = 1.0
        self.theta = theta / theta.sum(1, keepdims=True)
        theta_cdf = np.cumsum(self.theta, axis=1)
        theta_cdf[:, -1] = 1.0
        self._topic_of_user = RowSampler(theta_cdf, np.full(cfg.num_users, k))
        extra = users.geometric(1.0 / (cfg.mean_length - cfg.min_length + 1), size=cfg.num_users) - 1
        self.lengths = np.minimum(cfg.min_length + extra, cfg.max_length).astype(np.int64)

    def _jump(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n,) items: a topic from each user's interests, then an item by popularity within it."""
        topics = self._topic_of_user(users, rng)
        return self.topic_items[topics, self._within_topic(topics, rng)]

    def sample(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(offsets (U+1,), items (N,), timestamps (N,))`` of every user's sequence.

        Jumps do not depend on the previous item, so every position's jump item, its
        follow-or-jump coin and its successor slot are drawn at once; only following a
        successor walks position by position (one vectorised step over the users).
        """
        rng = _rng(self.cfg.seed, 2)
        offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        n = int(offsets[-1])
        items = self._jump(np.repeat(np.arange(len(self.lengths)), self.lengths), rng)
        follow = rng.random(n) < self.cfg.follow_prob
        follow[offsets[:-1]] = False  # a user's first item is a jump
        slots = np.searchsorted(self.successor_cdf, rng.random(n), side="right").clip(max=len(self.successor_cdf) - 1)
        order = np.argsort(-self.lengths, kind="stable")  # the users still walking are a prefix
        descending = self.lengths[order]
        for t in range(1, int(descending[0])):
            at = offsets[order[: int(np.searchsorted(-descending, -t, side="left"))]] + t
            walk = at[follow[at]]
            items[walk] = self.successors[items[walk - 1], slots[walk]]
        gaps = rng.exponential(MEAN_GAP_SECONDS, size=len(items))
        cum = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[offsets[:-1]] - gaps[offsets[:-1]], self.lengths)
        starts = START_TIME + rng.integers(0, 365 * 86_400, size=len(self.lengths))
        return offsets, items, (np.repeat(starts, self.lengths) + cum).astype(np.int64)

    def next_item_probs(self, users: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """(B, N) float64 law of the next item of each user after their ``previous`` item."""
        f = self.cfg.follow_prob
        p = (1.0 - f) * self.theta[users][:, self.topic] * self.pop[None, :]
        rows = np.repeat(np.arange(len(users)), self.cfg.num_successors)
        np.add.at(p, (rows, self.successors[previous].reshape(-1)), np.tile(f * self.successor_weights, len(users)))
        return p


class SyntheticSequences(SequenceReader):
    """Synthetic user sequences with a known Bayes-optimal ranking; see the module docstring.

    Args:
        cfg (Optional[SyntheticSequenceConfig]): generator parameters (defaults: 4096
            users, 2048 items, mean length 50).
        options (Optional[ReadOptions]): training windows and protocol (see :mod:`.reader`);
            default: ``ReadOptions(seed=cfg.seed)``.

    Example::

        ds = SyntheticSequences(SyntheticSequenceConfig(num_users=512, seed=1))
        batch = next(ds.train_batches(0, 1, batch_size=32, max_seq_len=50))
        ds.oracle_metrics("test")["oracle_hr@10"]  # the best expected HR@10
    """

    def __init__(self, cfg: Optional[SyntheticSequenceConfig] = None, options: Optional[ReadOptions] = None) -> None:
        self.cfg = cfg or SyntheticSequenceConfig()
        self.process = InterestMarkovProcess(self.cfg)
        offsets, items, timestamps = self.process.sample()
        pos = leave_one_out(offsets, timestamps)
        table = SequenceTable(
            offsets, items, timestamps, np.ones(len(items), np.float32), pos.train_len,
            {"val": pos.val_index, "test": pos.test_index},
        )  # fmt: skip
        payload = json.dumps({"generator": GENERATOR_VERSION, **dataclasses.asdict(self.cfg)}, sort_keys=True)
        self.fingerprint: str = hashlib.sha256(payload.encode()).hexdigest()
        super().__init__(table, self.cfg.num_items, True, options or ReadOptions(seed=self.cfg.seed))

    def target_probs(self, split: str, users: np.ndarray) -> np.ndarray:
        """(B, N) law of each user's ``split`` target given what precedes it."""
        pos = self.table.targets[split][users]
        return self.process.next_item_probs(users, self.table.items[self.table.offsets[users] + pos - 1])

    def oracle_metrics(
        self, split: str, exclude_seen: bool = False, ks: Sequence[int] = (10, 50, 200), chunk: int = 512
    ) -> Dict[str, float]:
        """Expected metrics of the Bayes-optimal ranking over the ``split`` targets.

        Args:
            split (str): ``val`` or ``test``.
            exclude_seen (bool): rank only items outside the user's history
                (:meth:`seen_items`); a target in the history is then a miss.
            ks (Sequence[int]): cut-offs of HR@k and NDCG@k.
            chunk (int): users scored at once (memory: ``chunk * num_items`` floats).

        Returns:
            Dict[str, float]: ``oracle_hr@k``, ``oracle_ndcg@k`` for each k, and ``oracle_mrr``.
        """
        users = self.eval_users(split)
        ranks = np.arange(1, self.num_items + 1, dtype=np.float64)
        totals = dict.fromkeys([f"oracle_{m}@{k}" for k in ks for m in ("hr", "ndcg")] + ["oracle_mrr"], 0.0)
        for lo in range(0, len(users), chunk):
            batch = users[lo : lo + chunk]
            p = self.target_probs(split, batch)
            if exclude_seen:
                seen = self.seen_items(split, batch)
                p[np.repeat(np.arange(len(batch)), seen.lengths().numpy()), seen.values().numpy()] = 0.0
            top = -np.sort(-p, axis=1)
            for k in ks:
                totals[f"oracle_hr@{k}"] += float(top[:, :k].sum())
                totals[f"oracle_ndcg@{k}"] += float((top[:, :k] / np.log2(ranks[:k] + 1)).sum())
            totals["oracle_mrr"] += float((top / ranks).sum())
        return {key: value / len(users) for key, value in totals.items()}
