"""Parameter counts and training FLOPs against formulas written out by hand."""

import pytest
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

from torchrec_me.job import load_dataset, load_job_config
from torchrec_me.scaling.cost import parameter_counts, training_flops


def test_tables_are_sparse_and_everything_else_dense() -> None:
    ebc = EmbeddingBagCollection([EmbeddingBagConfig(name="t", embedding_dim=8, num_embeddings=30, feature_names=["f"])], device="meta")
    model = nn.ModuleDict({"ebc": ebc, "head": nn.Linear(8, 3)})
    assert parameter_counts(model) == {"dense_params": 8 * 3 + 3, "sparse_params": 30 * 8}


@pytest.mark.parametrize("blocks, length", [(1, 20), (3, 64)])
def test_hstu_flops_per_token(blocks: int, length: int) -> None:
    """Per token and block: the uvqk projection 2*D*4D, the output projection 2*D*D,
    q k^T and A v 2*L*D each; the loss scores M negatives, 2*M*D; training is 3x."""
    d, m = 48, 16
    cfg = load_job_config(overrides=["model=hstu-se-1x", f"model.num_blocks={blocks}", f"model.max_seq_len={length}",
                                     f"model.num_negatives={m}", "data.num_users=32", "data.num_items=40"])  # fmt: skip
    cost = training_flops(cfg, load_dataset(cfg))
    per_block = 2 * d * 4 * d + 2 * d * d + 2 * (2 * length * d)
    assert cost["flops_per_token"] == 3 * (blocks * per_block + 2 * m * d)
    assert cost["sparse_params"] == 40 * d


@pytest.mark.parametrize("backbone", ["sasrec", "llama"])
def test_sdpa_attention_is_counted_for_sasrec_and_llama(backbone: str) -> None:
    """Their attention runs in PyTorch's scaled-dot-product kernels (CPU flash attention,
    MultiheadAttention): per token and block q k^T and A v cost 2*L*D each, so doubling
    the length adds 3 * blocks * 4 * L * D; SASRec per block also has its 4 D x D input
    and output projections and its 2 feed-forward D x D layers."""
    d, m, blocks = 48, 16, 2

    def cost(length: int) -> float:
        cfg = load_job_config(overrides=[f"model={backbone}-se-1x", f"model.num_blocks={blocks}",
                                         f"model.max_seq_len={length}", f"model.num_negatives={m}",
                                         "data.num_users=32", "data.num_items=40"])  # fmt: skip
        return training_flops(cfg, load_dataset(cfg))["flops_per_token"]

    assert cost(32) - cost(16) == 3 * blocks * 4 * 16 * d
    if backbone == "sasrec":
        per_block = 2 * d * 3 * d + 2 * d * d + 2 * (2 * d * d) + 2 * (2 * 16 * d)
        assert cost(16) == 3 * (blocks * per_block + 2 * m * d)


def test_me_sets_each_run_their_own_stack() -> None:
    base = ["model.num_negatives=16", "data.num_users=32", "data.num_items=40", "model.max_seq_len=20"]
    one = load_job_config(overrides=["model=hstu-se-1x", *base])
    four = load_job_config(overrides=["model=hstu-me-4x", *base])
    c1, c4 = (training_flops(c, load_dataset(c)) for c in (one, four))
    assert c4["flops_per_token"] == 4 * c1["flops_per_token"]
    assert c4["sparse_params"] == 4 * c1["sparse_params"] and c4["dense_params"] > 3 * c1["dense_params"]
