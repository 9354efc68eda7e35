"""Every backbone x {SE, ME} x scale builds and trains; presets, ablations, regularisers."""

import contextlib
import itertools
from typing import Iterator, List

import numpy as np
import pytest
import torch

from torchrec_me.config import ConfigError, DataConfig, ModelConfig
from torchrec_me.data.synthetic import SyntheticCriteo
from torchrec_me.job import load_job_config
from torchrec_me.models import BACKBONE_REGISTRY, PRESET_REGISTRY, MultiEmbeddingTrain, build_model
from torchrec_me.modules import MultiEmbeddingBagCollection
from torchrec_me.modules.regularizers import singular_value_regularization, space_similarity_regularization

DS = SyntheticCriteo(DataConfig(cardinality_scale=0.002))
BACKBONES = sorted(BACKBONE_REGISTRY)
SMALL = {"hidden_dim": 32, "num_cross_layers": 2, "fs_hidden_dim": 16}


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Module initialisation draws from the global RNG: seed it inside this block only."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def _cfg(preset: str, **kw) -> ModelConfig:
    return ModelConfig(**{**PRESET_REGISTRY[preset], **SMALL, **kw})


def _train_steps(cfg: ModelConfig, steps: int = 2, batch: int = 32) -> MultiEmbeddingTrain:
    with _seeded(0):
        module = MultiEmbeddingTrain(build_model(cfg, DS.feature_names, DS.num_embeddings))
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    for step in range(steps):
        opt.zero_grad()
        loss, (_, logits, _) = module(DS.batch("train", step, batch)[0])
        assert torch.isfinite(loss) and logits.shape == (batch,)
        loss.backward()
        for k, ebc in enumerate(module.model.sparse_arch.ebcs):
            assert sum(float(p.grad.abs().sum()) for p in ebc.parameters()) > 0, f"set {k} got no gradient"
        opt.step()
    return module


def test_preset_grid() -> None:
    assert set(BACKBONES) == {"dnn", "ipnn", "nfwfm", "xdeepfm", "dcnv2", "finalmlp", "dlrm"}
    for b in BACKBONES:
        base = BACKBONE_REGISTRY[b].base_dim
        assert base % 4 == 0
        for s in (1, 2, 3, 4, 10):
            se = PRESET_REGISTRY[f"{b}-se-{s}x"]
            assert (se["num_sets"], se["embedding_dim"]) == (1, base * s)
        for s in (2, 3, 4, 10):
            me = PRESET_REGISTRY[f"{b}-me-{s}x"]
            assert (me["num_sets"], me["embedding_dim"]) == (s, base)
        assert f"{b}-me-1x" not in PRESET_REGISTRY  # ME-1x is SE-1x: one name
    assert len(PRESET_REGISTRY) == len(BACKBONES) * 9
    assert BACKBONE_REGISTRY["dcnv2"].base_dim == 12 and BACKBONE_REGISTRY["nfwfm"].base_dim == 48


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("scale", [2, 3, 4, 10])
def test_se_and_me_have_equal_embedding_parameters(backbone: str, scale: int) -> None:
    def count(preset: str) -> int:
        cfg = ModelConfig(**PRESET_REGISTRY[preset])
        arch = MultiEmbeddingBagCollection(DS.feature_names, DS.num_embeddings, cfg.dims(), device=torch.device("meta"))
        return sum(p.numel() for p in arch.parameters())

    se, me = count(f"{backbone}-se-{scale}x"), count(f"{backbone}-me-{scale}x")
    assert se == me == sum(DS.num_embeddings) * BACKBONE_REGISTRY[backbone].base_dim * scale


@pytest.mark.parametrize(
    "preset",
    [
        pytest.param(p, marks=pytest.mark.slow) if p.endswith("-10x") else p  # the 10x models take the lane's time
        for p in PRESET_REGISTRY
        if p.rsplit("-", 1)[1] in ("1x", "2x", "4x", "10x")
    ],
)
def test_every_preset_trains_unsharded(preset: str) -> None:
    _train_steps(_cfg(preset))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_heterogeneous_set_dims(backbone: str) -> None:
    module = _train_steps(ModelConfig(backbone=backbone, num_sets=3, set_dims=[8, 16, 32], **SMALL), steps=1)
    outs = module.model.sparse_arch(DS.batch("train", 0, 4)[0].sparse_features)
    assert [o.shape[-1] for o in outs] == [8, 16, 32]


def test_preset_selection_from_the_command_line() -> None:
    cfg = load_job_config(None, ["model=xdeepfm-me-4x", "model.dropout=0.2"])
    assert (cfg.model.backbone, cfg.model.num_sets, cfg.model.embedding_dim, cfg.model.dropout) == ("xdeepfm", 4, 12, 0.2)
    cfg = load_job_config(None, ["model=nfwfm-se-2x"])
    assert (cfg.model.num_sets, cfg.model.embedding_dim) == (1, 96)
    for unknown in ("dcnv2-me-5x", "dcnv2-me-1x"):
        with pytest.raises(ConfigError, match=f"'model'.*unknown preset '{unknown}'"):
            load_job_config(None, [f"model={unknown}"])


