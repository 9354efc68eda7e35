"""The paper's embedding regularisers, on the batch's per-set embeddings.

Each maps the K per-set outputs of the sparse arch, set k of shape (B, F, D_k), to a
scalar that the training wrapper adds to the loss with weight ``model.reg_weight``.
"""

from typing import Callable, Dict, List

import torch

Regularizer = Callable[[List[torch.Tensor]], torch.Tensor]


def singular_value_regularization(per_set: List[torch.Tensor]) -> torch.Tensor:
    """Spread of each field's batch spectrum: ``mean_f Var(S_f / mean(S_f))``.

    ``S_f`` are the singular values of the batch embedding matrix of field f (B x D),
    unnormalised and uncentred, with the unbiased variance over the D values; the mean
    runs over fields (and sets, if K > 1). Minimising it flattens the spectrum, the
    paper's SE baseline against collapse.
    """
    terms = []
    for emb in per_set:
        s = torch.linalg.svdvals(emb.transpose(0, 1))  # (F, D)
        terms.append((s / s.mean(dim=1, keepdim=True)).var(dim=1))
    return torch.cat(terms).mean()


def space_similarity_regularization(per_set: List[torch.Tensor]) -> torch.Tensor:
    """Similarity of the sets' spaces: ``mean(s^2)`` over all set pairs i > j.

    For each pair, ``s`` is the field-average (element-wise over the sorted values) of
    the singular values of ``E_i[:, f]^T E_j[:, f]`` (D_i x D_j, over the batch). Pushing
    it down pushes the sets into different subspaces; it needs K >= 2.
    """
    if len(per_set) < 2:
        raise ValueError("space-similarity regularisation needs at least 2 embedding sets")
    pair_values = []
    for i in range(len(per_set)):
        for j in range(i):
            cross = torch.bmm(per_set[i].permute(1, 2, 0), per_set[j].transpose(0, 1))  # (F, D_i, D_j)
            pair_values.append(torch.linalg.svdvals(cross).mean(0))
    return torch.cat(pair_values).pow(2).mean()


REGULARIZER_REGISTRY: Dict[str, Regularizer] = {
    "singular_value": singular_value_regularization,
    "space_similarity": space_similarity_regularization,
}
