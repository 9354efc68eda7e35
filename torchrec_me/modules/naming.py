"""Table names of the K embedding sets: the one owner of the naming convention.

* ``set{k}__{feature}``: feature ``feature`` in set ``k`` (``separate`` and ``grouped``
  layouts). Planner ``ParameterConstraints`` are keyed by table name, so the prefix lets
  a constraint target one set without touching the others, and the collapse analysis
  reads the set index back with :func:`parse_table_name`.
* ``packed__{feature}``: the ``packed`` layout's one table per feature holding all K
  sets side by side (column slices).
"""

import re
from typing import Tuple

PACKED_PREFIX = "packed__"
_SET_TABLE = re.compile(r"^set(\d+)__(.+)$")


def set_table_name(set_index: int, feature: str) -> str:
    """Table name of ``feature`` in set ``set_index``: ``set{k}__{feature}``."""
    return f"set{set_index}__{feature}"


def packed_table_name(feature: str) -> str:
    """Name of the packed table of ``feature``: ``packed__{feature}``."""
    return f"{PACKED_PREFIX}{feature}"


def is_packed_table(table: str) -> bool:
    """Whether ``table`` packs the K sets column-wise (``model.layout=packed``)."""
    return table.startswith(PACKED_PREFIX)


def parse_table_name(table: str) -> Tuple[int, str]:
    """``(set index, feature)`` of a table named ``set{k}__{feature}``.

    Tables not following the convention are read as set 0 of a feature named after the
    table, so single-embedding models built from plain EBCs still work.
    """
    m = _SET_TABLE.match(table)
    if m is None:
        return 0, table
    return int(m.group(1)), m.group(2)
