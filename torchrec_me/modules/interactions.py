"""Per-set interaction modules: one set's (B, F, D) embeddings -> a (B, H) vector.

Each multi-embedding backbone instantiates one of these per set, so the K sets never
share interaction weights (the paper's point: set-specific interaction is what keeps
the sets from collapsing into the same subspace). Each module ends where the reference
code's per-set part ends (usually after the first MLP layer); the rest is the shared
head in ``torchrec_me.modules.heads``. ``output_dim`` is the width of the output, H for
most. Shape letters as in :mod:`torchrec_me.modules`; H is the hidden width.

Every module takes a :class:`~torchrec_me.modules.mlp.LayerConfig`: the dropout of its
hidden layers and whether they run on torchrec_me's fused kernels or on the plain
PyTorch/TorchRec modules (same parameters, same math).
"""

from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torchrec.models.dlrm import InteractionArch
from torchrec.modules.crossnet import CrossNet

from torchrec_me.modules.layers import CompressedInteraction, FeatureSelectionGate, FieldWeightedFM, InnerProduct
from torchrec_me.modules.mlp import LayerConfig, mlp_block


class DNNInteraction(nn.Module):
    """DNN for one set: flatten, then the first MLP layer.

    Input (B, F, D); output (B, H).

    Args:
        num_fields (int): F.
        embedding_dim (int): D, this set's embedding dim.
        hidden_dim (int): H, width of the MLP layer on the flattened (B, F * D) input.
        layers (LayerConfig): its dropout and fused/plain ReLU + Dropout.

    Example::

        inter = DNNInteraction(num_fields=4, embedding_dim=12, hidden_dim=16)
        h = inter(torch.randn(8, 4, 12))  # (8, 16)
    """

    def __init__(
        self, num_fields: int, embedding_dim: int, hidden_dim: int, layers: LayerConfig = LayerConfig()
    ) -> None:
        super().__init__()
        self.mlp = mlp_block(num_fields * embedding_dim, hidden_dim, layers)
        self.output_dim = hidden_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embeddings (torch.Tensor): (B, F, D), one set's embeddings.

        Returns:
            torch.Tensor: (B, H).
        """
        return self.mlp(embeddings.flatten(1))


class IPNNInteraction(nn.Module):
    """IPNN for one set: [flattened embeddings ‖ pairwise inner products], first MLP layer.

    The reference SE model feeds both parts, its ME model only the products; we use the
    original PNN definition (both) for SE and ME alike, so ME with K = 1 is the SE model.
    The products are :class:`~torchrec_me.modules.layers.InnerProduct`, written by hand.

    Input (B, F, D); output (B, H).

    Args:
        num_fields (int): F; the products layer has F (F - 1) / 2 outputs.
        embedding_dim (int): D of this set.
        hidden_dim (int): H, width of the MLP layer on [embeddings ‖ products].
        layers (LayerConfig): dropout and fused/plain ReLU + Dropout of that layer.

    Example::

        inter = IPNNInteraction(num_fields=4, embedding_dim=12, hidden_dim=16)
        h = inter(torch.randn(8, 4, 12))  # (8, 16)
    """

    def __init__(
        self, num_fields: int, embedding_dim: int, hidden_dim: int, layers: LayerConfig = LayerConfig()
    ) -> None:
        super().__init__()
        self.products = InnerProduct(num_fields)
        in_features = num_fields * embedding_dim + num_fields * (num_fields - 1) // 2
        self.mlp = mlp_block(in_features, hidden_dim, layers)
        self.output_dim = hidden_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embeddings (torch.Tensor): (B, F, D), one set's embeddings.

        Returns:
            torch.Tensor: (B, H).
        """
        return self.mlp(torch.cat([embeddings.flatten(1), self.products(embeddings)], dim=1))


