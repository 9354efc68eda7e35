"""Hand-written interaction layers against plainly written loops."""

import itertools

import numpy as np
import torch

from torchrec_me.modules import (
    BilinearFusion,
    CompressedInteraction,
    FeatureSelectionGate,
    FieldWeightedFM,
    InnerProduct,
)

def _randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def test_inner_product_pairs(generator: torch.Generator) -> None:
    e = _randn(generator, 3, 5, 4)
    got = InnerProduct(5)(e)
    expected = torch.stack([(e[:, i] * e[:, j]).sum(-1) for i, j in itertools.combinations(range(5), 2)], dim=1)
    torch.testing.assert_close(got, expected)


def test_field_weighted_fm_explicit_double_sum(generator: torch.Generator) -> None:
    layer = FieldWeightedFM(4).double()
    e = _randn(generator, 3, 4, 6)
    r = layer.field_weight.detach()
    expected = torch.zeros(3, 6, dtype=torch.float64)
    for i in range(4):
        for j in range(4):  # full matrix: diagonal and both triangles
            expected += r[i, j] * e[:, i] * e[:, j]
    torch.testing.assert_close(layer(e), expected)


def _cin_loop(x: np.ndarray, convs) -> np.ndarray:
    """CIN sample by sample: h^l_k = relu(sum_{i,j} W^l_{k,(i,j)} x0_i * h^{l-1}_j + b^l_k), sum-pooled over D."""
    out = []
    for x0 in x:  # (F, D)
        h = x0
        pooled = []
        for w, b in convs:  # w: (H_l, F * H_{l-1})
            nxt = np.zeros((w.shape[0], x0.shape[1]))
            for k in range(w.shape[0]):
                acc = np.full(x0.shape[1], b[k])
                for i in range(x0.shape[0]):
                    for j in range(h.shape[0]):
                        acc += w[k, i * h.shape[0] + j] * x0[i] * h[j]
                nxt[k] = np.maximum(acc, 0.0)
            h = nxt
            pooled.append(h.sum(-1))
        out.append(np.concatenate(pooled))
    return np.stack(out)


def test_cin_matches_loop(generator: torch.Generator) -> None:
    cin = CompressedInteraction(num_fields=3, layer_sizes=[4, 2]).double()
    x = _randn(generator, 2, 3, 5)
    convs = [(c.weight.detach()[:, :, 0].numpy(), c.bias.detach().numpy()) for c in cin.convs]
    got = cin(x)
    assert got.shape == (2, 6) and cin.output_dim == 6
    np.testing.assert_allclose(got.detach().numpy(), _cin_loop(x.numpy(), convs), rtol=1e-10)


def test_cin_in_chunks_matches_loop_and_one_chunk(monkeypatch, generator: torch.Generator) -> None:  # type: ignore[no-untyped-def]
    """A batch split into chunks gives the loop's outputs and the unchunked gradients."""
    cin = CompressedInteraction(num_fields=3, layer_sizes=[4, 2]).double()
    x = _randn(generator, 7, 3, 5).requires_grad_()
    convs = [(c.weight.detach()[:, :, 0].numpy(), c.bias.detach().numpy()) for c in cin.convs]
    whole = cin(x)
    (g_whole,) = torch.autograd.grad(whole.square().sum(), x)
    # Z of one sample: F * max(H) * D * 8 bytes = 3 * 4 * 5 * 8 = 480 (H_1 = 4 is the widest input).
    monkeypatch.setattr(CompressedInteraction, "CHUNK_BYTES", 2 * 480)
    assert cin.chunk_rows(x) == 2  # 7 samples -> chunks of 2, 2, 2, 1
    chunked = cin(x)
    (g_chunked,) = torch.autograd.grad(chunked.square().sum(), x)
    np.testing.assert_allclose(chunked.detach().numpy(), _cin_loop(x.detach().numpy(), convs), rtol=1e-10)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(g_chunked, g_whole)


def test_feature_selection_gate_is_two_sigmoid_of_context_mlp(generator: torch.Generator) -> None:
    gate = FeatureSelectionGate(context_dim=4, hidden_dim=8, out_features=6).double()
    torch.nn.init.normal_(gate.context, generator=generator)
    x = _randn(generator, 3, 6)
    lin1, lin2 = gate.gate[0], gate.gate[2]
    g = 2 * torch.sigmoid(lin2(torch.relu(lin1(gate.context))))
    torch.testing.assert_close(gate(x), x * g)
    torch.nn.init.zeros_(lin2.weight)
    torch.nn.init.zeros_(lin2.bias)
    torch.testing.assert_close(gate(x), x)  # a zero gate logit passes x through


def test_bilinear_fusion(generator: torch.Generator) -> None:
    fusion = BilinearFusion(3).double()
    torch.nn.init.normal_(fusion.bilinear, generator=generator)
    x, y = _randn(generator, 4, 3), _randn(generator, 4, 3)
    w = fusion.bilinear.detach()
    expected = torch.stack([x[b] @ w @ y[b] for b in range(4)])
    expected = expected + fusion.linear_x(x)[:, 0] + fusion.linear_y(y)[:, 0]
    torch.testing.assert_close(fusion(x, y), expected)
