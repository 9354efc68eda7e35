"""The fused dense kernels against their plain TorchRec/PyTorch versions.

``FusedCrossNet`` (hand-written backward) is checked by finite differences in float64
and against TorchRec's ``CrossNet`` forward and autograd backward at the sizes DCNv2
uses; ``ReLUDropout`` against ``nn.ReLU`` + ``nn.Dropout`` where both are deterministic.
"""

from typing import List, Tuple

import pytest
import torch
from torch import nn
from torchrec.modules.crossnet import CrossNet

from torchrec_me.modules import FusedCrossNet, LayerConfig, ReLUDropout, mlp_block
from torchrec_me.modules.interactions import _FusedCrossNet


def _random_bias(cross: CrossNet, gen: torch.Generator) -> None:
    """CrossNet starts with zero biases; give them values so that their terms count."""
    with torch.no_grad():
        for b in cross.bias:
            b.copy_(0.1 * torch.randn(b.shape, generator=gen, dtype=b.dtype))


def _forward_backward(cross: CrossNet, x: torch.Tensor, upstream: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Output, input gradient and every parameter gradient for ``sum(cross(x) * upstream)``."""
    x = x.detach().clone().requires_grad_()
    out = cross(x)
    params: List[torch.Tensor] = [*cross.kernels, *cross.bias]
    grads = torch.autograd.grad(out, [x, *params], upstream)
    return (out.detach(), *grads)


@pytest.mark.parametrize("num_layers", [1, 3])
def test_fused_crossnet_gradcheck_float64(num_layers: int) -> None:
    gen = torch.Generator().manual_seed(0)
    n = 6
    x0 = torch.randn(5, n, generator=gen, dtype=torch.float64, requires_grad=True)
    kernels = [(0.5 * torch.randn(n, n, generator=gen, dtype=torch.float64)).requires_grad_() for _ in range(num_layers)]
    biases = [torch.randn(n, 1, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(num_layers)]
    assert torch.autograd.gradcheck(_FusedCrossNet.apply, (x0, *kernels, *biases), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_fused_crossnet_leaves_the_incoming_gradient_unchanged() -> None:
    """The backward updates gradients in place, but never autograd's incoming one."""
    gen = torch.Generator().manual_seed(1)
    cross = FusedCrossNet(in_features=8, num_layers=3).double()
    _random_bias(cross, gen)
    x = torch.randn(4, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    kept = upstream.clone()
    cross(x).backward(upstream)
    torch.testing.assert_close(upstream, kept, rtol=0, atol=0)


@pytest.mark.parametrize("num_layers", [0, 4])
def test_fused_crossnet_matches_torchrec_crossnet_at_dcnv2_sizes(num_layers: int) -> None:
    """DCNv2 on Criteo-like data: N = 40 fields x 12 = 480, 4 layers, batch 256, float32."""
    gen = torch.Generator().manual_seed(2)
    n, batch = 40 * 12, 256
    plain = CrossNet(in_features=n, num_layers=num_layers)
    with torch.no_grad():
        for w in plain.kernels:
            w.copy_(torch.randn(w.shape, generator=gen) * (2.0 / (2 * n)) ** 0.5)  # CrossNet's xavier_normal_
    _random_bias(plain, gen)
    fused = FusedCrossNet(in_features=n, num_layers=num_layers)
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(batch, n, generator=gen)
    upstream = torch.randn(batch, n, generator=gen)

    expected = _forward_backward(plain, x, upstream)
    got = _forward_backward(fused, x, upstream)
    names = ["output", "input grad"] + [f"kernel {i} grad" for i in range(num_layers)]
    names += [f"bias {i} grad" for i in range(num_layers)]
    assert len(got) == len(expected) == len(names)
    for name, g, e in zip(names, got, expected):
        # float32 sums over 480 and 256 terms; the two differ by about 2e-7 of the largest value.
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5 * float(e.abs().max()), msg=name)


def test_fused_crossnet_keeps_crossnet_parameters_and_state_dict() -> None:
    fused, plain = FusedCrossNet(in_features=12, num_layers=2), CrossNet(in_features=12, num_layers=2)
    assert isinstance(fused, CrossNet)
    assert {k: v.shape for k, v in fused.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_fused_and_plain_mlp_blocks_are_equal_in_eval_mode(p: float) -> None:
    gen = torch.Generator().manual_seed(3)
    fused, plain = mlp_block(24, 16, LayerConfig(p, fused=True)), mlp_block(24, 16, LayerConfig(p, fused=False))
    assert any(isinstance(m, ReLUDropout) for m in fused) and not any(isinstance(m, ReLUDropout) for m in plain)
    assert [type(m) for m in plain] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
    plain.load_state_dict(fused.state_dict())
    with torch.no_grad():  # running statistics away from (0, 1), so that the BatchNorm counts
        fused[1].running_mean.copy_(torch.randn(16, generator=gen))
        fused[1].running_var.copy_(torch.rand(16, generator=gen) + 0.5)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(32, 24, generator=gen)
    torch.testing.assert_close(fused.eval()(x), plain.eval()(x), rtol=0, atol=0)


def test_fused_and_plain_mlp_blocks_are_equal_without_dropout_in_training() -> None:
    """Training mode, p = 0: batch statistics in the BatchNorm, no random stream."""
    gen = torch.Generator().manual_seed(4)
    fused, plain = mlp_block(24, 16, LayerConfig(0.0, fused=True)), mlp_block(24, 16, LayerConfig(0.0, fused=False))
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(32, 24, generator=gen)
    xf, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_f, out_p = fused.train()(xf), plain.train()(xp)
    torch.testing.assert_close(out_f, out_p, rtol=0, atol=0)
    upstream = torch.randn(32, 16, generator=gen)
    out_f.backward(upstream)
    out_p.backward(upstream)
    torch.testing.assert_close(xf.grad, xp.grad, rtol=0, atol=0)
    for (name, a), b in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, msg=name)


def test_relu_dropout_in_training_matches_plain_dropout_given_the_same_mask() -> None:
    """With dropout on, the fused and plain outputs agree wherever both keep an element."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(200, 50, generator=gen)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fused = ReLUDropout(0.25).train()(x)
        plain = nn.Dropout(0.25).train()(nn.ReLU()(x))
    both = (fused != 0) & (plain != 0)
    assert int(both.sum()) > 0
    torch.testing.assert_close(fused[both], plain[both])
