"""The encoder registry and the K per-set encoder stacks of a sequential model.

``ENCODER_REGISTRY`` maps ``model.backbone`` to an encoder class built as
``cls(dim, config)``; :class:`SetEncoders` gives each of the K item-embedding sets its own
stack (the multi-embedding paper's per-set interaction) or one shared stack (ablation).
"""

from typing import Dict, List, Sequence, Type

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_me.config import ConfigError
from torchrec_me.modules.sequential.common import SequenceEncoder
from torchrec_me.modules.sequential.config import EncoderConfig
from torchrec_me.modules.sequential.hstu import HSTUEncoder
from torchrec_me.modules.sequential.llama import LlamaEncoder
from torchrec_me.modules.sequential.sasrec import SASRecEncoder

ENCODER_REGISTRY: Dict[str, Type[SequenceEncoder]] = {
    "hstu": HSTUEncoder,
    "sasrec": SASRecEncoder,
    "llama": LlamaEncoder,
}


def build_encoder(backbone: str, dim: int, config: EncoderConfig) -> SequenceEncoder:
    """The ``backbone`` stack for a set of dim ``dim``; ConfigError naming ``model.backbone``
    for an unknown name."""
    if backbone not in ENCODER_REGISTRY:
        raise ConfigError(f"config key 'model.backbone': {backbone!r} is not one of {sorted(ENCODER_REGISTRY)}")
    return ENCODER_REGISTRY[backbone](dim, config)


class SetEncoders(nn.Module):
    """K encoder stacks, stack k reading set k's item embeddings; outputs L2-normalised.

    Set k's right-padded input embeddings (B, L, D_k) go through its own stack (or the one
    shared stack) to hidden states (B, L, D_k), which are L2-normalised into user vectors
    (zero at the padding)::

        set 0 (B, L, D_0) -> stack 0 -> normalise -> (B, L, D_0)
        ...
        set K-1           -> stack K-1 (or the shared stack) -> (B, L, D_{K-1})

    Args:
        backbone (str): ``ENCODER_REGISTRY`` key: ``hstu``, ``sasrec`` or ``llama``.
        dims (Sequence[int]): the K set dims D_k.
        config (EncoderConfig): hyperparameters of every stack.
        shared (bool): one stack for all sets (the shared-encoder ablation; equal dims).

    Example::

        encoders = SetEncoders("sasrec", [8, 8], EncoderConfig(max_seq_len=4))
        mask = torch.tensor([[True, True, False]])
        ts = torch.zeros(1, 3, dtype=torch.long)
        outs = encoders([torch.randn(1, 3, 8), torch.randn(1, 3, 8)], mask, ts, ts)  # 2 x (1, 3, 8)
    """

    def __init__(self, backbone: str, dims: Sequence[int], config: EncoderConfig, shared: bool = False) -> None:
        super().__init__()
        if shared and len(set(dims)) > 1:
            raise ConfigError(
                f"config key 'model.shared_encoder': a shared encoder needs equal set dims, got {list(dims)}"
            )
        self.num_sets = len(dims)
        self.stacks = nn.ModuleList(build_encoder(backbone, d, config) for d in (dims[:1] if shared else dims))

    def forward(
        self,
        embeddings: List[torch.Tensor],
        mask: torch.Tensor,
        timestamps: torch.Tensor,
        next_timestamps: torch.Tensor,
    ) -> List[torch.Tensor]:
        """
        Args:
            embeddings (List[torch.Tensor]): K tensors (B, L, D_k), right-padded.
            mask (torch.Tensor): (B, L) bool, True at valid positions.
            timestamps (torch.Tensor): (B, L) int64 time of each input item.
            next_timestamps (torch.Tensor): (B, L) int64 time of the item each position
                predicts.

        Returns:
            List[torch.Tensor]: K unit-norm user vectors (B, L, D_k), zero at the padding.
        """
        shared = len(self.stacks) == 1
        return [
            F.normalize(self.stacks[0 if shared else k](emb, mask, timestamps, next_timestamps), dim=-1)
            for k, emb in enumerate(embeddings)
        ]
