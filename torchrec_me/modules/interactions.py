"""Per-set interaction modules: one set's (B, F, D) embeddings -> a (B, H) vector.

Each multi-embedding backbone instantiates one of these per set, so the K sets never
share interaction weights (the paper's point: set-specific interaction is what keeps
the sets from collapsing into the same subspace). Each module ends where the reference
code's per-set part ends (usually after the first MLP layer); the rest is the shared
head in ``torchrec_me.modules.heads``. ``output_dim`` is H.

Shapes: B batch, F fields, D this set's embedding dim, H the hidden width.
"""

from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torchrec.models.dlrm import InteractionArch
from torchrec.modules.crossnet import CrossNet

from torchrec_me.modules.layers import CompressedInteraction, FeatureSelectionGate, FieldWeightedFM, InnerProduct
from torchrec_me.modules.mlp import mlp_block


class DNNInteraction(nn.Module):
    """DNN: flatten, then the first MLP layer. (B, F, D) -> (B, H)."""

    def __init__(self, num_fields: int, embedding_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.mlp = mlp_block(num_fields * embedding_dim, hidden_dim, dropout)
        self.output_dim = hidden_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp(embeddings.flatten(1))


class IPNNInteraction(nn.Module):
    """IPNN: [flattened embeddings ‖ pairwise inner products], then the first MLP layer.

    The reference SE model feeds both parts, its ME model only the products; we use the
    original PNN definition (both) for SE and ME alike, so ME with K = 1 is the SE model.
    (B, F, D) -> (B, H).
    """

    def __init__(self, num_fields: int, embedding_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.products = InnerProduct(num_fields)
        in_features = num_fields * embedding_dim + num_fields * (num_fields - 1) // 2
        self.mlp = mlp_block(in_features, hidden_dim, dropout)
        self.output_dim = hidden_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([embeddings.flatten(1), self.products(embeddings)], dim=1))


class NFwFMInteraction(nn.Module):
    """NFwFM: field-weighted bi-interaction to a D-vector, BatchNorm, Dropout, first MLP layer.

    (B, F, D) -> (B, H).
    """

    def __init__(self, num_fields: int, embedding_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.fwfm = FieldWeightedFM(num_fields)
        self.norm = nn.Sequential(nn.BatchNorm1d(embedding_dim), nn.Dropout(dropout))
        self.mlp = mlp_block(embedding_dim, hidden_dim, dropout)
        self.output_dim = hidden_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(self.fwfm(embeddings)))


class XDeepFMInteraction(nn.Module):
    """xDeepFM: a CIN and the first MLP layer side by side, concatenated.

    Output ``[cin (C) ‖ mlp (H)]``; the head averages each part over sets, sends the CIN
    part to a shared Linear and the MLP part to the shared MLP, and adds the logits.
    (B, F, D) -> (B, C + H) with C = sum(cin_layer_sizes).
    """

    def __init__(
        self, num_fields: int, embedding_dim: int, hidden_dim: int, dropout: float, cin_layer_sizes: Sequence[int]
    ) -> None:
        super().__init__()
        self.cin = CompressedInteraction(num_fields, cin_layer_sizes)
        self.mlp = mlp_block(num_fields * embedding_dim, hidden_dim, dropout)
        self.output_dim = self.cin.output_dim + hidden_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cin(embeddings), self.mlp(embeddings.flatten(1))], dim=1)


