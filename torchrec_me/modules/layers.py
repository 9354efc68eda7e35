"""Interaction layers TorchRec does not have, written by hand.

TorchRec ships ``CrossNet`` (DCNv2), ``MLP`` and DLRM's dot interaction; these are the
other operators of the multi-embedding paper's backbones: IPNN's inner products,
NFwFM's field-weighted bi-interaction, xDeepFM's CIN and FinalMLP's gate and fusion.
Each is tested against a plainly written loop in ``tests/modules``. Shape letters as in
:mod:`torchrec_me.modules`.
"""

from typing import List, Sequence

import torch
from torch import nn


class InnerProduct(nn.Module):
    """All pairwise inner products ``<e_i, e_j>``, i < j, in row-major pair order.

    IPNN's product layer, written by hand (TorchRec's DLRM ``InteractionArch`` also
    concatenates a dense vector). No parameters.

    Input (B, F, D); output (B, F (F - 1) / 2).

    Args:
        num_fields (int): F.

    Example::

        products = InnerProduct(num_fields=4)
        out = products(torch.randn(8, 4, 12))  # (8, 6)
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embeddings (torch.Tensor): (B, F, D).

        Returns:
            torch.Tensor: (B, F (F - 1) / 2), pair (i, j) with i < j in row-major order.
        """
        gram = torch.bmm(embeddings, embeddings.transpose(1, 2))
        return gram[:, self.rows, self.cols]


class FieldWeightedFM(nn.Module):
    """NFwFM's field-weighted bi-interaction: ``o_e = sum_{i,j} R_ij v_ie v_je``.

    Written by hand: TorchRec's ``FactorizationMachine`` has no field weights. The full
    learned F x F matrix R is used, diagonal and both triangles included, as in the
    reference ``NFwFM`` (so a pair's effective weight is R_ij + R_ji). The result keeps
    the embedding dim: it is a D-vector per sample, not a scalar as in FwFM.

    Input (B, F, D); output (B, D).

    Args:
        num_fields (int): F.

    Example::

        fwfm = FieldWeightedFM(num_fields=4)
        out = fwfm(torch.randn(8, 4, 48))  # (8, 48)
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        self.field_weight = nn.Parameter(torch.randn(num_fields, num_fields))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embeddings (torch.Tensor): (B, F, D).

        Returns:
            torch.Tensor: (B, D), ``sum_i v_i * (sum_j R_ij v_j)``.
        """
        return (embeddings * torch.einsum("ij,bjd->bid", self.field_weight, embeddings)).sum(1)


