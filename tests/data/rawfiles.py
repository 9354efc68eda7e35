"""Small raw files in the exact Criteo, Avazu and MovieLens formats, written by tests.

Values are drawn so that every field has frequent tokens, tokens at and just below the
min-count threshold, and empty values. The generators return the good rows as field
lists, so tests can recompute the expected encoding with plain Python.
"""

import random
from pathlib import Path
from typing import List, Sequence, Tuple

from torchrec_me.data.prepare.avazu import COLUMNS as AVAZU_COLUMNS

Rows = List[List[str]]


def _hex(rng: random.Random, pool: int) -> str:
    """One of ``pool`` 8-hex tokens, skewed so that some are rare."""
    k = min(int(rng.paretovariate(0.8)), pool)
    return f"{(k * 2654435761) % (1 << 32):08x}"


def criteo_rows(n: int, seed: int = 0) -> Rows:
    """``n`` good Criteo rows: label, I1..I13 (ints, some empty or <= 2), C1..C26 (8-hex or empty)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        row = [str(int(rng.random() < 0.3))]
        for i in range(13):
            r = rng.random()
            row.append("" if r < 0.1 else str(rng.choice([-2, -1, 0, 1, 2])) if r < 0.3 else str(int(rng.expovariate(1 / (5 + 40 * i)))))
        for c in range(26):
            row.append("" if rng.random() < 0.05 else _hex(rng, 40 + 30 * c))
        rows.append(row)
    return rows


def write_lines(path: Path, lines: Sequence[str], header: str = "") -> Path:
    path.write_text((header + "\n" if header else "") + "".join(line + "\n" for line in lines))
    return path


def write_criteo(path: Path, rows: Rows, bad: Sequence[Tuple[int, str]] = ()) -> Path:
    """Write ``rows`` tab-separated, inserting each ``(position, text)`` of ``bad`` before row ``position``."""
    lines = ["\t".join(r) for r in rows]
    for pos, text in sorted(bad, reverse=True):
        lines.insert(pos, text)
    return write_lines(path, lines)


def avazu_rows(n: int, seed: int = 0) -> Rows:
    """``n`` good Avazu rows (24 columns, hour YYMMDDHH over 10 days of Oct 2014)."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        hour = f"1410{21 + rng.randrange(10):02d}{rng.randrange(24):02d}"
        row = [str(10**15 + k), str(int(rng.random() < 0.17)), hour]
        row += [_hex(rng, 10 + 7 * c) if c % 3 else str(1000 + int(rng.paretovariate(1.0))) for c in range(21)]
        rows.append(row)
    return rows


def write_avazu(path: Path, rows: Rows, bad: Sequence[Tuple[int, str]] = ()) -> Path:
    lines = [",".join(r) for r in rows]
    for pos, text in sorted(bad, reverse=True):
        lines.insert(pos, text)
    return write_lines(path, lines, header=",".join(AVAZU_COLUMNS))
