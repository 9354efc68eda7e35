import numpy as np
import pytest
import torch
from torchrec.modules.crossnet import CrossNet

from torchrec_me.modules import DCNv2Interaction, DLRMInteraction, FusedCrossNet, LayerConfig, MLPHead


def _cross_reference(x: np.ndarray, weights, biases) -> np.ndarray:
    """DCNv2 cross layers written sample by sample: x_{l+1} = x0 * (W x_l + b) + x_l."""
    out = np.empty_like(x)
    for i, x0 in enumerate(x):
        xl = x0.copy()
        for w, b in zip(weights, biases):
            xl = x0 * (w @ xl + b) + xl
        out[i] = xl
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_crossnet_matches_dcnv2_formula(fused: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    inter = DCNv2Interaction(
        num_fields=3, embedding_dim=4, num_cross_layers=3, hidden_dim=5, layers=LayerConfig(fused=fused)
    ).double()
    assert type(inter.cross) is (FusedCrossNet if fused else CrossNet)
    with torch.no_grad():
        for b in inter.cross.bias:  # CrossNet starts with zero bias; make it count
            b.copy_(torch.randn(b.shape, generator=gen, dtype=torch.float64))
    emb = torch.randn(6, 3, 4, generator=gen, dtype=torch.float64)
    ws = [k.detach().numpy() for k in inter.cross.kernels]
    bs = [b.detach().numpy()[:, 0] for b in inter.cross.bias]
    expected = _cross_reference(emb.flatten(1).numpy(), ws, bs)
    np.testing.assert_allclose(inter.cross(emb.flatten(1)).detach().numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("fused", [True, False])
def test_dcnv2_interaction_is_cross_then_first_mlp_layer(fused: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    inter = DCNv2Interaction(
        num_fields=3, embedding_dim=4, num_cross_layers=2, hidden_dim=5, layers=LayerConfig(fused=fused)
    ).eval()
    emb = torch.randn(6, 3, 4, generator=gen)
    lin, bn = inter.mlp[0], inter.mlp[1]
    x = inter.cross(emb.flatten(1))
    z = x @ lin.weight.T + lin.bias
    z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(inter(emb), torch.relu(z))
    assert inter(emb).shape == (6, 5)


def test_head_shape() -> None:
    head = MLPHead(8, [8, 4])
    assert head(torch.randn(3, 8)).shape == (3,)
    assert len(head.hidden) == 2 and head.out.in_features == 4


def test_dlrm_interaction_is_field0_and_all_pairwise_dots() -> None:
    gen = torch.Generator().manual_seed(2)
    inter = DLRMInteraction(num_fields=4, embedding_dim=8, hidden_dim=5).eval()
    emb = torch.randn(3, 4, 8, generator=gen)
    dots = [(emb[:, i] * emb[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4)]
    x = torch.cat([emb[:, 0], torch.stack(dots, dim=1)], dim=1)
    torch.testing.assert_close(inter(emb), inter.mlp(x))