class CompressedInteraction(nn.Module):
    """xDeepFM's Compressed Interaction Network (CIN), without split-half.

    Written by hand: TorchRec has no CIN. Layer l: ``Z = x0 (outer over fields) h_{l-1}``
    per embedding dim, giving F * H_{l-1} channels of width D, then a 1x1 convolution
    (with bias) to H_l channels and ReLU. Every layer's map is sum-pooled over D and the
    pooled vectors are concatenated, as in the reference ``CIN``.

    Every sample is computed on its own (no batch statistics), so the batch runs in
    chunks whose Z stays within ``CHUNK_BYTES``: the whole batch's Z is large and a step
    that writes and re-reads it is memory-bound. Chunking does not change the math.

    Input (B, F, D); output (B, sum(layer_sizes)).

    Args:
        num_fields (int): F (= H_0).
        layer_sizes (Sequence[int]): H_1, H_2, ... (the paper uses 16, 16).

    Example::

        cin = CompressedInteraction(num_fields=4, layer_sizes=[16, 16])
        out = cin(torch.randn(8, 4, 12))  # (8, 32)
    """

    CHUNK_BYTES = 8 * 2**20

    def __init__(self, num_fields: int, layer_sizes: Sequence[int]) -> None:
        super().__init__()
        sizes = [num_fields, *layer_sizes]
        self.convs = nn.ModuleList(
            nn.Conv1d(num_fields * prev, out, kernel_size=1) for prev, out in zip(sizes[:-1], sizes[1:])
        )
        self.num_fields = num_fields
        self._widest = max(sizes[:-1])
        self.output_dim = sum(layer_sizes)

    def chunk_rows(self, embeddings: torch.Tensor) -> int:
        """Samples per chunk: the largest Z of a chunk stays within ``CHUNK_BYTES``."""
        per_sample = self.num_fields * self._widest * embeddings.shape[-1] * embeddings.element_size()
        return max(1, self.CHUNK_BYTES // per_sample)

    def interact(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The CIN on one chunk (any number of samples): (B', F, D) -> (B', sum(layer_sizes))."""
        x0 = embeddings
        h = embeddings
        pooled: List[torch.Tensor] = []
        for conv in self.convs:
            z = (x0.unsqueeze(2) * h.unsqueeze(1)).flatten(1, 2)  # (B, F * H, D)
            h = torch.relu(conv(z))  # (B, H_l, D)
            pooled.append(h.sum(-1))
        return torch.cat(pooled, dim=1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embeddings (torch.Tensor): (B, F, D).

        Returns:
            torch.Tensor: (B, sum(layer_sizes)), the sum-pooled maps of all layers.
        """
        return cin_in_chunks(embeddings, self)


@torch.fx.wrap
def cin_in_chunks(embeddings: torch.Tensor, cin: CompressedInteraction) -> torch.Tensor:
    """``cin.interact`` over the batch in chunks of ``cin.chunk_rows``; a ``torch.fx``
    leaf, so ``TrainPipelineSparseDist`` traces the model around the loop."""
    rows = cin.chunk_rows(embeddings)
    if embeddings.shape[0] <= rows:
        return cin.interact(embeddings)
    return torch.cat([cin.interact(part) for part in embeddings.split(rows)], dim=0)


class FeatureSelectionGate(nn.Module):
    """FinalMLP's feature selection: ``x * 2 sigmoid(MLP(c))`` with a learned context c.

    Written by hand: TorchRec has no FinalMLP. The FinalMLP paper (Mao et al., 2023)
    gates the flattened embeddings of each stream with ``2 * sigmoid`` of an MLP over a
    context; with no conditioning features the context is a learned vector (initialised
    at zero, so the gate starts near 1 for every field). ``model.feature_selection=false``
    leaves the gate out, as the multi-embedding reference code does.

    Input (B, N); output (B, N), N = F * D the flattened width.

    Args:
        context_dim (int): size of the learned context vector.
        hidden_dim (int): hidden width of the gate MLP.
        out_features (int): N, the flattened input width.

    Example::

        gate = FeatureSelectionGate(context_dim=12, hidden_dim=32, out_features=48)
        out = gate(torch.randn(8, 48))  # (8, 48)
    """

    def __init__(self, context_dim: int, hidden_dim: int, out_features: int) -> None:
        super().__init__()
        self.context = nn.Parameter(torch.zeros(1, context_dim))
        self.gate = nn.Sequential(nn.Linear(context_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): (B, N).

        Returns:
            torch.Tensor: (B, N), ``x`` scaled per column by the gate in (0, 2).
        """
        return x * (2.0 * torch.sigmoid(self.gate(self.context)))


class BilinearFusion(nn.Module):
    """FinalMLP's stream fusion: ``w_x.x + w_y.y + x^T W y + b`` (one head).

    Written by hand: TorchRec has no FinalMLP. ``W`` starts at zero, as in the
    reference, so training starts from the linear part.

    Inputs two (B, H); output (B,).

    Args:
        dim (int): H, the width of each stream.

    Example::

        fusion = BilinearFusion(dim=16)
        logits = fusion(torch.randn(8, 16), torch.randn(8, 16))  # (8,)
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_x = nn.Linear(dim, 1)
        self.linear_y = nn.Linear(dim, 1, bias=False)
        self.bilinear = nn.Parameter(torch.zeros(dim, dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): (B, H), stream 1.
            y (torch.Tensor): (B, H), stream 2.

        Returns:
            torch.Tensor: (B,) logits.
        """
        cross = ((x @ self.bilinear) * y).sum(-1)
        return (self.linear_x(x) + self.linear_y(y)).squeeze(-1) + cross
