"""The dense optimizer: Adam's fused kernel, with the multi-tensor Adam's math."""

import copy

import torch
from torch import nn

from torchrec_me.config import TrainConfig
from torchrec_me.distributed.sharding import build_optimizer


def test_dense_adam_is_fused_and_matches_multi_tensor_adam() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 1))
    twin = copy.deepcopy(model)
    start = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(dense_lr=0.01, dense_weight_decay=1e-4)
    ours = build_optimizer(model, cfg)
    inner = [o for _, o in ours.optimizers][0]._optimizer
    assert isinstance(inner, torch.optim.Adam) and inner.defaults["fused"]
    reference = torch.optim.Adam(twin.parameters(), lr=0.01, weight_decay=1e-4, foreach=True)
    x = torch.randn(16, 7)
    for _ in range(3):
        for m, opt in ((model, ours), (twin, reference)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), start))  # it trained
