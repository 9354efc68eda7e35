"""HSTU, the encoder of "Actions Speak Louder than Words" (arXiv 2402.17152).

Written from the paper and the formulas of the reference research model
(facebookresearch/generative-recommenders), not from its code. Per block, on right-padded
rows (shape letters as in :mod:`torchrec_me.modules.sequential`)::

    x^ = LayerNorm_no_affine(x)
    u, v, q, k = split(SiLU(x^ W_uvqk))                  # one (D, 4D) projection, no bias
    A = SiLU(q k^T + rab) / n  (.)  causal mask          # per head, diagonal included
    y = x + W_o dropout(u (.) LayerNorm_no_affine(A v))  # no feed-forward sublayer

``n`` is ``max_seq_len`` (the reference divides by its fixed padded length). Since
``A v`` goes through a LayerNorm, this constant only meets the LayerNorm's epsilon.
Switches (:class:`~torchrec_me.modules.sequential.config.EncoderConfig`):

* ``attention_scale=sqrt_dim``: ``A = SiLU(q k^T / sqrt(d) + rab)`` instead of ``/ n``;
* ``attention=softmax``: ``A = softmax(q k^T / sqrt(d) + rab)`` over the causal keys
  (the reference multiplies a full-row softmax by the mask; here the softmax is taken
  over the allowed keys only, so each row sums to one);
* ``rab``: which parts of the relative attention bias are on (:class:`RelativeBias`).
"""

import math
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_me.modules.sequential.common import SequenceEncoder, causal_mask
from torchrec_me.modules.sequential.config import RAB_PARTS, EncoderConfig

LAYER_NORM_EPS = 1e-6
# Time gaps fall into buckets of ln|gap| of this width (the reference's bucketisation).
TIME_BUCKET_LOG_WIDTH = 0.301

# time_bias_source -> the query-side time of position i: t_i ('seen') or t_{i+1} ('next').
_QUERY_TIME: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "seen": lambda timestamps, next_timestamps: timestamps,
    "next": lambda timestamps, next_timestamps: next_timestamps,
}


