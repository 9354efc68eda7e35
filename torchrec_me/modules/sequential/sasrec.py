"""SASRec, "Self-Attentive Sequential Recommendation" (Kang & McAuley, ICDM 2018).

The original block: queries are layer-normalised, keys and values are not; softmax
attention scaled by ``1 / sqrt(d)`` under a causal mask; the residual adds the normalised
queries; then a LayerNorm and a point-wise feed-forward network (two D -> D layers with
ReLU, the original's kernel-1 convolutions) with its own residual. A final LayerNorm
closes the stack. Shape letters as in :mod:`torchrec_me.modules.sequential`.
"""

import torch
from torch import nn

from torchrec_me.modules.sequential.common import SequenceEncoder, causal_mask
from torchrec_me.modules.sequential.config import EncoderConfig

# The original implementation's LayerNorm epsilon.
LAYER_NORM_EPS = 1e-8


class SASRecBlock(nn.Module):
    """One SASRec layer::

        q = LayerNorm(x)
        h = q + MultiHeadAttention(q, x, x, causal)       # attention dropout inside
        h = LayerNorm(h)
        y = h + dropout(W_2 dropout(ReLU(W_1 h)))

    Args:
        dim (int): D, divisible by ``config.num_heads``.
        config (EncoderConfig): ``num_heads`` and ``dropout`` (attention weights and
            feed-forward).

    Example::

        block = SASRecBlock(8, EncoderConfig(num_heads=2))
        ts = torch.zeros(2, 3, dtype=torch.long)
        y = block(torch.randn(2, 3, 8), ts, ts)  # (2, 3, 8)
    """

    def __init__(self, dim: int, config: EncoderConfig) -> None:
        super().__init__()
        config.check_dim(dim)
        self.attention_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attention = nn.MultiheadAttention(dim, config.num_heads, dropout=config.dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim),
            nn.Dropout(config.dropout),
            nn.ReLU(),
            nn.Linear(dim, dim),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, timestamps: torch.Tensor, next_timestamps: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): (B, L, D) hidden states, right-padded.
            timestamps (torch.Tensor): (B, L) unused (SASRec has no time signal).
            next_timestamps (torch.Tensor): (B, L) unused.

        Returns:
            torch.Tensor: (B, L, D), causal in L.
        """
        blocked = ~causal_mask(x.shape[1], x.device)
        q = self.attention_norm(x)
        attended, _ = self.attention(q, x, x, attn_mask=blocked, need_weights=False)
        h = self.ffn_norm(q + attended)
        return h + self.ffn(h)


class SASRecEncoder(SequenceEncoder):
    """SASRec stack: input layer (``e * sqrt(D)`` + learned positions, dropout), blocks,
    final LayerNorm.

    Args:
        dim (int): D, the set's embedding dim.
        config (EncoderConfig): ``num_blocks`` :class:`SASRecBlock` s and their settings.

    Example::

        encoder = SASRecEncoder(8, EncoderConfig(num_blocks=2, max_seq_len=4))
        mask = torch.tensor([[True, True, False]])  # a row of 2 items padded to 3
        unused = torch.zeros(1, 3, dtype=torch.long)  # SASRec reads no timestamps
        out = encoder(torch.randn(1, 3, 8), mask, unused, unused)  # (1, 3, 8), out[0, 2] == 0
    """

    block_type = SASRecBlock

    def _final_norm(self, dim: int) -> nn.Module:
        return nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