class _FusedCrossNet(torch.autograd.Function):
    """TorchRec ``CrossNet``'s math with fused kernels and a hand-written backward.

    Forward per layer: ``z = addmm(b, x_l, W^T)`` and ``x_{l+1} = addcmul(x_l, x0, z)``
    (two kernels instead of CrossNet's matmul, bias add, mul and add on (B, N, 1)
    views). Backward per layer, with g = dL/dx_{l+1}: ``gz = g * x0``,
    ``g_x0 += g * z`` (in place), ``dW = gz^T x_l``, ``db = sum_B gz``,
    ``g <- g + gz W`` (in place, one GEMM); autograd would add two more passes over (B, N).
    Saves x_l and z_l per layer, as autograd does. Once differentiable.
    """

    @staticmethod
    def forward(ctx: Any, x0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        num_layers = len(params) // 2
        kernels, biases = params[:num_layers], params[num_layers:]
        xs, zs = [], []
        xl = x0
        for w, b in zip(kernels, biases):
            z = torch.addmm(b.view(1, -1), xl, w.t())
            xs.append(xl)
            zs.append(z)
            xl = torch.addcmul(xl, x0, z)
        ctx.num_layers = num_layers
        ctx.save_for_backward(x0, *kernels, *xs, *zs)
        return xl

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        n = ctx.num_layers
        saved = ctx.saved_tensors
        x0, kernels, xs, zs = saved[0], saved[1 : 1 + n], saved[1 + n : 1 + 2 * n], saved[1 + 2 * n :]
        grad_kernels: List[torch.Tensor] = [grad] * n
        grad_biases: List[torch.Tensor] = [grad] * n
        grad_x0 = torch.mul(grad, zs[-1])
        g = grad
        for layer in reversed(range(n)):
            if layer < n - 1:
                grad_x0.addcmul_(g, zs[layer])
            gz = g * x0
            grad_kernels[layer] = gz.t().mm(xs[layer])
            grad_biases[layer] = gz.sum(0).unsqueeze(1)
            # The incoming gradient is autograd's; later ones are ours to update in place.
            g = torch.addmm(g, gz, kernels[layer]) if layer == n - 1 else g.addmm_(gz, kernels[layer])
        return (grad_x0.add_(g), *grad_kernels, *grad_biases)


@torch.fx.wrap
def cross_net(x0: torch.Tensor, cross: CrossNet) -> torch.Tensor:
    """``cross(x0)`` through the fused kernels of :class:`_FusedCrossNet`; (B, N) -> (B, N).

    Same parameters and the same math as TorchRec's ``CrossNet`` (up to float
    rounding); on 2 CPU cores a DCNv2 training step is about 5% faster. A leaf for
    ``torch.fx``, so ``TrainPipelineSparseDist`` traces the model around it.
    """
    kernels, biases = list(cross.kernels), list(cross.bias)
    if not kernels:
        return x0
    return _FusedCrossNet.apply(x0, *kernels, *biases)


class DCNv2Interaction(nn.Module):
    """DCNv2 (stacked) for one set: full-rank cross network, then the first MLP layer.

    Matches ``MultiDCNnew2`` of the reference code: on the flattened input
    ``x0 = flatten(E)`` of width N = F * D, each cross layer computes
    ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l`` with a full N x N ``W_l``; TorchRec's
    ``CrossNet`` is exactly this and holds the parameters, evaluated through the fused
    kernels of :func:`cross_net`. The first MLP layer (Linear, BatchNorm, ReLU,
    Dropout) follows. (B, F, D) -> (B, H).

    Args:
        num_fields (int): F.
        embedding_dim (int): D of this set.
        num_cross_layers (int): cross layers (the paper uses 4).
        hidden_dim (int): H, width of the first MLP layer (the paper's 400).
        dropout (float): dropout of the MLP layer.

    Example::

        inter = DCNv2Interaction(num_fields=39, embedding_dim=12, num_cross_layers=4, hidden_dim=400, dropout=0.0)
        h = inter(torch.randn(8, 39, 12))  # (8, 400)
    """

    def __init__(
        self, num_fields: int, embedding_dim: int, num_cross_layers: int, hidden_dim: int, dropout: float
    ) -> None:
        super().__init__()
        n = num_fields * embedding_dim
        self.cross = CrossNet(in_features=n, num_layers=num_cross_layers)
        self.mlp = mlp_block(n, hidden_dim, dropout)
        self.output_dim = hidden_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp(cross_net(embeddings.flatten(1), self.cross))


class FinalMLPInteraction(nn.Module):
    """FinalMLP's two streams for one set: [feature-selection gate] -> MLP (H, H), twice.

    Both streams read the flattened embeddings, each through its own gate (when
    ``feature_selection``). The shared head fuses the set-averaged streams bilinearly.
    (B, F, D) -> (B, 2H): ``[stream 1 ‖ stream 2]``.
    """

    def __init__(
        self,
        num_fields: int,
        embedding_dim: int,
        hidden_dim: int,
        dropout: float,
        feature_selection: bool,
        fs_hidden_dim: int,
    ) -> None:
        super().__init__()
        n = num_fields * embedding_dim

        def stream() -> nn.Sequential:
            gate = FeatureSelectionGate(embedding_dim, fs_hidden_dim, n) if feature_selection else nn.Identity()
            return nn.Sequential(gate, mlp_block(n, hidden_dim, dropout), mlp_block(hidden_dim, hidden_dim, dropout))

        self.stream1 = stream()
        self.stream2 = stream()
        self.output_dim = 2 * hidden_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        flat = embeddings.flatten(1)
        return torch.cat([self.stream1(flat), self.stream2(flat)], dim=1)


class DLRMInteraction(nn.Module):
    """DLRM for one set: TorchRec's dot interaction, then the first over-arch layer.

    ``torchrec.models.dlrm.InteractionArch`` takes a dense vector and F' sparse vectors
    and returns ``[dense ‖ all pairwise dots]``. Field 0 of the input plays the dense
    vector: with dense features (DLRM convention) the model puts their projection there;
    without them it is the first categorical field. (B, F, D) -> (B, H).
    """

    def __init__(self, num_fields: int, embedding_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.inter = InteractionArch(num_sparse_features=num_fields - 1)
        self.mlp = mlp_block(embedding_dim + num_fields * (num_fields - 1) // 2, hidden_dim, dropout)
        self.output_dim = hidden_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.inter(embeddings[:, 0], embeddings[:, 1:]))