def time_buckets(gaps: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Bucket of each time gap (seconds): ``floor(ln(max(|gap|, 1)) / 0.301)``, clamped to
    ``[0, num_buckets]``."""
    logs = torch.log(gaps.abs().clamp(min=1).to(torch.float64)) / TIME_BUCKET_LOG_WIDTH
    return logs.floor().long().clamp(0, num_buckets)


class RelativeBias(nn.Module):
    """HSTU's relative attention bias ``rab(i, j)`` for query i and key j <= i.

    ``rab(i, j) = w_pos[clip(j - i)] + w_time[bucket(tq_i - t_j)]``:

    * position part: one learned weight per relative offset ``j - i``, clipped to
      ``+-(max_seq_len - 1)``;
    * time part: one learned weight per log bucket of the time gap (:func:`time_buckets`).
      The query-side time ``tq_i`` is ``t_i``, the time of position i's own item, with
      ``time_bias_source=seen`` (default: only timestamps of items already seen), or
      ``t_{i+1}``, the time of the item position i predicts, with ``next`` (the
      reference's variant: it lets the target's time into the prediction).

    ``rab=none|position|time|both`` switches the parts; with ``none`` the bias is None.
    Weights start as normal(0, 0.02), as in the reference.

    Args:
        config (EncoderConfig): ``rab``, ``time_bias_source``, ``max_seq_len`` and
            ``num_time_buckets``.

    Example::

        rab = RelativeBias(EncoderConfig(max_seq_len=4))
        ts = torch.tensor([[0, 10, 1000]])
        bias = rab(ts, torch.tensor([[10, 1000, 5000]]))  # (1, 3, 3)
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        use_position, use_time = RAB_PARTS[config.rab]
        self.max_seq_len = config.max_seq_len
        self.num_time_buckets = config.num_time_buckets
        self.query_time = _QUERY_TIME[config.time_bias_source]
        self.position_weight: Optional[nn.Parameter] = None
        self.time_weight: Optional[nn.Parameter] = None
        if use_position:
            self.position_weight = nn.Parameter(torch.empty(2 * config.max_seq_len - 1).normal_(0.0, 0.02))
        if use_time:
            self.time_weight = nn.Parameter(torch.empty(config.num_time_buckets + 1).normal_(0.0, 0.02))

    def buckets(self, timestamps: torch.Tensor, next_timestamps: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, L, L) time bucket of each pair (i, j), or None without a time part. It
        depends only on the timestamps, so a stack computes it once for all its blocks."""
        if self.time_weight is None:
            return None
        query = self.query_time(timestamps, next_timestamps)
        return time_buckets(query.unsqueeze(2) - timestamps.unsqueeze(1), self.num_time_buckets)

    def forward(
        self, timestamps: torch.Tensor, next_timestamps: torch.Tensor, buckets: Optional[torch.Tensor] = None
    ) -> Optional[torch.Tensor]:
        """
        Args:
            timestamps (torch.Tensor): (B, L) int64 time of each input item.
            next_timestamps (torch.Tensor): (B, L) int64 time of the item each position
                predicts.
            buckets (Optional[torch.Tensor]): :meth:`buckets` of these timestamps, when
                already computed.

        Returns:
            Optional[torch.Tensor]: (B, L, L) bias (``(1, L, L)`` with the position part
            alone), or None with ``rab=none``.
        """
        length = timestamps.shape[1]
        bias: Optional[torch.Tensor] = None
        if self.position_weight is not None:
            pos = torch.arange(length, device=timestamps.device)
            limit = self.max_seq_len - 1
            offsets = (pos.unsqueeze(0) - pos.unsqueeze(1)).clamp(-limit, limit) + limit
            bias = self.position_weight[offsets].unsqueeze(0)
        if self.time_weight is not None:
            buckets = self.buckets(timestamps, next_timestamps) if buckets is None else buckets
            time_bias = self.time_weight[buckets]
            bias = time_bias if bias is None else bias + time_bias
        return bias


def _silu_weights(block: "HSTUBlock", scores: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
    # One pass: the mask and the 1/n scale multiplied into one (L, L) factor first.
    return F.silu(scores) * (causal.to(scores.dtype) * block.post_scale)


def _softmax_weights(block: "HSTUBlock", scores: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


# attention -> attention weights A (B, H, L, L) from the biased scores.
_ATTENTION_WEIGHTS: Dict[str, Callable[["HSTUBlock", torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "silu": _silu_weights,
    "softmax": _softmax_weights,
}
# (attention, attention_scale) -> (factor on q k^T, factor on SiLU's output), given (d, n).
_SCALES: Dict[Tuple[str, str], Callable[[int, int], Tuple[float, float]]] = {
    ("silu", "length"): lambda d, n: (1.0, 1.0 / n),
    ("silu", "sqrt_dim"): lambda d, n: (1.0 / math.sqrt(d), 1.0),
    ("softmax", "length"): lambda d, n: (1.0 / math.sqrt(d), 1.0),
    ("softmax", "sqrt_dim"): lambda d, n: (1.0 / math.sqrt(d), 1.0),
}


class HSTUBlock(nn.Module):
    """One HSTU layer (see the module docstring for the formulas), multi-head.

    Heads split q, k, u and v into H slices of ``d = D / H``; ``A v`` is normalised over
    all D channels together, as in the reference. ``W_uvqk`` starts as normal(0, 0.02)
    and ``W_o`` (with bias) as Xavier-uniform, as in the reference.

    Args:
        dim (int): D, divisible by ``config.num_heads``.
        config (EncoderConfig): heads, dropout, attention kind and scale, ``rab``.

    Example::

        block = HSTUBlock(8, EncoderConfig(num_heads=2, max_seq_len=4))
        ts = torch.tensor([[0, 10, 1000], [5, 6, 7]])  # seconds, read by the relative bias
        y = block(torch.randn(2, 3, 8), ts, ts.roll(-1, dims=1))  # (2, 3, 8)
    """

    def __init__(self, dim: int, config: EncoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.check_dim(dim)
        self.qk_scale, self.post_scale = _SCALES[(config.attention, config.attention_scale)](
            self.head_dim, config.max_seq_len
        )
        self.weights_fn = _ATTENTION_WEIGHTS[config.attention]
        self.uvqk = nn.Parameter(torch.empty(dim, 4 * dim).normal_(0.0, 0.02))
        self.output = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.output.weight)
        self.rab = RelativeBias(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, timestamps: torch.Tensor, next_timestamps: torch.Tensor,
        buckets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:  # fmt: skip
        """
        Args:
            x (torch.Tensor): (B, L, D) hidden states, right-padded.
            timestamps (torch.Tensor): (B, L) int64 time of each input item.
            next_timestamps (torch.Tensor): (B, L) int64 time of the item each position
                predicts.
            buckets (Optional[torch.Tensor]): the time buckets of these timestamps
                (:meth:`RelativeBias.buckets`), when the stack computed them already.

        Returns:
            torch.Tensor: (B, L, D), causal in L.
        """
        b, length, dim = x.shape
        normed = F.layer_norm(x, (dim,), eps=LAYER_NORM_EPS)
        u, v, q, k = F.silu(normed @ self.uvqk).split(dim, dim=-1)
        heads = (b, length, self.num_heads, self.head_dim)
        scores = torch.einsum("bihd,bjhd->bhij", q.reshape(heads), k.reshape(heads))
        if self.qk_scale != 1.0:
            scores = scores * self.qk_scale
        bias = self.rab(timestamps, next_timestamps, buckets)
        if bias is not None:
            scores = scores + bias.unsqueeze(1)
        attn = self.weights_fn(self, scores, causal_mask(length, x.device))
        av = torch.einsum("bhij,bjhd->bihd", attn, v.reshape(heads)).reshape(b, length, dim)
        return x + self.output(self.dropout(u * F.layer_norm(av, (dim,), eps=LAYER_NORM_EPS)))


class HSTUEncoder(SequenceEncoder):
    """HSTU stack: input layer (``e * sqrt(D)`` + learned positions, dropout), blocks.

    No final norm: the sequential model L2-normalises the output, as the reference does.
    The only stack that reads timestamps (through each block's :class:`RelativeBias`).

    Args:
        dim (int): D, the set's embedding dim.
        config (EncoderConfig): ``num_blocks`` :class:`HSTUBlock` s and their settings.

    Example::

        encoder = HSTUEncoder(8, EncoderConfig(num_blocks=2, max_seq_len=4, rab="time"))
        seconds = torch.tensor([[0, 60, 3600]])  # the time bias reads the gaps t_i - t_j
        valid = torch.ones(1, 3, dtype=torch.bool)
        out = encoder(torch.randn(1, 3, 8), valid, seconds, seconds)  # (1, 3, 8)
    """

    block_type = HSTUBlock

    def _blocks(self, x: torch.Tensor, timestamps: torch.Tensor, next_timestamps: torch.Tensor) -> torch.Tensor:
        # The time buckets (a dozen passes over B x L x L gaps) depend only on the
        # timestamps: computed once here, not in every block.
        buckets = self.blocks[0].rab.buckets(timestamps, next_timestamps)
        for block in self.blocks:
            x = block(x, timestamps, next_timestamps, buckets)
        return x
