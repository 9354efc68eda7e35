"""The dense optimizer: Adam's fused kernel, with the multi-tensor Adam's math."""

import copy

import torch
from torch import nn

import pytest

from torchrec_me.distributed.optimizers import build_optimizer


@pytest.mark.parametrize("fused", [True, False])
def test_dense_adam_fused_or_plain_matches_multi_tensor_adam(fused: bool) -> None:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    twin = copy.deepcopy(model)
    start = [p.detach().clone() for p in model.parameters()]
    ours = build_optimizer(model, lr=0.01, weight_decay=1e-4, fused=fused)
    inner = [o for _, o in ours.optimizers][0]._optimizer
    assert isinstance(inner, torch.optim.Adam) and bool(inner.defaults["fused"]) == fused
    reference = torch.optim.Adam(twin.parameters(), lr=0.01, weight_decay=1e-4, foreach=True)
    x = torch.randn(16, 7, generator=g)
    for _ in range(3):
        for m, opt in ((model, ours), (twin, reference)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), start))  # it trained


def test_table_adam_steps_every_row_with_its_own_lr() -> None:
    """``adam_dense``: the tables get torch Adam at ``table_lr`` (no weight decay), the rest
    AdamW at the dense lr; a row absent from the second batch still moves (momentum),
    as in the reference's Adam over an ``nn.Embedding``."""
    from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

    torch.manual_seed(0)
    ec = EmbeddingCollection([EmbeddingConfig(name="t", embedding_dim=4, num_embeddings=6, feature_names=["f"])])
    head = nn.Linear(4, 1)
    model = nn.ModuleDict({"ec": ec, "head": head})
    twin = copy.deepcopy(model)
    ours = build_optimizer(model, lr=0.01, weight_decay=0.1, kind="adamw", betas=(0.9, 0.98), table_lr=0.05)
    table_ref = torch.optim.Adam(twin["ec"].parameters(), lr=0.05, betas=(0.9, 0.98), eps=1e-8)
    dense_ref = torch.optim.AdamW(twin["head"].parameters(), lr=0.01, weight_decay=0.1, betas=(0.9, 0.98))
    batches = [torch.tensor([0, 1, 2]), torch.tensor([1, 2])]  # row 0 only in the first
    before = ec.embeddings["t"].weight.detach().clone()
    for ids in batches:
        kjt = KeyedJaggedTensor.from_lengths_sync(["f"], ids, torch.tensor([len(ids)]))
        for m, opts in ((model, [ours]), (twin, [table_ref, dense_ref])):
            for o in opts:
                o.zero_grad()
            m["head"](m["ec"](kjt)["f"].values()).square().mean().backward()
            for o in opts:
                o.step()
        if ids.numel() == 3:
            after_first = ec.embeddings["t"].weight.detach().clone()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)
    weight = ec.embeddings["t"].weight.detach()
    assert not torch.equal(weight[0], after_first[0])  # absent from batch 2, moved by momentum
    assert torch.equal(weight[3:], before[3:])  # never read: zero moments, no step
