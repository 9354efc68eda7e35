"""What every converter shares before it writes: options, errors, features, splits, skipped lines.

* **Options.** :class:`PrepareOptions` holds the choices that are the same for every
  dataset (split, seed, row groups, overwrite, progress, tolerance of malformed lines);
  a ``prepare_*`` function takes it next to its dataset's own arguments.

* **Splits.** ``random`` (the default, the paper's protocol): exactly ``int(0.8 n)``
  train, ``int(0.1 n)`` validation and the rest test rows; row ``i`` (its index among
  the valid rows) goes to the split drawn for it by a seeded shuffle of the ``n``
  split labels (one byte per row; the data itself is not shuffled, so each split
  keeps file order). ``time``: the first 80% of the valid rows are train, the next 10%
  validation and the last 10% test (Criteo's and Avazu's files are in time order).

* **Skipped lines.** A malformed line is counted by reason in a :class:`SkipLog`, with
  the first few examples, so that the user sees why rows were dropped; an input with
  too many of them is refused by :func:`check_skipped`.
"""

import collections
import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from torchrec_me.data.store import DatasetError
SPLIT_FRACTIONS: Tuple[float, float, float] = (0.8, 0.1, 0.1)
SPLIT_MODES: Tuple[str, ...] = ("random", "time")
DEFAULT_ROW_GROUP_SIZE = 16384
DEFAULT_BLOCK_SIZE = 16 << 20
# The reader cuts each epoch into up to 16 lanes of row groups (see data/parquet.py): a
# train split of fewer groups than this gets smaller groups, so every lane has one.
MIN_TRAIN_ROW_GROUPS = 16
MAX_EXAMPLES = 3


class PrepareError(DatasetError):
    """The input cannot be prepared (wrong format, empty, too many bad lines, ...).

    The message is a single line meant for the user; the CLI prints it and exits 1.
    """


@dataclass(frozen=True)
class PrepareOptions:
    """How a converter splits, writes and reports, whatever the dataset.

    Args:
        split (str): ``random`` (seeded 80/10/10) or ``time`` (contiguous 80/10/10).
        seed (int): seed of the ``random`` split.
        row_group_size (Optional[int]): rows per Parquet row group, the reader's unit of
            work; None takes the dataset's default.
        overwrite (bool): replace an existing output once the new one is complete.
        progress (bool): show progress bars on stderr (streaming text formats).
        max_bad_fraction (float): refuse the input when more of its lines are malformed,
            since then it is most likely another format.
        block_size (int): bytes per block of the streaming text reader; it bounds the
            memory one block takes.
        summary (bool): print rows, vocabulary sizes and skipped lines when done.

    Example::

        prepare_criteo("train.txt", "criteo-prepared", PrepareOptions(split="time", progress=False))
    """

    split: str = "random"
    seed: int = 0
    row_group_size: Optional[int] = None
    overwrite: bool = False
    progress: bool = True
    max_bad_fraction: float = 0.01
    block_size: int = DEFAULT_BLOCK_SIZE
    summary: bool = True

    def __post_init__(self) -> None:
        check_split_mode(self.split)
        if self.seed < 0:
            raise PrepareError(f"--seed must be >= 0, got {self.seed}")
        if self.row_group_size is not None and self.row_group_size < 1:
            raise PrepareError(f"--row-group-size must be >= 1, got {self.row_group_size}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise PrepareError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.block_size < 1:
            raise PrepareError(f"block_size must be >= 1, got {self.block_size}")

    def row_groups(self, default: int) -> int:
        """The requested row-group size, or the dataset's ``default`` when none was given."""
        return default if self.row_group_size is None else self.row_group_size


@dataclass
class FeatureSpec:
    """One output column.

    Args:
        name (str): column and feature name.
        kind (str): ``sparse`` (one id per row), ``bag`` (a list of ids) or ``dense`` (a float).
        source (Optional[str]): the raw column it is derived from (default: ``name``).
        encoding (str): how a raw value becomes a token or value, recorded in the metadata.
    """

    name: str
    kind: str = "sparse"
    source: Optional[str] = None
    encoding: str = "token"


def excerpt(text: Union[str, bytes], limit: int = 60) -> str:
    """A quoted, ASCII-only excerpt of ``text`` for a message, at most ``limit`` characters
    inside the quotes.

    Control and non-ASCII characters appear escaped; text that is not UTF-8 (bytes, or a
    str decoded with ``surrogateescape``) appears byte by byte (``\\xff``), never raw.
    """
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    try:
        shown = raw.decode("utf-8")
    except UnicodeDecodeError:
        shown = raw.decode("latin-1")
    escaped = ascii(shown)[1:-1]
    if len(escaped) > limit:
        cut = escaped.rfind("\\", 0, limit - 2)  # do not split an escape sequence
        escaped = escaped[: cut if cut > limit - 12 else limit - 3] + "..."
    return f"'{escaped}'"


def check_split_mode(mode: str) -> None:
    """Raise :class:`PrepareError` unless ``mode`` is one of :data:`SPLIT_MODES`."""
    if mode not in SPLIT_MODES:
        raise PrepareError(f"unknown split mode {mode!r}; choose one of {', '.join(SPLIT_MODES)}")


def split_sizes(n: int) -> Tuple[int, int, int]:
    """``(train, val, test)`` row counts of ``n`` rows: ``int(0.8 n)``, ``int(0.1 n)``, the rest."""
    n_train = int(n * SPLIT_FRACTIONS[0])
    n_val = int(n * SPLIT_FRACTIONS[1])
    return n_train, n_val, n - n_train - n_val


def split_assignment(n: int, mode: str = "random", seed: int = 0) -> np.ndarray:
    """(n,) uint8 split index (0 train, 1 val, 2 test) of each row.

    ``random``: a seeded shuffle of exactly :func:`split_sizes` labels, so row ``i``'s
    split depends only on ``(seed, n, i)``. ``time``: contiguous 80/10/10 in row order.
    """
    check_split_mode(mode)
    labels = np.repeat(np.arange(3, dtype=np.uint8), split_sizes(n))
    if mode == "random":
        np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E117])).shuffle(labels)
    return labels


