"""Deterministic synthetic Criteo-shaped CTR data with a hidden teacher.

Why: the default job must run offline, be reproducible bit for bit, and have a known
ceiling. The teacher's own click probability gives ``oracle_auc``, the best AUC any
model can reach on the sampled labels, so a run can be judged by how much of the
oracle's lift over 0.5 it recovers.

Layout of one sample: 39 categorical fields ``C1..C39`` (13 binned Criteo integer
fields plus 26 Criteo categorical fields, as in the multi-embedding paper's
preprocessing), one id per field, no dense features.

Teacher: with per-id weights ``w_f`` and latent vectors ``v_f`` (dim ``teacher_dim``) and a
field-pair matrix ``R`` (F x F, upper triangle),
``logit = b + sum_f w_f[x_f] + sum_{i<j} R_ij <v_i[x_i], v_j[x_j]>``, where the bias ``b``
is solved for the configured positive rate. Labels are ``Bernoulli(sigmoid(logit))``.

Streams: batch ``g`` of a split is drawn from a generator seeded by
``(seed, split, g, batch_size)`` alone. Training step ``s`` with per-rank batch ``b`` on
``W`` ranks is global batch ``s`` of size ``G = b * W`` (``G`` samples
``[s*G, (s+1)*G)`` of the stream), and rank ``r`` takes its rows ``[r*b, (r+1)*b)``. The
training stream is therefore a function of ``(seed, G)`` alone: the ranks' shares are
disjoint, their union is the one-process stream of batch ``G``, and a restart at another
world size with the same global batch continues the same samples. Every rank draws the
random numbers of the whole global batch (cheap) but computes ids, teacher and labels
for its own rows only.

Fingerprint (:func:`fingerprint`): what an id means here is fixed by the seed, the
vocabulary sizes and the teacher's dim (they fix the Zipf rank -> id permutations and
the teacher's per-id vectors); ``zipf_alpha`` and ``positive_rate`` change only how
often ids occur and the teacher's bias, so they are not part of it.
"""

import hashlib
import json
import math
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_me.config import DataConfig

# Approximate vocabulary sizes of the Criteo Kaggle fields after the paper's
# preprocessing (integers binned to categories, min count 10). Only their shape matters
# here: a few huge fields, many tiny ones.
CRITEO_CARDINALITIES: Tuple[int, ...] = (
    # I1..I13 (binned)
    43, 98, 121, 40, 219, 111, 79, 68, 91, 5, 26, 36, 71,
    # C1..C26
    1445, 553, 175781, 128509, 305, 19, 11930, 629, 3, 39530, 5130, 156655, 3175,
    27, 11042, 165512, 10, 4606, 2017, 4, 172322, 18, 15, 56456, 86, 43356,
)  # fmt: skip

_SPLITS = {"train": 0, "val": 1, "test": 2}


def scaled_cardinalities(scale: float, max_cardinality: int) -> List[int]:
    """Criteo's vocabularies times ``scale``; fields under 10 ids keep their size."""
    return [
        min(max(int(round(c * scale)), min(c, 10)), max_cardinality)
        for c in CRITEO_CARDINALITIES
    ]


