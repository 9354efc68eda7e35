"""Sweep grids: a base config plus axes of ``key=value`` overrides, expanded into cells.

A grid file (YAML)::

    base:                      # overrides every cell gets
      model: dcnv2-se-1x       # a preset, as `model=NAME` on the command line
      train.steps: 200
    grid:                      # crossed: every combination, in file order
      model.num_sets: [1, 2, 4]
      train.seed: [0, 1, 2]
    zip:                       # optional: each entry is one variant, crossed with the grid
      - {model.embedding_dim: 12}
      - {model.embedding_dim: 24}
    wall_time: "about 40 min on 2 cores"   # optional: what the study is expected to take

Each cell's overrides are ``model=PRESET`` first (wherever it is given), then the base,
then its zip entry, then its grid values, so a later, more specific value wins. The
cell's name is built from the values that vary (``num_sets-2__seed-0``), so it stays
the same when the sweep is run again. Every cell's config is parsed and checked when
the grid is loaded: a bad key or value is reported with the cell that has it, before
anything runs.
"""

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from torchrec_me.config import ConfigError, load_yaml
from torchrec_me.job import load_job_config

GRID_KEYS = ("base", "grid", "zip", "wall_time")
#: The override key that selects a preset; it is applied before every other key.
PRESET_KEY = "model"


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: its name and its ``KEY=VALUE`` overrides (in order).

    Args:
        name (str): directory name under ``DIR/cells/``.
        overrides (List[str]): passed to ``torchrec-me train`` as they are.
        values (Dict[str, Any]): the grid and zip values of this cell (what varies).
    """

    name: str
    overrides: List[str]
    values: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Grid:
    """A parsed grid file (see the module doc)."""

    base: Dict[str, Any]
    axes: Dict[str, List[Any]]
    zipped: List[Dict[str, Any]]
    wall_time: Optional[str] = None

    @property
    def varying(self) -> List[str]:
        """The keys that vary between cells: every zip key (the outer loop), then the axes."""
        keys: List[str] = []
        for entry in self.zipped:
            keys += [k for k in entry if k not in keys]
        return keys + [k for k in self.axes if k not in keys]


def format_value(value: Any) -> str:
    """``value`` as an override reads it back (the override's value is YAML)."""
    if isinstance(value, str):
        try:
            if load_yaml(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)


def _mapping(raw: Any, what: str, origin: str) -> Dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise ConfigError(f"grid {origin!r}: '{what}' must be a mapping of KEY: value")
    return dict(raw)


def parse_grid(text: str, origin: str = "grid") -> Grid:
    """The :class:`Grid` of a grid file's text (structure only; see :func:`load_grid`)."""
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"grid {origin!r} is not valid YAML: {e}")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"grid {origin!r}: the top level must be a mapping with 'base', 'grid' and/or 'zip'")
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"grid {origin!r}: unknown top-level key(s) {unknown}; expected {list(GRID_KEYS)}")
    axes = _mapping(raw.get("grid"), "grid", origin)
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid {origin!r}: axis {key!r} must be a non-empty list, got {values!r}")
    zipped = raw.get("zip") or []
    if not isinstance(zipped, list):
        raise ConfigError(f"grid {origin!r}: 'zip' must be a list of mappings")
    zipped = [_mapping(entry, f"zip[{i}]", origin) for i, entry in enumerate(zipped)]
    wall = raw.get("wall_time")
    return Grid(_mapping(raw.get("base"), "base", origin), axes, zipped, None if wall is None else str(wall))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "", text.replace(",", "x").replace(" ", "")) or "x"


def _cell_name(values: Dict[str, Any], varying: List[str]) -> str:
    """``key-value`` of each varying key, the key's last part unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in varying]
    short = {k: (s if last.count(s) == 1 else k) for k, s in zip(varying, last)}
    parts = [f"{_slug(short[k])}-{_slug(format_value(values[k]))}" for k in varying if k in values]
    return "__".join(parts) or "base"


def _overrides(*layers: Dict[str, Any]) -> List[str]:
    merged: Dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    preset = [f"{PRESET_KEY}={format_value(merged.pop(PRESET_KEY))}"] if PRESET_KEY in merged else []
    return preset + [f"{k}={format_value(v)}" for k, v in merged.items()]


def expand(grid: Grid) -> List[Cell]:
    """Every cell of ``grid``: each zip entry (or none) crossed with the grid axes."""
    combos = [dict(zip(grid.axes, values)) for values in itertools.product(*grid.axes.values())]
    cells, seen = [], set()
    for entry in grid.zipped or [{}]:
        for combo in combos:
            values = {**entry, **combo}
            name = _cell_name(values, grid.varying)
            if name in seen:
                raise ConfigError(f"grid: two cells would both be named {name!r}; make their values differ")
            seen.add(name)
            cells.append(Cell(name, _overrides(grid.base, entry, combo), values))
    return cells


def load_grid(path: str) -> "tuple[Grid, List[Cell]]":
    """The grid file ``path`` and its cells, each cell's config checked."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--grid {path!r} does not exist")
    grid = parse_grid(p.read_text(), origin=path)
    cells = expand(grid)
    for cell in cells:
        try:
            load_job_config(overrides=cell.overrides)
        except ConfigError as e:
            raise ConfigError(f"grid {path!r}, cell {cell.name!r}: {e}") from e
    return grid, cells
