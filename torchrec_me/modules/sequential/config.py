"""The hyperparameters every sequence encoder reads, as one typed object.

Encoders take ``(dim, config)`` rather than a dozen keyword arguments (TorchRec's
module linter allows at most five constructor arguments). ``SequentialConfig`` in
:mod:`torchrec_me.models.sequential` inherits these fields, adds the model's own keys and
hands the encoders a plain copy of this object.
"""

from dataclasses import dataclass
from typing import Mapping, Tuple

from torchrec_me.config import ConfigError

# rab mode -> (relative-position bias on, time bias on)
RAB_PARTS: Mapping[str, Tuple[bool, bool]] = {
    "none": (False, False),
    "position": (True, False),
    "time": (False, True),
    "both": (True, True),
}
ATTENTIONS = ("silu", "softmax")
ATTENTION_SCALES = ("length", "sqrt_dim")
TIME_BIAS_SOURCES = ("seen", "next")


def _choice(key: str, value: str, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"config key 'model.{key}': {value!r} is not one of {list(choices)}")


@dataclass(frozen=True)
class EncoderConfig:
    """What a sequence encoder stack (HSTU, SASRec, Llama-style) is made of.

    Args:
        num_blocks (int): stacked blocks (>= 1).
        num_heads (int): attention heads; every set dim must be divisible by it.
        max_seq_len (int): longest input row; sizes the position tables.
        dropout (float): dropout rate in ``[0, 1)`` (input, residual branches).
        rab (str): HSTU's relative attention bias: ``none``, ``position``, ``time`` or
            ``both``.
        attention (str): HSTU's attention: ``silu`` (pointwise, the paper) or ``softmax``.
        attention_scale (str): HSTU's SiLU scale: ``length`` (``SiLU(qk + rab) / n``, the
            reference) or ``sqrt_dim`` (``SiLU(qk / sqrt(d) + rab)``).
        time_bias_source (str): HSTU's time gap: ``seen`` (``t_i - t_j``, only
            timestamps already seen) or ``next`` (``t_{i+1} - t_j``, the reference,
            which reads the target's time).
        num_time_buckets (int): log buckets of the time gap (>= 1).
        length_buckets (int): run the blocks on this many groups of rows of similar
            length, each padded only to its own longest row (1: the whole batch padded
            to its longest row); the same function, less padding (see
            :class:`~torchrec_me.modules.sequential.common.SequenceEncoder`). The default
            8 was the fastest at MovieLens-100k's lengths and at a long-tailed one
            (``benchmarks/sequential.py --jagged``, batch 128); a batch without padding
            runs unbucketed.

    Example::

        config = EncoderConfig(num_blocks=2, num_heads=1, max_seq_len=200)
    """

    num_blocks: int = 2
    num_heads: int = 1
    max_seq_len: int = 200
    dropout: float = 0.2
    rab: str = "both"
    attention: str = "silu"
    attention_scale: str = "length"
    time_bias_source: str = "seen"
    num_time_buckets: int = 128
    length_buckets: int = 8

    def __post_init__(self) -> None:
        for key in ("num_blocks", "num_heads", "max_seq_len", "num_time_buckets", "length_buckets"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.{key}': must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key 'model.dropout': must be in [0, 1), got {self.dropout}")
        _choice("rab", self.rab, tuple(RAB_PARTS))
        _choice("attention", self.attention, ATTENTIONS)
        _choice("attention_scale", self.attention_scale, ATTENTION_SCALES)
        _choice("time_bias_source", self.time_bias_source, TIME_BIAS_SOURCES)

    def check_dim(self, dim: int, head_multiple: int = 1) -> int:
        """The per-head dim ``dim // num_heads``; raises unless it is a positive multiple
        of ``head_multiple`` (2 for rotary embeddings)."""
        head = dim // self.num_heads
        if dim % self.num_heads or head % head_multiple or head == 0:
            raise ConfigError(
                f"config key 'model.num_heads': dim {dim} must split into {self.num_heads} heads "
                f"of a positive multiple of {head_multiple}"
            )
        return head
