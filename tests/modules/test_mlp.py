"""The fused ReLU + Dropout of the MLP block against its definition."""

import math

import pytest
import torch

from torchrec_me.modules.mlp import LayerConfig, ReLUDropout, mlp_block

# ReLUDropout draws its mask from the global RNG: tests that run it in training mode take
# conftest's ``torch_seed`` (seeded for the test, restored after) and draw their inputs
# from ``generator``.


def test_relu_dropout_is_relu_times_scaled_keep_mask(torch_seed: int, generator: torch.Generator) -> None:
    x = torch.randn(500, 400, generator=generator, dtype=torch.float64, requires_grad=True)
    p = 0.3
    y = ReLUDropout(p)(x)
    kept = y != 0
    # Every output is 0 or relu(x) / (1 - p); nothing kept where x <= 0.
    torch.testing.assert_close(y[kept], x.detach()[kept] / (1 - p))
    assert not bool((kept & (x.detach() <= 0)).any())
    # Among positive inputs the kept share is 1 - p, within 5 standard errors.
    n = int((x > 0).sum())
    share = float(kept.sum()) / n
    assert abs(share - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    # Gradient: d y / d x = mask / (1 - p), i.e. exactly where kept.
    g = torch.randn(y.shape, generator=generator, dtype=y.dtype)
    y.backward(g)
    torch.testing.assert_close(x.grad, torch.where(kept, g / (1 - p), torch.zeros_like(g)))


def test_relu_dropout_eval_and_zero_p_are_relu(generator: torch.Generator) -> None:
    x = torch.randn(64, 8, generator=generator)
    torch.testing.assert_close(ReLUDropout(0.0)(x), torch.relu(x))
    torch.testing.assert_close(ReLUDropout(0.5).eval()(x), torch.relu(x))


def test_relu_dropout_same_distribution_as_torch_dropout(torch_seed: int) -> None:
    """Mean and variance of the outputs of a constant input match nn.Dropout's."""
    x = torch.full((1000, 1000), 2.0)
    p = 0.2
    ours, theirs = ReLUDropout(p)(x), torch.nn.Dropout(p)(torch.relu(x))
    for a, b in ((ours.mean(), theirs.mean()), (ours.var(), theirs.var())):
        assert abs(float(a) - float(b)) < 0.01 * float(b)


def test_relu_dropout_seeded_is_reproducible(torch_seed: int, generator: torch.Generator) -> None:
    x = torch.randn(33, 17, generator=generator)  # odd element count: the last 32-bit word is half used
    torch.manual_seed(5)
    a = ReLUDropout(0.4)(x)
    torch.manual_seed(5)
    torch.testing.assert_close(ReLUDropout(0.4)(x), a)
    assert not torch.equal(ReLUDropout(0.4)(x), a)  # the next draw differs


def test_relu_dropout_refuses_bad_p() -> None:
    with pytest.raises(ValueError, match="dropout probability"):
        ReLUDropout(1.0)
    with pytest.raises(ValueError, match="dropout probability"):
        LayerConfig(dropout=-0.1)


def test_mlp_block_state_dict_keys_unchanged() -> None:
    """Checkpoints keep the Linear (0) and BatchNorm (1) names."""
    for fused in (True, False):
        keys = set(mlp_block(6, 4, LayerConfig(0.1, fused)).state_dict())
        assert {"0.weight", "0.bias", "1.weight", "1.running_mean"} <= keys