def effective_row_group_size(requested: int, n_rows: int) -> int:
    """``requested``, made smaller when the train split would have < MIN_TRAIN_ROW_GROUPS groups."""
    if requested < 1:
        raise PrepareError(f"row group size must be >= 1, got {requested}")
    n_train = split_sizes(n_rows)[0]
    return max(1, min(requested, math.ceil(n_train / MIN_TRAIN_ROW_GROUPS)))


class SkipLog:
    """Counts of skipped input lines per reason, with the first few examples of each."""

    def __init__(self) -> None:
        self.counts: "collections.Counter[str]" = collections.Counter()
        self.examples: Dict[str, List[str]] = {}

    @property
    def total(self) -> int:
        """Skipped lines, all reasons together."""
        return sum(self.counts.values())

    def wants_example(self, reason: str) -> bool:
        """Whether the next line skipped for ``reason`` becomes an example (worth describing)."""
        return len(self.examples.get(reason, ())) < MAX_EXAMPLES

    def add(self, reason: str, line: Optional[int] = None, text: Optional[Union[str, bytes]] = None) -> None:
        """Count one skipped line; keep it as an example when ``text`` is given and one is wanted."""
        self.counts[reason] += 1
        if text is not None and self.wants_example(reason):
            self.examples.setdefault(reason, []).append(f"line {line if line is not None else '?'}: {excerpt(text, 80)}")

    def describe(self) -> str:
        """One line: ``N lines skipped: 3 wrong column count (e.g. line 7: '...'), ...``."""
        if not self.counts:
            return "no lines skipped"
        parts = [f"{n} {reason} (e.g. {'; '.join(self.examples.get(reason, []))})" for reason, n in self.counts.most_common()]
        return f"{self.total} lines skipped: " + ", ".join(parts)

    def to_json(self) -> Dict[str, Any]:
        """The ``skipped`` entry of ``metadata.json``."""
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.examples}


def check_skipped(input_path: str, dataset: str, n_good: int, skips: SkipLog, max_bad_fraction: float) -> None:
    """Refuse an input without a valid row, or with more than ``max_bad_fraction`` malformed lines.

    Raises:
        PrepareError: naming the input, the counts and the first skipped lines.
    """
    n_lines = n_good + skips.total
    if n_good == 0:
        raise PrepareError(f"input {input_path} has no valid {dataset} rows; " + skips.describe())
    if skips.total > max_bad_fraction * n_lines:
        raise PrepareError(
            f"input {input_path} does not look like {dataset} data: {skips.total:,} of {n_lines:,} lines "
            f"({skips.total / n_lines:.1%}) are malformed, more than the {max_bad_fraction:.0%} allowed; "
            + skips.describe()
        )


def report_errors(action: Callable[[], None], interrupted: str) -> int:
    """Run ``action``: 0, or 1 with one ``torchrec-me: error:`` line for a PrepareError or an
    I/O error (disk full, permission denied, ...), or 130 on Ctrl-C."""
    try:
        action()
    except (PrepareError, OSError) as e:
        print(f"torchrec-me: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"torchrec-me: interrupted; {interrupted}", file=sys.stderr)
        return 130
    return 0
