"""Presets of the sequential models: the SE/ME scale grid and the published configurations.

A preset maps config keys to values: bare names are ``model.`` keys, dotted names are keys
of another section. Every sequential preset trains as the HSTU reference does: AdamW on
the dense parameters, lr 1e-3, betas (0.9, 0.98), no weight decay, batch 128.

* ``{hstu,sasrec,llama}-se-{1,2,3,4,10}x`` and ``-me-{2,3,4,10}x``: equal item-embedding
  parameters at each scale, as in the CTR grid. SE multiplies the dim of the one item
  table, ME the number of tables at the base dim 48 (ME-1x is SE-1x).
* The published configurations of facebookresearch/generative-recommenders
  (``configs/{ml-1m,ml-20m,amzn-books}/*-final.gin``): ``{hstu,hstu-large,sasrec}-{ml1m,
  ml20m,books}``. FBGEMM needs dims that are multiples of 4, so ML-1M's d = 50 is 48 here
  (25 per head of HSTU-large is 24); ML-20M's 256 and Books' 64 are unchanged.
"""

from typing import Any, Dict

SEQUENTIAL_BACKBONES = ("hstu", "sasrec", "llama")
BASE_DIM = 48
SCALES = (1, 2, 3, 4, 10)

# How the reference trains every sequential model.
REFERENCE_TRAINING: Dict[str, Any] = {
    "train.dense_optimizer": "adamw",
    "train.dense_betas": [0.9, 0.98],
    "train.dense_weight_decay": 0.0,
    "train.batch_size": 128,
    "train.eval_batch_size": 128,
    "num_negatives": 128,
    "temperature": 0.05,
    "set_dims": None,
}

# (backbone, blocks, heads, dim, max_seq_len, dropout, negatives) of each published config.
PUBLISHED = {
    "hstu-ml1m": ("hstu", 2, 1, 48, 200, 0.2, 128),
    "hstu-large-ml1m": ("hstu", 8, 2, 48, 200, 0.2, 128),
    "sasrec-ml1m": ("sasrec", 2, 1, 48, 200, 0.2, 128),
    "hstu-ml20m": ("hstu", 4, 4, 256, 200, 0.2, 128),
    "hstu-large-ml20m": ("hstu", 16, 8, 256, 200, 0.2, 128),
    "sasrec-ml20m": ("sasrec", 4, 4, 256, 200, 0.2, 128),
    "hstu-books": ("hstu", 4, 4, 64, 50, 0.5, 512),
    "hstu-large-books": ("hstu", 16, 8, 64, 50, 0.5, 512),
    "sasrec-books": ("sasrec", 4, 4, 64, 50, 0.5, 512),
}


def _grid() -> Dict[str, Dict[str, Any]]:
    grid: Dict[str, Dict[str, Any]] = {}
    for backbone in SEQUENTIAL_BACKBONES:
        for s in SCALES:
            common = {**REFERENCE_TRAINING, "backbone": backbone}
            grid[f"{backbone}-se-{s}x"] = {**common, "num_sets": 1, "embedding_dim": BASE_DIM * s}
            if s > 1:
                grid[f"{backbone}-me-{s}x"] = {**common, "num_sets": s, "embedding_dim": BASE_DIM}
    for name, (backbone, blocks, heads, dim, length, dropout, negatives) in PUBLISHED.items():
        grid[name] = {
            **REFERENCE_TRAINING, "backbone": backbone, "num_sets": 1, "embedding_dim": dim, "num_blocks": blocks,
            "num_heads": heads, "max_seq_len": length, "dropout": dropout, "num_negatives": negatives,
        }  # fmt: skip
    return grid


SEQUENTIAL_PRESETS: Dict[str, Dict[str, Any]] = _grid()
