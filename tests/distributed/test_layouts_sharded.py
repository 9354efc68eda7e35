"""The three layouts sharded over 2 gloo ranks train the same model.

One spawn for the module. Each rank builds every layout from the same weights under
DMP with FBGEMM's fused optimizer, takes one ``TrainPipelineSparseDist`` step (fused
sparse update in backward, dense Adam) and returns the logits and the per-set pooled
embeddings before and after. Packed is also run with the row-wise optimizer, which the
config refuses because it couples the sets: the test shows that it does.
"""

from typing import Any, Dict, List

import pytest
import torch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from tests.multiprocess import run_ranks
from torchrec_me.config import Config, DataConfig, ModelConfig, TrainConfig
from torchrec_me.data.synthetic import SyntheticCriteo
from torchrec_me.distributed.sharding import init_distributed, load_unsharded_state_dict, named_sharded_modules
from torchrec_me.job import build_job, build_train_module

B = 16
RUNS = [("separate", "adagrad"), ("grouped", "adagrad"), ("packed", "adagrad"),
        ("separate", "rowwise_adagrad"), ("packed", "rowwise_adagrad")]  # fmt: skip


def _cfg(layout: str, optimizer: str = "adagrad") -> Config:
    model = ModelConfig(num_sets=2, set_dims=[8, 16], hidden_dim=16, num_cross_layers=2, dropout=0.0, layout=layout)
    train = TrainConfig(batch_size=B, sparse_optimizer=optimizer, sparse_lr=0.5, dense_lr=0.01)
    return Config(data=DataConfig(cardinality_scale=0.002), model=model, train=train)


def _run(ctx: Any, ds: SyntheticCriteo, layout: str, optimizer: str, ref: Any, batches: List[Any]) -> Dict[str, Any]:
    # The same weights in this layout's table names: copy the reference's per-set tables.
    torch.manual_seed(1)
    plain = build_train_module(_cfg(layout), ds)
    plain.model.sparse_arch.load_set_weights(ref.model.sparse_arch.set_weights())
    full = {k: v for k, v in plain.state_dict().items() if "sparse_arch" in k}
    full.update({k: v for k, v in ref.state_dict().items() if "sparse_arch" not in k})

    job = build_job(_cfg(layout, optimizer), ctx, ds)
    dmp = job.model
    load_unsharded_state_dict(dmp, full)
    kjt = batches[0].sparse_features
    sets = dmp.module.model.sparse_arch
    before = [e.detach().clone() for e in sets(kjt)]
    pipeline = TrainPipelineSparseDist(dmp, job.optimizer, ctx.device)
    _, logits, _ = pipeline.progress(iter(batches))
    pipelined = len(pipeline._pipelined_modules)
    pipeline.detach()
    dmp.eval()
    with torch.no_grad():
        after = [e.clone() for e in sets(kjt)]
        logits_after = dmp(batches[0])[1][1]
    return {
        "logits": logits.detach(), "before": before, "after": after, "logits_after": logits_after,
        "pipelined": pipelined, "num_sharded": len(named_sharded_modules(dmp)),
    }  # fmt: skip


def _worker(rank: int, world_size: int) -> Dict[str, Any]:
    ctx = init_distributed("cpu")
    ds = SyntheticCriteo(DataConfig(cardinality_scale=0.002))
    batches = [ds.batch("train", g * world_size + rank, B)[0] for g in range(2)]
    torch.manual_seed(0)
    ref = build_train_module(_cfg("separate"), ds)
    return {f"{layout}/{opt}": _run(ctx, ds, layout, opt, ref, batches) for layout, opt in RUNS}


@pytest.fixture(scope="module")
def ranks() -> List[Dict[str, Any]]:
    return run_ranks(_worker, world_size=2)


@pytest.mark.parametrize("layout", ["grouped", "packed"])
def test_forward_and_fused_update_match_separate(ranks: List[Dict[str, Any]], layout: str) -> None:
    for r in ranks:
        ref, got = r["separate/adagrad"], r[f"{layout}/adagrad"]
        torch.testing.assert_close(got["logits"], ref["logits"])
        for k in range(2):
            torch.testing.assert_close(got["before"][k], ref["before"][k])
            # The step moved the tables (else the comparison below says nothing) ...
            assert (ref["after"][k] - ref["before"][k]).abs().max() > 1e-3
            # ... and moved them identically in every layout.
            torch.testing.assert_close(got["after"][k], ref["after"][k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["logits_after"], ref["logits_after"], rtol=1e-5, atol=1e-5)


def test_one_sharded_module_for_the_one_ebc_layouts(ranks: List[Dict[str, Any]]) -> None:
    for r in ranks:
        assert (r["separate/adagrad"]["num_sharded"], r["separate/adagrad"]["pipelined"]) == (2, 2)
        for layout in ("grouped", "packed"):
            assert (r[f"{layout}/adagrad"]["num_sharded"], r[f"{layout}/adagrad"]["pipelined"]) == (1, 1)


def test_row_wise_optimizer_would_couple_packed_sets(ranks: List[Dict[str, Any]]) -> None:
    # Why model.layout=packed refuses rowwise_adagrad: one state per packed row mixes the sets' updates.
    differs = False
    for r in ranks:
        ref, got = r["separate/rowwise_adagrad"], r["packed/rowwise_adagrad"]
        torch.testing.assert_close(got["before"][0], ref["before"][0])
        differs |= not torch.allclose(got["after"][0], ref["after"][0], rtol=1e-4, atol=1e-5)
    assert differs
