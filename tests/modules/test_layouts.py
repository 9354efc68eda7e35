"""The three layouts of the K embedding sets compute the same model (unsharded).

The sharded, fused-optimizer counterpart is ``tests/distributed/test_layouts_sharded.py``.
"""

from typing import Any, Tuple

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_me.analysis.sharded import find_embedding_tables
from torchrec_me.config import ConfigError, DataConfig, ModelConfig
from torchrec_me.data.synthetic import SyntheticCriteo
from torchrec_me.job import load_job_config
from torchrec_me.models import MultiEmbeddingModel, build_model
from torchrec_me.modules.layouts import LAYOUT_REGISTRY, build_sets
from torchrec_me.modules.multi_embedding import split_keyed_tensor

DIMS = [8, 16, 8]
DS = SyntheticCriteo(DataConfig(cardinality_scale=0.002))


def _kjt() -> KeyedJaggedTensor:
    # f1: [1], [2, 3]; f2: [], [4]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["f1", "f2"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([1, 2, 0, 1], dtype=torch.int32)
    )


def _copy_of_separate(layout: str, **model_kw: Any) -> Tuple[MultiEmbeddingModel, MultiEmbeddingModel]:
    """(separate model, ``layout`` model with the same weights), tiny DCNv2 on synthetic data."""
    cfg = ModelConfig(num_sets=len(DIMS), set_dims=DIMS, hidden_dim=16, num_cross_layers=2, **model_kw)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ref = build_model(cfg, DS.feature_names, DS.num_embeddings)
        torch.manual_seed(1)
        cfg.layout = layout
        other = build_model(cfg, DS.feature_names, DS.num_embeddings)
    other.load_state_dict({k: v for k, v in ref.state_dict().items() if "sparse_arch" not in k}, strict=False)
    other.sparse_arch.load_set_weights(ref.sparse_arch.set_weights())
    return ref, other


def test_table_names_and_shapes_per_layout() -> None:
    grouped = build_sets("grouped", ["f1", "f2"], [10, 20], DIMS)
    assert [c.name for c in grouped.ebc.embedding_bag_configs()] == [
        f"set{k}__{f}" for k in range(3) for f in ("f1", "f2")
    ]
    packed = build_sets("packed", ["f1", "f2"], [10, 20], DIMS)
    assert [(c.name, c.num_embeddings, c.embedding_dim) for c in packed.ebc.embedding_bag_configs()] == [
        ("packed__f1", 10, 32),
        ("packed__f2", 20, 32),
    ]
    # Set k owns columns [sum(D_<k), sum(D_<=k)) of every packed table.
    views = packed.set_weights()
    table = packed.ebc.embedding_bags["packed__f2"].weight
    assert views[1]["f2"].data_ptr() == table[:, 8:24].data_ptr() and views[1]["f2"].shape == (20, 16)


@pytest.mark.parametrize("layout", ["grouped", "packed"])
def test_per_set_outputs_match_separate(layout: str) -> None:
    ref = build_sets("separate", ["f1", "f2"], [10, 20], DIMS)
    other = build_sets(layout, ["f1", "f2"], [10, 20], DIMS)
    other.load_set_weights(ref.set_weights())
    outs, expected = other(_kjt()), ref(_kjt())
    assert [o.shape for o in outs] == [(2, 2, d) for d in DIMS]
    for o, e in zip(outs, expected):
        torch.testing.assert_close(o, e, rtol=0, atol=0)
    # Independent of the copy: sample 1, feature f1 of set 2 pools rows 2 and 3.
    w = ref.set_weights()[2]["f1"]
    torch.testing.assert_close(outs[2][1, 0], w[2] + w[3])


@pytest.mark.parametrize("layout", ["grouped", "packed"])
def test_model_forward_and_gradients_match_separate(layout: str) -> None:
    ref, other = _copy_of_separate(layout, dropout=0.0)
    batch = DS.batch("train", 0, 32)[0]
    out_ref = ref(batch.dense_features, batch.sparse_features)
    out = other(batch.dense_features, batch.sparse_features)
    torch.testing.assert_close(out, out_ref)
    out_ref.sum().backward()
    out.sum().backward()
    for k in range(len(DIMS)):
        for f in DS.feature_names:
            g_ref, g = _table_grad(ref.sparse_arch, k, f), _table_grad(other.sparse_arch, k, f)
            torch.testing.assert_close(g, g_ref, msg=f"set {k} {f}")


def _table_grad(sets: torch.nn.Module, k: int, feature: str) -> torch.Tensor:
    """Gradient of set k's table of ``feature``, whatever the layout (dense grads)."""
    if sets.layout == "packed":
        start = sum(sets.embedding_dims[:k])
        grad = sets.ebc.embedding_bags[f"packed__{feature}"].weight.grad
        return grad[:, start : start + sets.embedding_dims[k]]
    ebc = sets.ebcs[k] if sets.layout == "separate" else sets.ebc
    return ebc.embedding_bags[f"set{k}__{feature}"].weight.grad


def test_split_handles_any_key_order() -> None:
    from torchrec.sparse.jagged_tensor import KeyedTensor

    gen = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(3, d, generator=gen) for d in (4, 4, 8))
    kt = KeyedTensor.from_tensor_list(["b", "c", "a"], [b, c, a])  # a sharded EBC may reorder keys
    x, y = split_keyed_tensor(kt, [["a", "b"], ["c"]], [4, 8])
    torch.testing.assert_close(x, torch.stack([a, b], dim=1))
    torch.testing.assert_close(y, c.unsqueeze(1))


def test_job_config_refuses_packed_with_a_row_wise_optimizer() -> None:
    with pytest.raises(ConfigError, match="model.layout.*row-wise.*rowwise_adagrad"):
        load_job_config(None, ["model.layout=packed"])
    for opt in ("adagrad", "sgd"):
        assert load_job_config(None, ["model.layout=packed", f"train.sparse_optimizer={opt}"]).model.layout == "packed"
    # One set shares nothing: any optimizer is fine.
    load_job_config(None, ["model.layout=packed", "model.num_sets=1"])
    with pytest.raises(ConfigError, match="model.layout.*unknown value 'stacked'.*grouped, packed, separate"):
        load_job_config(None, ["model.layout=stacked"])
    with pytest.raises(ConfigError, match="model.layout.*collapse analysis"):
        load_job_config(None, ["model.layout=packed", "train.sparse_optimizer=sgd", "train.ia_every=10"])
    assert set(LAYOUT_REGISTRY) == {"separate", "grouped", "packed"}


def test_collapse_analysis_reads_grouped_and_refuses_packed() -> None:
    _, grouped = _copy_of_separate("grouped")
    tables = find_embedding_tables(grouped)
    assert len(tables) == len(DIMS) * len(DS.feature_names)
    assert {(t.set_index, t.dim) for t in tables.values()} == set(enumerate(DIMS))
    _, packed = _copy_of_separate("packed")
    with pytest.raises(ValueError, match="model.layout=packed"):
        find_embedding_tables(packed)