class NFwFMInteraction(nn.Module):
    """NFwFM for one set: field-weighted bi-interaction, BatchNorm, Dropout, first MLP layer.

    The bi-interaction is :class:`~torchrec_me.modules.layers.FieldWeightedFM`, written
    by hand (TorchRec's ``FactorizationMachine`` has no field weights).

    Input (B, F, D); output (B, H).

    Args:
        num_fields (int): F.
        embedding_dim (int): D of this set.
        hidden_dim (int): H, width of the MLP layer on the (B, D) bi-interaction.
        layers (LayerConfig): dropout (also after the BatchNorm) and fused/plain kernels.

    Example::

        inter = NFwFMInteraction(num_fields=4, embedding_dim=48, hidden_dim=16)
        h = inter(torch.randn(8, 4, 48))  # (8, 16)
    """

    def __init__(
        self, num_fields: int, embedding_dim: int, hidden_dim: int, layers: LayerConfig = LayerConfig()
    ) -> None:
        super().__init__()
        self.fwfm = FieldWeightedFM(num_fields)
        self.norm = nn.Sequential(nn.BatchNorm1d(embedding_dim), nn.Dropout(layers.dropout))
        self.mlp = mlp_block(embedding_dim, hidden_dim, layers)
        self.output_dim = hidden_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embeddings (torch.Tensor): (B, F, D), one set's embeddings.

        Returns:
            torch.Tensor: (B, H).
        """
        return self.mlp(self.norm(self.fwfm(embeddings)))


class XDeepFMInteraction(nn.Module):
    """xDeepFM for one set: a CIN and the first MLP layer side by side, concatenated.

    The CIN is :class:`~torchrec_me.modules.layers.CompressedInteraction`, written by
    hand. The head (:class:`~torchrec_me.modules.heads.XDeepFMHead`) averages each part
    over sets, sends the CIN part to a shared Linear and the MLP part to the shared MLP,
    and adds the logits.

    Input (B, F, D); output (B, C + H), ``[cin (C) ‖ mlp (H)]`` with C = sum(cin_layer_sizes).

    Args:
        num_fields (int): F.
        embedding_dim (int): D of this set.
        hidden_dim (int): H, width of the MLP layer beside the CIN.
        cin_layer_sizes (Sequence[int]): CIN layer sizes (the paper uses 16, 16).
        layers (LayerConfig): dropout and fused/plain kernels of the MLP part.

    Example::

        inter = XDeepFMInteraction(num_fields=4, embedding_dim=12, hidden_dim=16, cin_layer_sizes=[16, 16])
        h = inter(torch.randn(8, 4, 12))  # (8, 48)
    """

    def __init__(
        self,
        num_fields: int,
        embedding_dim: int,
        hidden_dim: int,
        cin_layer_sizes: Sequence[int],
        layers: LayerConfig = LayerConfig(),
    ) -> None:
        super().__init__()
        self.cin = CompressedInteraction(num_fields, cin_layer_sizes)
        self.mlp = mlp_block(num_fields * embedding_dim, hidden_dim, layers)
        self.output_dim = self.cin.output_dim + hidden_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embeddings (torch.Tensor): (B, F, D), one set's embeddings.

        Returns:
            torch.Tensor: (B, C + H), ``[cin ‖ mlp]``.
        """
        return torch.cat([self.cin(embeddings), self.mlp(embeddings.flatten(1))], dim=1)


class _FusedCrossNet(torch.autograd.Function):
    """TorchRec ``CrossNet``'s math with fused kernels and a hand-written backward.

    Forward per layer: ``z = addmm(b, x_l, W^T)`` and ``x_{l+1} = addcmul(x_l, x0, z)``
    (two kernels instead of CrossNet's matmul, bias add, mul and add on (B, N, 1)
    views). Backward per layer, with g = dL/dx_{l+1}: ``gz = g * x0``,
    ``g_x0 += g * z`` (in place), ``dW = gz^T x_l``, ``db = sum_B gz``,
    ``g <- g + gz W`` (in place, one GEMM), where autograd would make two more passes
    over (B, N). Saves x_l and z_l per layer, as autograd does. Once differentiable.

    ``apply(x0, W_0, ..., W_{L-1}, b_0, ..., b_{L-1})`` with x0 (B, N), W_l (N, N) and
    b_l (N, 1), TorchRec's parameter shapes; returns x_L (B, N).
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
    rounding). A leaf for ``torch.fx``, so ``TrainPipelineSparseDist`` traces the model
    around it.
    """
    kernels, biases = list(cross.kernels), list(cross.bias)
    if not kernels:
        return x0
    return _FusedCrossNet.apply(x0, *kernels, *biases)


class FusedCrossNet(CrossNet):
    """TorchRec's ``CrossNet`` evaluated by torchrec_me's fused forward and backward.

    Same parameters (``kernels``, ``bias``), state dict and math as ``CrossNet``: on
    each layer ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l`` with a full N x N ``W_l``. Only
    the evaluation differs: two kernels per layer forward and a hand-written backward
    (:class:`_FusedCrossNet`), tested against ``CrossNet`` by gradcheck and by
    equality of outputs and gradients.

    Input (B, N); output (B, N), N = F * D for DCNv2.

    Args:
        in_features (int): N.
        num_layers (int): L, the number of cross layers.

    Example::

        cross = FusedCrossNet(in_features=48, num_layers=4)
        out = cross(torch.randn(8, 48))  # (8, 48)
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input (torch.Tensor): (B, N), x0.

        Returns:
            torch.Tensor: (B, N), x_L.
        """
        return cross_net(input, self)


