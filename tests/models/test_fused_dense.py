"""``model.fused_dense``: one switch between the fused dense kernels and the plain ones.

The two builds of a model hold the same parameters (one state dict loads into the
other) and, with the same weights, compute the same logits and gradients wherever no
random stream is involved: eval mode, or training without dropout. The models run in
float64 here: in float32 the two paths round differently, and a pre-activation that
lands within rounding of 0 takes a different side of a ReLU, which changes that
element's gradient by a whole unit. The float32 equality of the fused cross net at
DCNv2's sizes is ``tests/modules/test_fused.py``.
"""

from typing import Tuple

import numpy as np
import pytest
import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.fx import symbolic_trace
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_me.config import DataConfig, ModelConfig
from torchrec_me.data.synthetic import SyntheticCriteo
from torchrec_me.models import BACKBONE_REGISTRY, MultiEmbeddingModel, build_model, set_mean
from torchrec_me.models.me_model import MultiEmbeddingTrain
from torchrec_me.modules import FusedCrossNet, ReLUDropout

DS = SyntheticCriteo(DataConfig(cardinality_scale=0.002))
BACKBONES = sorted(BACKBONE_REGISTRY)
FUSED_MODULES = (FusedCrossNet, ReLUDropout)


@pytest.fixture(scope="module")
def batch() -> Batch:
    return DS.batch("train", 0, 32)[0]


def _pair(
    backbone: str, dropout: float, num_dense: int = 0, dtype: torch.dtype = torch.float64
) -> Tuple[MultiEmbeddingModel, MultiEmbeddingModel]:
    """(fused, plain) builds of one model, the plain one loaded with the fused one's weights."""
    models = []
    for seed, fused in ((0, True), (1, False)):
        cfg = ModelConfig(
            backbone=backbone, num_sets=3, hidden_dim=16, num_cross_layers=2, fs_hidden_dim=8, cin_layer_sizes=[4, 4],
            dense_hidden_dims=[8], dropout=dropout, fused_dense=fused,
        )  # fmt: skip
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            models.append(build_model(cfg, DS.feature_names, DS.num_embeddings, num_dense=num_dense))
    fused_model, plain_model = (m.to(dtype) for m in models)
    plain_model.load_state_dict(fused_model.state_dict(), strict=True)
    return fused_model, plain_model


def _logits(model: MultiEmbeddingModel, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
    """The model's logits in float64 (TorchRec's EBC returns float32 whatever its weights)."""
    return model._logits(dense.double(), [e.double() for e in model.sparse_arch(kjt)])


def _assert_same_grads(fused: nn.Module, plain: nn.Module) -> None:
    grads_p = {name: p.grad for name, p in plain.named_parameters()}
    for name, p in fused.named_parameters():
        assert p.grad is not None and grads_p[name] is not None, name
        # The tables' gradients pass the EBC's float32 output: float32 rounding, once.
        rtol = 1e-6 if name.startswith("sparse_arch.") else 1e-9
        torch.testing.assert_close(p.grad, grads_p[name], rtol=rtol, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_plain_build_has_no_fused_module_and_fused_build_has_them(backbone: str) -> None:
    fused, plain = _pair(backbone, dropout=0.2)
    assert not any(isinstance(m, FUSED_MODULES) for m in plain.modules())
    assert not plain.fused and fused.fused
    assert any(isinstance(m, ReLUDropout) for m in fused.modules())
    assert any(isinstance(m, FusedCrossNet) for m in fused.modules()) == (backbone == "dcnv2")
    assert any(isinstance(m, nn.Dropout) for m in plain.modules())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fused_and_plain_agree_in_eval_mode(backbone: str, batch: Batch) -> None:
    fused, plain = _pair(backbone, dropout=0.2)
    fused.eval(), plain.eval()
    out_f = _logits(fused, batch.dense_features, batch.sparse_features)
    out_p = _logits(plain, batch.dense_features, batch.sparse_features)
    torch.testing.assert_close(out_f, out_p, rtol=1e-10, atol=1e-12)
    out_f.sum().backward()
    out_p.sum().backward()
    _assert_same_grads(fused, plain)


@pytest.mark.parametrize("backbone", ["dcnv2", "dlrm", "xdeepfm"])
def test_fused_and_plain_agree_in_training_without_dropout(backbone: str) -> None:
    """Batch-statistics BatchNorm and dense features as field 0, through the BCE loss."""
    fused, plain = _pair(backbone, dropout=0.0, num_dense=4)
    batch = DS.batch("train", 1, 32)[0]
    dense = torch.randn(32, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = batch.labels.double()
    losses = []
    for model in (fused.train(), plain.train()):
        logits = _logits(model, dense, batch.sparse_features)
        losses.append(nn.functional.binary_cross_entropy_with_logits(logits, labels))
        losses[-1].backward()
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=0)
    _assert_same_grads(fused, plain)


@pytest.mark.parametrize("fused", [True, False])
def test_set_mean_is_the_mean_over_sets(fused: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = [torch.randn(5, 7, generator=gen, dtype=torch.float64) for _ in range(4)]
    expected = np.mean(np.stack([h.numpy() for h in hidden]), axis=0)
    np.testing.assert_allclose(set_mean(hidden, fused).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(set_mean(hidden[:1], fused).numpy(), hidden[0].numpy(), rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_both_builds_trace_for_the_train_pipeline(fused: bool, batch: Batch) -> None:
    """``TrainPipelineSparseDist`` traces the model with torchrec's fx tracer."""
    fused_model, plain_model = _pair("dcnv2", dropout=0.2, dtype=torch.float32)
    module = MultiEmbeddingTrain(fused_model if fused else plain_model).eval()
    traced = symbolic_trace(module)
    torch.testing.assert_close(traced(batch)[1][1], module(batch)[1][1], rtol=0, atol=0)
