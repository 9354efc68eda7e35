"""Pieces every sequence encoder shares: jagged <-> padded rows, the input layer, the base.

Shape letters as in :mod:`torchrec_me.modules.sequential`. Rows are right-padded to the
batch's longest row L: valid positions ``0..L_b-1`` come first, so a causal mask alone
keeps every valid query away from the padding (its keys sit at later positions) and no
separate key-padding mask is needed.
"""

import math
from typing import Optional, Type

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_me.modules.sequential.config import EncoderConfig


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, L) bool, True at the valid positions ``i < lengths[b]``."""
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(1)


def to_padded(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Jagged ``values`` (N, *) -> (B, L, *) with zeros at the padding; ``mask`` (B, L).

    Differentiable (an ``index_put`` into zeros); ``N`` must equal ``mask.sum()``.
    """
    out = values.new_zeros((*mask.shape, *values.shape[1:]))
    return out.index_put((mask,), values)


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """(L, L) bool, True where key j may be read by query i: ``j <= i`` (diagonal included)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


class SequenceInput(nn.Module):
    """The encoders' input layer: ``x_i = e_i * sqrt(D) + p_i``, dropout, padding zeroed.

    ``e_i`` is the item embedding read from the set's table; ``p_i`` is a learned
    absolute position embedding of position ``i`` counted from the oldest item of the row
    (omitted for Llama-style stacks, whose position signal is rotary). Initialised as
    the reference's input preprocessor does: normal with std ``sqrt(1 / D)`` (its HSTU
    model then re-initialises it Xavier-normal, std ``sqrt(2 / (n + D))``; found by the
    parity check of ``benchmarks/sequential.py --peer``, it changes only the start).

    Args:
        dim (int): D.
        config (EncoderConfig): ``max_seq_len`` (rows of the position table) and
            ``dropout``.
        positions (bool): add the learned absolute position embedding.

    Example::

        layer = SequenceInput(8, EncoderConfig(max_seq_len=5, dropout=0.0))
        x = layer(torch.randn(2, 3, 8), torch.tensor([[True, True, False], [True, True, True]]))
    """

    def __init__(self, dim: int, config: EncoderConfig, positions: bool = True) -> None:
        super().__init__()
        self.scale = math.sqrt(dim)
        self.max_seq_len = config.max_seq_len
        self.position: Optional[nn.Embedding] = None
        if positions:
            self.position = nn.Embedding(config.max_seq_len, dim)
            nn.init.trunc_normal_(self.position.weight, std=math.sqrt(1.0 / dim))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embeddings (torch.Tensor): (B, L, D) item embeddings, right-padded.
            mask (torch.Tensor): (B, L) bool, True at valid positions.

        Returns:
            torch.Tensor: (B, L, D), zero at the padding.
        """
        if embeddings.shape[1] > self.max_seq_len:
            raise ValueError(f"rows of {embeddings.shape[1]} items exceed model.max_seq_len={self.max_seq_len}")
        x = embeddings * self.scale
        if self.position is not None:
            x = x + self.position.weight[: x.shape[1]]
        return self.dropout(x) * mask.unsqueeze(-1)


class SequenceEncoder(nn.Module):
    """Base of the encoder stacks: input layer, blocks, optional final norm, padding zeroed.

    Every stack maps right-padded item embeddings (B, L, D) to one hidden state per
    position (B, L, D), causally: the state at ``i`` reads items ``0..i`` only. The
    sequential model L2-normalises these states into user vectors. A subclass only names
    its parts: ``block_type``, built ``config.num_blocks`` times as ``block_type(dim,
    config)`` and called as ``block(x, timestamps, next_timestamps)``;
    ``absolute_positions``, whether the input layer adds learned positions; and
    ``_final_norm``, the norm after the last block (none by default).

    Args:
        dim (int): D, the set's embedding dim.
        config (EncoderConfig): the stack's hyperparameters.

    Example::

        from torchrec_me.modules.sequential import HSTUEncoder

        encoder: SequenceEncoder = HSTUEncoder(8, EncoderConfig(max_seq_len=4))
        mask = torch.tensor([[True, True, False]])
        ts = torch.zeros(1, 3, dtype=torch.long)
        out = encoder(torch.randn(1, 3, 8), mask, ts, ts)  # (1, 3, 8)
    """

    block_type: Type[nn.Module]
    absolute_positions: bool = True

    def __init__(self, dim: int, config: EncoderConfig) -> None:
        super().__init__()
        self.dim = dim
        self.config = config
        self.final_norm = self._final_norm(dim)
        self.input = SequenceInput(dim, config, positions=self.absolute_positions)
        self.blocks = nn.ModuleList(self.block_type(dim, config) for _ in range(config.num_blocks))

    def _final_norm(self, dim: int) -> nn.Module:
        """The norm applied to the last block's output."""
        return nn.Identity()

    def forward(
        self,
        embeddings: torch.Tensor,
        mask: torch.Tensor,
        timestamps: torch.Tensor,
        next_timestamps: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            embeddings (torch.Tensor): (B, L, D) item embeddings, right-padded.
            mask (torch.Tensor): (B, L) bool, True at valid positions.
            timestamps (torch.Tensor): (B, L) int64 time of each input item (read only
                by HSTU's time bias).
            next_timestamps (torch.Tensor): (B, L) int64 time of the item each position
                predicts (read only by HSTU's ``time_bias_source=next``).

        Returns:
            torch.Tensor: (B, L, D) hidden states, zero at the padding.
        """
        x = self.input(embeddings, mask)
        if self.config.length_buckets > 1 and x.shape[0] > 1 and not bool(mask.all()):  # some padding to save
            x = self._bucketed_blocks(x, mask, timestamps, next_timestamps)
        else:
            x = self._blocks(x, timestamps, next_timestamps)
        return self.final_norm(x) * mask.unsqueeze(-1)

    def _blocks(self, x: torch.Tensor, timestamps: torch.Tensor, next_timestamps: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, timestamps, next_timestamps)
        return x

    def _bucketed_blocks(
        self, x: torch.Tensor, mask: torch.Tensor, timestamps: torch.Tensor, next_timestamps: torch.Tensor
    ) -> torch.Tensor:
        """The blocks on ``length_buckets`` groups of rows of similar length, each cut
        to its longest row: rows sorted by length, split into groups of equal row
        counts, outputs padded back and put in the input order. The valid positions get
        what :meth:`_blocks` gives them (the attention is causal and the padding comes
        last, so a row's trailing padding is never read); only the padding's work is
        saved, which on long-tailed lengths is most of the attention's (it grows with
        the square of the padded length)."""
        lengths = mask.sum(dim=1)
        order = torch.argsort(lengths, stable=True)
        length = x.shape[1]
        outs = []
        for rows in order.tensor_split(min(self.config.length_buckets, x.shape[0])):
            cut = max(int(lengths[rows[-1]]), 1)  # the group's longest row (sorted)
            h = self._blocks(x[rows, :cut], timestamps[rows, :cut], next_timestamps[rows, :cut])
            outs.append(F.pad(h, (0, 0, 0, length - cut)))
        return torch.cat(outs)[torch.argsort(order)]