class DCNv2Interaction(nn.Module):
    """DCNv2 (stacked) for one set: full-rank cross network, then the first MLP layer.

    Matches ``MultiDCNnew2`` of the reference code: on the flattened input
    ``x0 = flatten(E)`` of width N = F * D, each cross layer computes
    ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l`` with a full N x N ``W_l``; that is
    TorchRec's ``CrossNet``, evaluated by :class:`FusedCrossNet` when ``layers.fused``.
    The first MLP layer (Linear, BatchNorm, ReLU, Dropout) follows.

    Input (B, F, D); output (B, H).

    Args:
        num_fields (int): F.
        embedding_dim (int): D of this set.
        num_cross_layers (int): cross layers (the paper uses 4).
        hidden_dim (int): H, width of the first MLP layer (the paper's 400).
        layers (LayerConfig): dropout of the MLP layer; fused or plain cross net and
            ReLU + Dropout.

    Example::

        inter = DCNv2Interaction(num_fields=4, embedding_dim=12, num_cross_layers=4, hidden_dim=16)
        h = inter(torch.randn(8, 4, 12))  # (8, 16)
    """

    def __init__(
        self,
        num_fields: int,
        embedding_dim: int,
        num_cross_layers: int,
        hidden_dim: int,
        layers: LayerConfig = LayerConfig(),
    ) -> None:
        super().__init__()
        n = num_fields * embedding_dim
        cross_net_class = FusedCrossNet if layers.fused else CrossNet
        self.cross: CrossNet = cross_net_class(in_features=n, num_layers=num_cross_layers)
        self.mlp = mlp_block(n, hidden_dim, layers)
        self.output_dim = hidden_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embeddings (torch.Tensor): (B, F, D), one set's embeddings.

        Returns:
            torch.Tensor: (B, H).
        """
        return self.mlp(self.cross(embeddings.flatten(1)))


class FinalMLPInteraction(nn.Module):
    """FinalMLP's two streams for one set: [feature-selection gate] -> MLP (H, H), twice.

    Both streams read the flattened embeddings, each through its own
    :class:`~torchrec_me.modules.layers.FeatureSelectionGate` (written by hand, as is
    the fusion in :class:`~torchrec_me.modules.heads.FinalMLPHead`). The shared head
    fuses the set-averaged streams bilinearly.

    Input (B, F, D); output (B, 2H), ``[stream 1 ‖ stream 2]``.

    Args:
        num_fields (int): F.
        embedding_dim (int): D of this set; also the size of the gates' context.
        hidden_dim (int): H, width of both MLP layers of each stream.
        fs_hidden_dim (Optional[int]): hidden width of the gate MLPs; None leaves the
            gates out.
        layers (LayerConfig): dropout and fused/plain kernels of the MLP layers.

    Example::

        inter = FinalMLPInteraction(num_fields=4, embedding_dim=12, hidden_dim=16, fs_hidden_dim=32)
        h = inter(torch.randn(8, 4, 12))  # (8, 32)
    """

    def __init__(
        self,
        num_fields: int,
        embedding_dim: int,
        hidden_dim: int,
        fs_hidden_dim: Optional[int],
        layers: LayerConfig = LayerConfig(),
    ) -> None:
        super().__init__()
        n = num_fields * embedding_dim

        def stream() -> nn.Sequential:
            gate = nn.Identity() if fs_hidden_dim is None else FeatureSelectionGate(embedding_dim, fs_hidden_dim, n)
            return nn.Sequential(gate, mlp_block(n, hidden_dim, layers), mlp_block(hidden_dim, hidden_dim, layers))

        self.stream1 = stream()
        self.stream2 = stream()
        self.output_dim = 2 * hidden_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embeddings (torch.Tensor): (B, F, D), one set's embeddings.

        Returns:
            torch.Tensor: (B, 2H), ``[stream 1 ‖ stream 2]``.
        """
        flat = embeddings.flatten(1)
        return torch.cat([self.stream1(flat), self.stream2(flat)], dim=1)


class DLRMInteraction(nn.Module):
    """DLRM for one set: TorchRec's dot interaction, then the first over-arch layer.

    ``torchrec.models.dlrm.InteractionArch`` takes a dense vector and F - 1 sparse
    vectors and returns ``[dense ‖ all pairwise dots]``. Field 0 of the input plays the
    dense vector: with dense features (DLRM convention) the model puts their projection
    there; without them it is the first categorical field.

    Input (B, F, D); output (B, H).

    Args:
        num_fields (int): F, field 0 included.
        embedding_dim (int): D of this set, also the width of field 0.
        hidden_dim (int): H, width of the first over-arch layer.
        layers (LayerConfig): dropout and fused/plain kernels of that layer.

    Example::

        inter = DLRMInteraction(num_fields=4, embedding_dim=12, hidden_dim=16)
        h = inter(torch.randn(8, 4, 12))  # (8, 16)
    """

    def __init__(
        self, num_fields: int, embedding_dim: int, hidden_dim: int, layers: LayerConfig = LayerConfig()
    ) -> None:
        super().__init__()
        self.inter = InteractionArch(num_sparse_features=num_fields - 1)
        self.mlp = mlp_block(embedding_dim + num_fields * (num_fields - 1) // 2, hidden_dim, layers)
        self.output_dim = hidden_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embeddings (torch.Tensor): (B, F, D), one set's embeddings; field 0 is the
                dense vector.

        Returns:
            torch.Tensor: (B, H).
        """
        return self.mlp(self.inter(embeddings[:, 0], embeddings[:, 1:]))
