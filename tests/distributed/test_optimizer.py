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
