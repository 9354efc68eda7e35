"""Interaction layers TorchRec does not have, written by hand.

TorchRec ships ``CrossNet`` (DCNv2), ``MLP`` and DLRM's dot interaction; these are the
other operators of the multi-embedding paper's backbones. Each is tested against a
plainly written loop in ``tests/modules``.

Shapes: B batch, F fields, D embedding dim.
"""

from typing import List, Sequence

import torch
from torch import nn


class InnerProduct(nn.Module):
    """All pairwise inner products ``<e_i, e_j>``, i < j, in row-major pair order.

    Shapes: (B, F, D) -> (B, F (F - 1) / 2). No parameters (IPNN's product layer).
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(embeddings, embeddings.transpose(1, 2))
        return gram[:, self.rows, self.cols]


class FieldWeightedFM(nn.Module):
    """NFwFM's field-weighted bi-interaction: ``o_e = sum_{i,j} R_ij v_ie v_je``.

    The full learned F x F matrix R is used, diagonal and both triangles included, as in
    the reference ``NFwFM`` (so a pair's effective weight is R_ij + R_ji). The result
    keeps the embedding dim: it is a D-vector per sample, not a scalar as in FwFM.

    Shapes: (B, F, D) -> (B, D).

    Args:
        num_fields (int): F.
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        self.field_weight = nn.Parameter(torch.randn(num_fields, num_fields))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        # sum_i v_ie * (sum_j R_ij v_je)
        return (embeddings * torch.einsum("ij,bjd->bid", self.field_weight, embeddings)).sum(1)


class CompressedInteraction(nn.Module):
    """xDeepFM's Compressed Interaction Network (CIN), without split-half.

    Layer l: ``Z = x0 (outer over fields) h_{l-1}`` per embedding dim, giving
    F * H_{l-1} channels of width D, then a 1x1 convolution (with bias) to H_l channels
    and ReLU. Every layer's map is sum-pooled over D and the pooled vectors are
    concatenated, as in the reference ``CIN``.

    Every sample is computed on its own (no batch statistics), so the batch is run in
    chunks of at most ``CHUNK_BYTES`` of Z: at batch 2048, F = 39, D = 12 one Z is 150 MB,
    and a step that writes and re-reads it is memory-bound (forward + backward of one
    CIN took 540 ms on 2 CPU cores, in chunks of 128 samples 134 ms). Same math.

    Shapes: (B, F, D) -> (B, sum(layer_sizes)).

    Args:
        num_fields (int): F (= H_0).
        layer_sizes (Sequence[int]): H_1, H_2, ... (the paper uses 16, 16).
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
        """The CIN on one chunk (any number of samples)."""
        x0 = embeddings
        h = embeddings
        pooled: List[torch.Tensor] = []
        for conv in self.convs:
            z = (x0.unsqueeze(2) * h.unsqueeze(1)).flatten(1, 2)  # (B, F * H, D)
            h = torch.relu(conv(z))  # (B, H_l, D)
            pooled.append(h.sum(-1))
        return torch.cat(pooled, dim=1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
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

    The FinalMLP paper (Mao et al., 2023) gates the flattened embeddings of each stream
    with ``2 * sigmoid`` of an MLP over a context; with no conditioning features the
    context is a learned vector (initialised at zero, so the gate starts near 1 for
    every field). The multi-embedding reference switched this gate off; here it works
    and ``model.feature_selection=false`` turns it off.

    Shapes: (B, N) -> (B, N).

    Args:
        context_dim (int): size of the learned context vector.
        hidden_dim (int): hidden width of the gate MLP.
        out_features (int): N, the flattened input width.
    """

    def __init__(self, context_dim: int, hidden_dim: int, out_features: int) -> None:
        super().__init__()
        self.context = nn.Parameter(torch.zeros(1, context_dim))
        self.gate = nn.Sequential(nn.Linear(context_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (2.0 * torch.sigmoid(self.gate(self.context)))


class BilinearFusion(nn.Module):
    """FinalMLP's stream fusion: ``w_x.x + w_y.y + x^T W y + b`` (one head).

    ``W`` starts at zero, as in the reference, so training starts from the linear part.

    Shapes: (B, H), (B, H) -> (B,).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_x = nn.Linear(dim, 1)
        self.linear_y = nn.Linear(dim, 1, bias=False)
        self.bilinear = nn.Parameter(torch.zeros(dim, dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cross = ((x @ self.bilinear) * y).sum(-1)
        return (self.linear_x(x) + self.linear_y(y)).squeeze(-1) + cross
