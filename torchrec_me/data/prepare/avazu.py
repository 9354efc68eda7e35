"""Avazu CTR logs (Kaggle ``train.csv``) to a prepared Parquet dataset.

Input: comma-separated with the header ``id,click,hour,C1,banner_pos,site_id,...,C21``
(24 columns; ``hour`` is ``YYMMDDHH``). ``id`` is dropped, ``click`` is the label and
the other 22 columns are categorical fields, each token seen fewer than ``min_count``
(4, as in the multi-embedding paper's reference code) times mapping to the field's
out-of-vocabulary id. ``hour`` is kept as given (one token per hour of the 10 days) by
default; ``hour_features=True`` (``--hour-features``) replaces it by ``hour_of_day``
(00-23) and ``weekday`` (0 = Monday). Lines with a wrong column count, a click other
than 0/1 or an ``hour`` that is not ``YYMMDDHH`` are skipped and reported.
"""

import argparse
import datetime
import re
from functools import lru_cache
from typing import Any, Dict, List, Optional

from torchrec_me.data.prepare.common import FeatureSpec, PrepareOptions
from torchrec_me.data.prepare.scan import TextFormat
from torchrec_me.data.prepare.text import prepare_text

COLUMNS: List[str] = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
    "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
).split(",")
FIELDS: List[str] = COLUMNS[2:]  # 22 categorical fields, hour first
DEFAULT_MIN_COUNT = 4

_HOUR_RE = re.compile(r"[0-9]{8}")


@lru_cache(maxsize=1 << 16)
def _parse_hour(raw: str) -> Optional[datetime.datetime]:
    if _HOUR_RE.fullmatch(raw) is None:
        return None
    try:
        return datetime.datetime(2000 + int(raw[:2]), int(raw[2:4]), int(raw[4:6]), int(raw[6:8]))
    except ValueError:
        return None


def is_hour(raw: str) -> bool:
    """Whether ``raw`` is a real ``YYMMDDHH`` hour (the line check of ``hour``)."""
    return _parse_hour(raw) is not None


def hour_of_day(raw: str) -> str:
    """The ``HH`` token of a ``YYMMDDHH`` hour."""
    return raw[6:8]


def weekday(raw: str) -> str:
    """The weekday token (``0`` = Monday) of a ``YYMMDDHH`` hour; empty when it is not one."""
    t = _parse_hour(raw)
    return str(t.weekday()) if t is not None else ""


def avazu_format(min_count: int = DEFAULT_MIN_COUNT, hour_features: bool = False) -> TextFormat:
    """The Avazu CSV format; ``hour`` as one token, or as hour-of-day and weekday."""
    token_fns: Dict[str, Any] = {}
    if hour_features:
        time_feats = [
            FeatureSpec("hour_of_day", "sparse", "hour", "HH of YYMMDDHH"),
            FeatureSpec("weekday", "sparse", "hour", "weekday of YYMMDDHH, 0 = Monday"),
        ]
        token_fns = {"hour_of_day": hour_of_day, "weekday": weekday}
    else:
        time_feats = [FeatureSpec("hour", "sparse", "hour", "YYMMDDHH token")]
    feats = time_feats + [FeatureSpec(n, "sparse", n, "token") for n in FIELDS[1:]]
    return TextFormat(
        name="avazu",
        delimiter=",",
        columns=COLUMNS,
        label="click",
        features=feats,
        min_count=min_count,
        header=COLUMNS,
        token_fns=token_fns,
        checks={"hour": ("hour not YYMMDDHH", is_hour)},
        params={"hour_features": hour_features, "dropped": ["id"]},
    )


def prepare_avazu(
    input_path: str,
    output: str,
    options: Optional[PrepareOptions] = None,
    *,
    min_count: int = DEFAULT_MIN_COUNT,
    hour_features: bool = False,
) -> Dict[str, Any]:
    """Prepare Avazu's ``train.csv`` into ``output``; returns the written metadata.

    Args:
        input_path (str): ``train.csv`` (path or URI, may be compressed).
        output (str): the dataset directory to create.
        options (Optional[PrepareOptions]): split, row groups, overwrite, ...
        min_count (int): rarer tokens share their field's out-of-vocabulary id.
        hour_features (bool): ``hour_of_day`` and ``weekday`` instead of the ``hour`` token.

    Raises:
        PrepareError: empty input, no Avazu header, > ``max_bad_fraction`` bad lines, or
            ``output`` exists without ``overwrite``.
    """
    return prepare_text(avazu_format(min_count, hour_features), input_path, output, options)


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Avazu's own flags of ``torchrec-me prepare avazu``."""
    parser.add_argument(
        "--hour-features", action="store_true",
        help="replace 'hour' (YYMMDDHH, kept as one token by default) by hour_of_day and weekday",
    )  # fmt: skip


def prepare_from_args(args: argparse.Namespace, options: PrepareOptions) -> Dict[str, Any]:
    """Run :func:`prepare_avazu` for a parsed ``prepare avazu`` command line."""
    return prepare_avazu(args.input, args.output, options, min_count=args.min_count, hour_features=args.hour_features)
