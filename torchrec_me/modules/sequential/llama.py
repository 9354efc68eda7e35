"""A Llama-style decoder as a sequential recommender backbone.

Pre-norm blocks with RMSNorm, causal softmax attention (``1 / sqrt(d)``) on rotary
position embeddings (RoPE, base 10000, no learned absolute positions), and a SwiGLU
feed-forward network of hidden width ``8D/3`` rounded up to a multiple of 4; bias-free
projections; a final RMSNorm. Dropout sits on the two residual branches. Shape letters
as in :mod:`torchrec_me.modules.sequential`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_me.modules.sequential.common import SequenceEncoder
from torchrec_me.modules.sequential.config import EncoderConfig

RMS_NORM_EPS = 1e-6
ROPE_BASE = 10000.0


def swiglu_hidden_dim(dim: int) -> int:
    """Hidden width of the SwiGLU network: ``8 * dim / 3`` rounded up to a multiple of 4."""
    return 4 * math.ceil(8 * dim / 3 / 4)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding: rotates channel pairs ``(c, c + d/2)`` of q and k by
    ``position * base^(-2c/d)``, so ``<q_i, k_j>`` depends on ``i - j`` only.

    Args:
        head_dim (int): d, even.
        max_seq_len (int): positions precomputed.

    Example::

        rope = RotaryEmbedding(4, 8)
        q = rope(torch.randn(2, 3, 1, 4))  # (B, L, H, d)
    """

    def __init__(self, head_dim: int, max_seq_len: int) -> None:
        super().__init__()
        inv_freq = ROPE_BASE ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.arange(max_seq_len, dtype=torch.float64).unsqueeze(1) * inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): (B, L, H, d) queries or keys, position i at index i.

        Returns:
            torch.Tensor: (B, L, H, d) rotated.
        """
        length = x.shape[1]
        cos = self.cos[:length].unsqueeze(1).to(x.dtype)
        sin = self.sin[:length].unsqueeze(1).to(x.dtype)
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-second, first], dim=-1) * sin


class LlamaBlock(nn.Module):
    """One Llama-style layer::

        h = x + dropout(W_o Attention(RoPE(q), RoPE(k), v))    # q, k, v from RMSNorm(x)
        y = h + dropout(W_2 (SiLU(W_1 n) * W_3 n)),  n = RMSNorm(h)

    Args:
        dim (int): D; ``D / num_heads`` must be even (RoPE pairs channels).
        config (EncoderConfig): ``num_heads``, ``max_seq_len`` and ``dropout``.

    Example::

        block = LlamaBlock(8, EncoderConfig(num_heads=2, max_seq_len=4))  # d = 4, even
        unused = torch.zeros(2, 3, dtype=torch.long)  # positions are rotary, no timestamps
        y = block(torch.randn(2, 3, 8), unused, unused)  # (2, 3, 8)
    """

    def __init__(self, dim: int, config: EncoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.check_dim(dim, head_multiple=2)
        self.attention_norm = nn.RMSNorm(dim, eps=RMS_NORM_EPS)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.output = nn.Linear(dim, dim, bias=False)
        self.rope = RotaryEmbedding(self.head_dim, config.max_seq_len)
        self.ffn_norm = nn.RMSNorm(dim, eps=RMS_NORM_EPS)
        hidden = swiglu_hidden_dim(dim)
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(b, length, 3, self.num_heads, self.head_dim).unbind(2)
        q, k = self.rope(q), self.rope(k)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.output(out.transpose(1, 2).reshape(b, length, dim))

    def forward(self, x: torch.Tensor, timestamps: torch.Tensor, next_timestamps: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): (B, L, D) hidden states, right-padded.
            timestamps (torch.Tensor): (B, L) unused (positions are rotary).
            next_timestamps (torch.Tensor): (B, L) unused.

        Returns:
            torch.Tensor: (B, L, D), causal in L.
        """
        h = x + self.dropout(self._attend(self.attention_norm(x)))
        n = self.ffn_norm(h)
        return h + self.dropout(self.down(F.silu(self.gate(n)) * self.up(n)))


class LlamaEncoder(SequenceEncoder):
    """Llama-style stack: input layer (``e * sqrt(D)``, dropout; no absolute positions:
    they are rotary, inside the blocks), blocks, final RMSNorm.

    Args:
        dim (int): D, the set's embedding dim.
        config (EncoderConfig): ``num_blocks`` :class:`LlamaBlock` s and their settings.

    Example::

        encoder = LlamaEncoder(8, EncoderConfig(num_heads=2, max_seq_len=4))  # d = 4, even
        x, mask = torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
        ts = torch.zeros_like(mask, dtype=torch.long)  # unused: positions are rotary
        out = encoder(x, mask, ts, ts)  # (2, 3, 8)
    """

    block_type = LlamaBlock
    absolute_positions = False

    def _final_norm(self, dim: int) -> nn.Module:
        return nn.RMSNorm(dim, eps=RMS_NORM_EPS)
