import pytest
import torch

from torchrec_me.config import DataConfig, ModelConfig
from torchrec_me.data.synthetic import SyntheticCriteo
from torchrec_me.models import MultiEmbeddingTrain, build_model

DS = SyntheticCriteo(DataConfig(cardinality_scale=0.002))


def _model(**kw):
    cfg = ModelConfig(hidden_dim=16, num_cross_layers=2, **kw)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_model(cfg, DS.feature_names, DS.num_embeddings).eval()


def _plain_se_dcnv2(model, batch) -> torch.Tensor:
    """Single-embedding DCNv2 written out with plain tensor ops on the model's weights."""
    ids = batch.sparse_features.values().view(len(DS.feature_names), -1).t()
    ebc = model.sparse_arch.ebcs[0]
    emb = torch.stack(
        [ebc.embedding_bags[f"set0__{f}"].weight[ids[:, i]] for i, f in enumerate(DS.feature_names)], dim=1
    )
    x0 = xl = emb.flatten(1)
    inter = model.interactions[0]
    for w, b in zip(inter.cross.kernels, inter.cross.bias):
        xl = x0 * (xl @ w.T + b[:, 0]) + xl

    def block(x, seq):
        lin, bn = seq[0], seq[1]
        z = x @ lin.weight.T + lin.bias
        return torch.relu((z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias)

    h = block(block(xl, inter.mlp), model.head.hidden[0])
    return (h @ model.head.out.weight.T + model.head.out.bias)[:, 0]


@pytest.mark.parametrize("fused", [True, False])
def test_k1_me_equals_plain_se(fused: bool) -> None:
    model = _model(num_sets=1, fused_dense=fused)
    batch = DS.batch("train", 0, 16)[0]
    torch.testing.assert_close(model(batch.dense_features, batch.sparse_features), _plain_se_dcnv2(model, batch))


def test_identical_sets_average_to_the_single_set() -> None:
    se = _model(num_sets=1)
    me = _model(num_sets=3)
    for k in range(3):
        src = se.sparse_arch.ebcs[0].state_dict()
        me.sparse_arch.ebcs[k].load_state_dict({key.replace("set0__", f"set{k}__"): v for key, v in src.items()})
        me.interactions[k].load_state_dict(se.interactions[0].state_dict())
    me.head.load_state_dict(se.head.state_dict())
    batch = DS.batch("train", 1, 16)[0]
    torch.testing.assert_close(
        me(batch.dense_features, batch.sparse_features), se(batch.dense_features, batch.sparse_features)
    )


def test_train_wrapper_contract_and_all_sets_get_gradients() -> None:
    train = MultiEmbeddingTrain(_model(num_sets=3).train())
    batch = DS.batch("train", 2, 32)[0]
    loss, (loss_d, logits, labels) = train(batch)
    assert loss.requires_grad and not loss_d.requires_grad and logits.shape == labels.shape == (32,)
    torch.testing.assert_close(loss, torch.nn.functional.binary_cross_entropy_with_logits(logits, labels))
    loss.backward()
    for k, ebc in enumerate(train.model.sparse_arch.ebcs):
        grads = [p.grad for p in ebc.parameters()]
        assert all(g is not None for g in grads), k
        assert sum(float(g.abs().sum()) for g in grads) > 0, k
    for inter in train.model.interactions:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in inter.cross.kernels)


def test_per_set_dims() -> None:
    model = _model(num_sets=2, set_dims=[8, 16])
    batch = DS.batch("train", 0, 4)[0]
    outs = model.sparse_arch(batch.sparse_features)
    assert [o.shape[-1] for o in outs] == [8, 16]
    assert model(batch.dense_features, batch.sparse_features).shape == (4,)