def test_shared_interaction_ablation() -> None:
    shared = build_model(_cfg("dcnv2-me-4x", shared_interaction=True), DS.feature_names, DS.num_embeddings)
    separate = build_model(_cfg("dcnv2-me-4x"), DS.feature_names, DS.num_embeddings)
    assert len(shared.interactions) == 1 and len(separate.interactions) == 4
    n_inter = sum(p.numel() for p in shared.interactions.parameters())
    assert 4 * n_inter == sum(p.numel() for p in separate.interactions.parameters())
    # The one module reads every set: the model equals the mean of it applied per set.
    shared.eval()
    batch = DS.batch("train", 0, 8)[0]
    per_set = shared.sparse_arch(batch.sparse_features)
    expected = shared.head(torch.stack([shared.interactions[0](e) for e in per_set]).mean(0))
    torch.testing.assert_close(shared(batch.dense_features, batch.sparse_features), expected)
    with pytest.raises(ConfigError, match="model.shared_interaction.*equal set dims"):
        load_job_config(None, ["model.num_sets=2", "model.set_dims=[8, 16]", "model.shared_interaction=true"])


def _np_singular_value(per_set: List[np.ndarray]) -> float:
    terms = []
    for e in per_set:
        for f in range(e.shape[1]):
            s = np.linalg.svd(e[:, f, :], compute_uv=False)
            terms.append(np.var(s / s.mean(), ddof=1))
    return float(np.mean(terms))


def _np_space_similarity(per_set: List[np.ndarray]) -> float:
    values = []
    for i, j in itertools.combinations(range(len(per_set)), 2):
        i, j = j, i  # pairs with i > j
        s = [np.linalg.svd(per_set[i][:, f, :].T @ per_set[j][:, f, :], compute_uv=False) for f in range(per_set[0].shape[1])]
        values.append(np.mean(s, axis=0))
    return float(np.mean(np.concatenate(values) ** 2))


def test_regularizers_match_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    per_set = [torch.randn(64, 5, d, generator=g, dtype=torch.float64) for d in (8, 8, 16)]
    arrays = [p.numpy() for p in per_set]
    assert singular_value_regularization(per_set).item() == pytest.approx(_np_singular_value(arrays), rel=1e-9)
    assert space_similarity_regularization(per_set).item() == pytest.approx(_np_space_similarity(arrays), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        space_similarity_regularization(per_set[:1])


@pytest.mark.parametrize("regularizer, preset", [("singular_value", "dcnv2-se-2x"), ("space_similarity", "dcnv2-me-2x")])
def test_regularizer_enters_the_loss_and_lowers_its_term(regularizer: str, preset: str) -> None:
    with _seeded(0):
        plain = build_model(_cfg(preset, dropout=0.0), DS.feature_names, DS.num_embeddings)
    with _seeded(0):
        reg_model = build_model(
            _cfg(preset, dropout=0.0, regularizer=regularizer, reg_weight=0.5), DS.feature_names, DS.num_embeddings
        )
    batch = DS.batch("train", 0, 64)[0]
    loss_plain = MultiEmbeddingTrain(plain)(batch)[0]
    loss_reg = MultiEmbeddingTrain(reg_model)(batch)[0]
    term = 0.5 * reg_model.regularizer(reg_model.sparse_arch(batch.sparse_features))
    torch.testing.assert_close(loss_reg - loss_plain, term, rtol=1e-4, atol=1e-6)
    # Descending on the regulariser alone moves the embeddings to shrink it.
    opt = torch.optim.SGD(reg_model.sparse_arch.parameters(), lr=0.5)
    before = float(term.detach())
    for _ in range(10):
        opt.zero_grad()
        value = reg_model.regularizer(reg_model.sparse_arch(batch.sparse_features))
        value.backward()
        opt.step()
    after = 0.5 * float(reg_model.regularizer(reg_model.sparse_arch(batch.sparse_features)).detach())
    assert after < 0.9 * before


def test_space_similarity_needs_two_sets() -> None:
    with pytest.raises(ConfigError, match="model.regularizer.*num_sets >= 2"):
        load_job_config(None, ["model.num_sets=1", "model.regularizer=space_similarity"])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_dense_features_enter_as_one_more_field(backbone: str) -> None:
    cfg = ModelConfig(backbone=backbone, num_sets=2, set_dims=[8, 16], dense_hidden_dims=[8], **SMALL)
    with _seeded(0):
        model = build_model(cfg, DS.feature_names, DS.num_embeddings, num_dense=5)
    batch = DS.batch("train", 0, 16)[0]
    dense = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    logits = model(dense, batch.sparse_features)
    assert logits.shape == (16,)
    logits.sum().backward()
    for arch, dim in zip(model.dense_archs, [8, 16]):
        assert arch(dense).shape == (16, dim)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in arch.parameters())
    model.eval()
    assert not torch.allclose(model(dense, batch.sparse_features), model(dense + 1, batch.sparse_features))
