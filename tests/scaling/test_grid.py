"""Grid files: crossing, zipping, naming, override order and the errors they give."""

from pathlib import Path

import pytest

from torchrec_me.config import ConfigError, parse_override
from torchrec_me.scaling.grid import expand, format_value, load_grid, parse_grid

GRID = """
base:
  train.steps: 20
  model: dcnv2-se-1x
grid:
  model.num_sets: [1, 2]
  train.seed: [0, 1, 2]
zip:
  - {model.embedding_dim: 12}
  - {model.embedding_dim: 24, model.dropout: 0.5}
"""


def test_zip_entries_cross_the_grid_in_file_order() -> None:
    cells = expand(parse_grid(GRID))
    assert len(cells) == 2 * 2 * 3
    assert [c.name for c in cells[:3]] == [
        "embedding_dim-12__num_sets-1__seed-0", "embedding_dim-12__num_sets-1__seed-1", "embedding_dim-12__num_sets-1__seed-2",
    ]  # fmt: skip
    last = cells[-1]
    assert last.name == "embedding_dim-24__dropout-0.5__num_sets-2__seed-2"
    # The preset first, then base, zip entry and grid values.
    assert last.overrides == ["model=dcnv2-se-1x", "train.steps=20", "model.embedding_dim=24", "model.dropout=0.5",
                              "model.num_sets=2", "train.seed=2"]  # fmt: skip
    assert last.values == {"model.embedding_dim": 24, "model.dropout": 0.5, "model.num_sets": 2, "train.seed": 2}


def test_names_are_stable_and_use_the_full_key_when_last_parts_collide() -> None:
    grid = parse_grid("grid:\n  model.seed_x: [1]\n  train.seed: [3]\n  data.seed: [4]\n")
    (cell,) = expand(grid)
    assert cell.name == "seed_x-1__train.seed-3__data.seed-4"
    assert expand(grid)[0] == cell


@pytest.mark.parametrize("value", [3, 0.001, True, [8, 16, 32], "hstu", "a b: c", "1e-3", None])
def test_values_round_trip_through_an_override(value: object) -> None:
    assert parse_override(f"k={format_value(value)}")[1] == value


def test_base_only_grid_is_one_cell() -> None:
    (cell,) = expand(parse_grid("base:\n  train.steps: 5\n"))
    assert cell.name == "base" and cell.overrides == ["train.steps=5"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("base: [1]", "'base' must be a mapping"),
        ("grid:\n  train.seed: 3\n", "axis 'train.seed' must be a non-empty list"),
        ("grid:\n  train.seed: []\n", "non-empty list"),
        ("zip: {a: 1}", "'zip' must be a list"),
        ("cells: 3", "unknown top-level key"),
        ("- 1", "top level must be a mapping"),
        ("base: {a: [1", "not valid YAML"),
    ],
)
def test_bad_grid_files_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_grid(text)


def test_duplicate_cell_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="both be named"):
        expand(parse_grid("grid:\n  model.dropout: [0.5, '0.5']\n"))


def test_every_cell_config_is_checked_before_anything_runs(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("base:\n  model: dcnv2-se-1x\ngrid:\n  model.num_sets: [1, 0]\n")
    with pytest.raises(ConfigError, match=r"cell 'num_sets-0'.*num_sets"):
        load_grid(str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_grid(str(tmp_path / "missing.yaml"))
    path.write_text("base:\n  model: no-such-preset\n")
    with pytest.raises(ConfigError, match="cell 'base'"):
        load_grid(str(path))
