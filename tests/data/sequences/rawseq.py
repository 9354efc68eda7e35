"""Small interaction logs in the exact raw formats of ``prepare sequences``, written by tests.

A log is a list of :class:`Event` in input order. Timestamps repeat within users (ties
must keep input order) and the input is not sorted by time, so tests see the reordering.
:func:`expected_sequences` recomputes, in plain Python, what the prepared dataset must hold.
"""

import random
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple


class Event(NamedTuple):
    user: str
    item: str
    rating: float
    timestamp: int


def random_log(n_users: int = 40, n_items: int = 30, seed: int = 0, max_len: int = 12) -> List[Event]:
    """Users with 1..max_len events, Zipf-ish items, coarse timestamps (ties), shuffled order."""
    rng = random.Random(seed)
    events = []
    for u in range(n_users):
        t = rng.randrange(1000, 5000) * 10
        for _ in range(rng.randint(1, max_len)):
            item = min(int(rng.paretovariate(0.7)), n_items)
            t += rng.choice([0, 0, 10, 50])
            events.append(Event(f"{u + 1}", f"{item * 7 + 1}", float(rng.randint(1, 5)), t))
    rng.shuffle(events)
    return events


def time_ordered(events: Sequence[Event]) -> List[Event]:
    """The events in global time order (stable): the input order of the formats without timestamps."""
    return sorted(events, key=lambda e: e.timestamp)


def expected_sequences(events: Sequence[Event], by_time: bool = True) -> Dict[str, List[Tuple[str, int, float]]]:
    """user -> [(item, timestamp, rating)] in time order, ties (or everything, without time) in input order."""
    out: Dict[str, List[Tuple[int, int, Tuple[str, int, float]]]] = {}
    for k, e in enumerate(events):
        t = e.timestamp if by_time else 0
        out.setdefault(e.user, []).append((t, k, (e.item, t, e.rating)))
    return {u: [x for _, _, x in sorted(rows)] for u, rows in out.items()}


def _insert(lines: List[str], bad: Sequence[Tuple[int, str]]) -> List[str]:
    for pos, text in sorted(bad, reverse=True):
        lines.insert(pos, text)
    return lines


def _rating(r: float) -> str:
    return str(int(r)) if r == int(r) else str(r)


def _write(path: Path, lines: Sequence[str], header: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((header + "\n" if header else "") + "".join(line + "\n" for line in lines))
    return path


Writer = Callable[[Path, Sequence[Event], Sequence[Tuple[int, str]]], Path]


def write_udata(path: Path, events: Sequence[Event], bad: Sequence[Tuple[int, str]] = ()) -> Path:
    return _write(path, _insert([f"{e.user}\t{e.item}\t{_rating(e.rating)}\t{e.timestamp}" for e in events], bad))


def write_ratings_dat(path: Path, events: Sequence[Event], bad: Sequence[Tuple[int, str]] = ()) -> Path:
    return _write(path, _insert([f"{e.user}::{e.item}::{_rating(e.rating)}::{e.timestamp}" for e in events], bad))


def write_ratings_csv(path: Path, events: Sequence[Event], bad: Sequence[Tuple[int, str]] = ()) -> Path:
    lines = _insert([f"{e.user},{e.item},{e.rating:.1f},{e.timestamp}" for e in events], bad)
    return _write(path, lines, header="userId,movieId,rating,timestamp")


def write_amazon(path: Path, events: Sequence[Event], bad: Sequence[Tuple[int, str]] = ()) -> Path:
    lines = [f"A{int(e.user) * 7919:011X},{int(e.item):010d},{e.rating:.1f},{e.timestamp}" for e in events]
    return _write(path, _insert(lines, bad))


def amazon_tokens(e: Event) -> Tuple[str, str]:
    """The raw user and item ids :func:`write_amazon` writes for ``e``."""
    return f"A{int(e.user) * 7919:011X}", f"{int(e.item):010d}"


def write_recbole(path: Path, events: Sequence[Event], bad: Sequence[Tuple[int, str]] = ()) -> Path:
    lines = _insert([f"{e.user}\t{e.item}\t{_rating(e.rating)}\t{e.timestamp}" for e in events], bad)
    return _write(path, lines, header="user_id:token\titem_id:token\trating:float\ttimestamp:float")


def write_pairs(path: Path, events: Sequence[Event], bad: Sequence[Tuple[int, str]] = ()) -> Path:
    return _write(path, _insert([f"{e.user} {e.item}" for e in events], bad))


def write_lines(path: Path, events: Sequence[Event], bad: Sequence[Tuple[int, str]] = ()) -> Path:
    """One line per run of consecutive events of the same user (a user may span several lines)."""
    lines: List[str] = []
    last = None
    for e in events:
        if e.user == last:
            lines[-1] += f" {e.item}"
        else:
            lines.append(f"{e.user} {e.item}")
        last = e.user
    return _write(path, _insert(lines, bad))
