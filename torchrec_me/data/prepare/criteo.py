"""Criteo Kaggle display-advertising logs (``train.txt``) to a prepared Parquet dataset.

Input: one sample per line, tab-separated: ``label`` (0/1), ``I1..I13`` (integers, may
be empty), ``C1..C26`` (8-hex-digit hashes, may be empty); 45,840,617 lines for the
Kaggle file. Lines with a wrong column count, a label other than 0/1 or a non-integer
in an I field are skipped and reported (see :mod:`.scan`).

Default preprocessing (the multi-embedding paper's reference code): 39 categorical
fields. Each integer ``v`` becomes the token ``int(log(v) ** 2)`` when ``v > 2`` and
``v - 2`` otherwise (so ``2, 1, 0, -1`` are the tokens ``0, -1, -2, -3``, disjoint from
the bins ``>= 1`` of larger values); an empty integer is the token ``NULL`` and an
empty categorical value the token ``''``. In every field -- binned integers included,
and the empty tokens too, exactly as in the reference -- a token seen fewer than
``min_count`` (10) times maps to the field's single out-of-vocabulary id.

``dense_log=True`` (``--dense-log``) is DLRM's convention instead: the 13 integers are
dense floats ``log(1 + max(v, 0))`` (empty -> 0) and only C1..C26 are categorical.
"""

import argparse
import math
import re
from functools import lru_cache
from typing import Any, Callable, Dict, List, Optional

from torchrec_me.data.prepare.common import FeatureSpec, PrepareError, PrepareOptions, excerpt
from torchrec_me.data.prepare.scan import TextFormat
from torchrec_me.data.prepare.text import prepare_text

INT_NAMES: List[str] = [f"I{i}" for i in range(1, 14)]
CAT_NAMES: List[str] = [f"C{i}" for i in range(1, 27)]
COLUMNS: List[str] = ["label"] + INT_NAMES + CAT_NAMES
DEFAULT_MIN_COUNT = 10

_INT_RE = re.compile(r"[+-]?[0-9]+")


def is_int_or_empty(raw: str) -> bool:
    """Whether ``raw`` is a valid I field: an integer, or empty."""
    return raw == "" or _INT_RE.fullmatch(raw) is not None


@lru_cache(maxsize=1 << 20)
def bin_int(raw: str) -> str:
    """The paper's token of one raw integer field value (see the module docstring)."""
    if raw == "":
        return "NULL"
    v = int(raw)
    return str(int(math.log(v) ** 2)) if v > 2 else str(v - 2)


def log_dense(raw: str) -> float:
    """DLRM's dense value ``log(1 + max(v, 0))``; an empty value is 0."""
    return math.log1p(max(int(raw), 0)) if raw else 0.0


def _check_first_line(line: str) -> None:
    if "\t" not in line:
        raise PrepareError(
            "this does not look like Criteo data: its first line has no tab character "
            f"({excerpt(line)}); Criteo's train.txt is tab-separated: label, I1..I13, C1..C26"
        )


def criteo_format(min_count: int = DEFAULT_MIN_COUNT, dense_log: bool = False) -> TextFormat:
    """The Criteo text format with the paper's (or, with ``dense_log``, DLRM's) encoding."""
    value_fns: Dict[str, Callable[[str], float]] = {}
    token_fns: Dict[str, Callable[[str], str]] = {}
    if dense_log:
        ints = [FeatureSpec(n, "dense", n, "log(1 + max(v, 0)), empty -> 0") for n in INT_NAMES]
        value_fns = {n: log_dense for n in INT_NAMES}
    else:
        ints = [FeatureSpec(n, "sparse", n, "int(log(v)^2) if v > 2 else v - 2; empty -> NULL") for n in INT_NAMES]
        token_fns = {n: bin_int for n in INT_NAMES}
    cats = [FeatureSpec(n, "sparse", n, "token; empty is its own token") for n in CAT_NAMES]
    return TextFormat(
        name="criteo",
        delimiter="\t",
        columns=COLUMNS,
        label="label",
        features=ints + cats,
        min_count=min_count,
        token_fns=token_fns,
        value_fns=value_fns,
        checks={n: ("non-integer value in {column}", is_int_or_empty) for n in INT_NAMES},
        check_first_line=_check_first_line,
        params={
            "int_encoding": "dense_log1p" if dense_log else "log2_bins",
            "dense_log": dense_log,
            "oov": "one id per field (the last) for tokens seen fewer than min_count times",
        },
    )


def prepare_criteo(
    input_path: str,
    output: str,
    options: Optional[PrepareOptions] = None,
    *,
    min_count: int = DEFAULT_MIN_COUNT,
    dense_log: bool = False,
) -> Dict[str, Any]:
    """Prepare Criteo's ``train.txt`` into ``output``; returns the written metadata.

    Args:
        input_path (str): ``train.txt`` (path or URI, may be compressed).
        output (str): the dataset directory to create.
        options (Optional[PrepareOptions]): split, row groups, overwrite, ...
        min_count (int): rarer tokens share their field's out-of-vocabulary id.
        dense_log (bool): DLRM's 13 dense floats instead of the paper's binned tokens.

    Raises:
        PrepareError: empty input, not Criteo (no tabs, or > ``max_bad_fraction`` bad
            lines), or ``output`` exists without ``overwrite``.
    """
    return prepare_text(criteo_format(min_count, dense_log), input_path, output, options)


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Criteo's own flags of ``torchrec-me prepare criteo``."""
    parser.add_argument(
        "--dense-log", action="store_true",
        help="DLRM convention: I1-I13 as 13 dense floats log(1 + max(x, 0)) (empty -> 0) plus 26 categorical "
        "fields, instead of the paper's 39 categorical fields (integers binned by int(log(v)^2))",
    )  # fmt: skip


def prepare_from_args(args: argparse.Namespace, options: PrepareOptions) -> Dict[str, Any]:
    """Run :func:`prepare_criteo` for a parsed ``prepare criteo`` command line."""
    return prepare_criteo(args.input, args.output, options, min_count=args.min_count, dense_log=args.dense_log)