def fingerprint(cfg: DataConfig, num_embeddings: Sequence[int]) -> str:
    """The sha256 (hex) of what fixes the ids of :class:`SyntheticCriteo` (see the module docstring)."""
    key = {"dataset": "synthetic-criteo/1", "seed": cfg.seed, "num_embeddings": list(num_embeddings),
           "teacher_dim": cfg.teacher_dim}  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class SyntheticCriteo:
    """Criteo-shaped batches from a hidden teacher; see the module docstring.

    Args:
        cfg (DataConfig): sizes, Zipf exponent, teacher dim, positive rate and seed.

    Example::

        ds = SyntheticCriteo(DataConfig(seed=0))
        batch, teacher_prob = ds.batch("train", index=0, batch_size=4)
        batch.sparse_features.keys()  # ['C1', ..., 'C39']
    """

    num_dense: int = 0
    has_teacher: bool = True  # eval batches carry the teacher's probability

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.num_embeddings: List[int] = scaled_cardinalities(
            cfg.cardinality_scale, cfg.max_cardinality
        )
        self.feature_names: List[str] = [f"C{i + 1}" for i in range(len(self.num_embeddings))]
        self.fingerprint: str = fingerprint(cfg, self.num_embeddings)
        g = torch.Generator().manual_seed(self._seed("teacher", 0, 0))
        F = len(self.num_embeddings)
        sizes = torch.tensor(self.num_embeddings)
        self._offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]])
        # Zipf over ranks; the cdf of field f is shifted by f so one searchsorted serves all.
        cdfs, perms = [], []
        for f, n in enumerate(self.num_embeddings):
            p = torch.arange(1, n + 1, dtype=torch.float64).pow(-cfg.zipf_alpha)
            cdf = (p / p.sum()).cumsum(0)
            cdf[-1] = 1.0
            cdfs.append(cdf + f)
            perms.append(torch.randperm(n, generator=g))
        self._cdf = torch.cat(cdfs)
        self._perm = torch.cat(perms)
        total = int(sizes.sum())
        dt = cfg.teacher_dim
        self._w = torch.randn(total, generator=g) * 0.12
        self._v = torch.randn(total, dt, generator=g) / math.sqrt(dt)
        pair = torch.randn(F, F, generator=g) * (0.4 / math.sqrt(F))
        self._pair = torch.triu(pair, diagonal=1)
        self._bias = 0.0
        self._bias = self._solve_bias(cfg.positive_rate)

    def _seed(self, split: str, index: int, batch_size: int) -> int:
        code = _SPLITS.get(split, 99)
        return int(np.random.SeedSequence([self.cfg.seed, code, index, batch_size]).generate_state(1)[0])

    def _sample_ids(self, n: int, g: torch.Generator) -> torch.Tensor:
        """(n, F) global row ids (field offset included) drawn from each field's Zipf."""
        return self._ids_from_uniform(torch.rand(n, len(self.num_embeddings), generator=g, dtype=torch.float64))

    def _ids_from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        """(n, F) global row ids of (n, F) float64 uniforms, by each field's Zipf cdf."""
        rank = torch.searchsorted(self._cdf, u + torch.arange(u.shape[1])).clamp_(max=self._cdf.numel() - 1)
        return self._perm[rank] + self._offsets

    def _teacher_logit(self, gid: torch.Tensor) -> torch.Tensor:
        v = self._v[gid]  # (n, F, dt)
        gram = torch.bmm(v, v.transpose(1, 2))  # (n, F, F)
        return self._bias + self._w[gid].sum(1) + (gram * self._pair).sum((1, 2))

    def _solve_bias(self, rate: float) -> float:
        g = torch.Generator().manual_seed(self._seed("calibration", 0, 0))
        logits = self._teacher_logit(self._sample_ids(20000, g))
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if torch.sigmoid(logits + mid).mean().item() > rate:
                hi = mid
            else:
                lo = mid
        return (lo + hi) / 2

    def batch(
        self, split: str, index: int, batch_size: int, rows: Optional[Tuple[int, int]] = None
    ) -> Tuple[Batch, torch.Tensor]:
        """Global batch ``index`` of ``split``: the Batch and the teacher's probabilities.

        ``rows=(lo, hi)`` returns only rows ``lo..hi-1`` of that batch, computing nothing
        for the others (the random draws of the whole batch are made, so each row is the
        same whichever share of the batch is asked for).
        """
        lo, hi = rows if rows is not None else (0, batch_size)
        if not 0 <= lo <= hi <= batch_size:
            raise ValueError(f"rows {lo}..{hi} are outside a batch of {batch_size}")
        g = torch.Generator().manual_seed(self._seed(split, index, batch_size))
        F = len(self.num_embeddings)
        u = torch.rand(batch_size, F, generator=g, dtype=torch.float64)[lo:hi]  # id draws
        coins = torch.rand(batch_size, generator=g)[lo:hi]  # label draws
        gid = self._ids_from_uniform(u)
        prob = torch.sigmoid(self._teacher_logit(gid)).float()
        labels = (coins < prob).float()  # Bernoulli(prob)
        n = hi - lo
        local = gid - self._offsets  # (n, F) ids within each field
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.feature_names,
            values=local.t().reshape(-1),
            lengths=torch.ones(F * n, dtype=torch.int32),
        )
        batch = Batch(
            dense_features=torch.zeros(n, self.num_dense),
            sparse_features=kjt,
            labels=labels,
        )
        return batch, prob

    def train_batches(
        self, rank: int, world_size: int, batch_size: int, start: int = 0, stop: Optional[int] = None
    ) -> Iterator[Batch]:
        """This rank's training batches for steps ``start..stop-1`` (endless if stop is None):
        its rows ``[rank*b, (rank+1)*b)`` of global batch ``step`` of ``G = b * world_size``."""
        G, lo = batch_size * world_size, rank * batch_size
        step = start
        while stop is None or step < stop:
            yield self.batch("train", step, G, rows=(lo, lo + batch_size))[0]
            step += 1

    def eval_ranges(self, split: str, rank: int, world_size: int, batch_size: int) -> List[Tuple[int, int, bool]]:
        """``(first row, end row, is_real)`` of each of this rank's eval batches of ``split``.

        The split has exactly ``val_samples`` rows in batches of ``batch_size`` (the last
        one may be smaller), dealt round-robin over the ranks. Every rank gets the same
        number of batches, as sharded forwards are collective; a rank that has run out
        gets a repeat of batch 0 flagged ``is_real=False``.
        """
        rows = self.cfg.val_samples
        n = math.ceil(rows / batch_size)
        ranges = []
        for i in range(math.ceil(n / world_size)):
            index = i * world_size + rank
            lo = index * batch_size if index < n else 0
            ranges.append((lo, min(lo + batch_size, rows), index < n))
        return ranges

    def eval_batches(
        self, split: str, rank: int, world_size: int, batch_size: int
    ) -> Iterator[Tuple[Batch, Optional[torch.Tensor], bool]]:
        """This rank's share of ``split``: (batch, teacher probability, is_real), one per
        :meth:`eval_ranges` entry."""
        for lo, hi, real in self.eval_ranges(split, rank, world_size, batch_size):
            batch, prob = self.batch(split, lo // batch_size, hi - lo)
            yield batch, prob, real
