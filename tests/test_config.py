from pathlib import Path

import pytest
import yaml

from torchrec_me.cli import main as cli_main
from torchrec_me.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_overrides_are_typed() -> None:
    cfg = load_config(None, ["model.num_sets=1", "model.embedding_dim=48", "train.steps=300", "train.sparse_lr=1"])
    assert (cfg.model.num_sets, cfg.model.embedding_dim, cfg.train.steps) == (1, 48, 300)
    assert isinstance(cfg.train.sparse_lr, float) and cfg.train.sparse_lr == 1.0
    cfg = load_config(None, ["model.num_sets=2", "model.set_dims=[8, 16]"])
    assert cfg.model.dims() == [8, 16]


def test_default_yaml_is_the_dataclass_default() -> None:
    assert yaml.safe_load((REPO / "configs" / "default.yaml").read_text()) == Config().to_dict()


def test_yaml_file_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  num_sets: 2\ntrain:\n  steps: 7\n")
    cfg = load_config(str(f), ["train.steps=9"])
    assert (cfg.model.num_sets, cfg.train.steps) == (2, 9)


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("model.nm_sets=2", "model.nm_sets", "unknown key"),
        ("modle.num_sets=2", "modle.num_sets", "unknown key"),
        ("num_sets=2", "num_sets", "unknown key"),
        ("model.num_sets=two", "model.num_sets", "expected an integer"),
        ("model.num_sets=0", "model.num_sets", ">= 1"),
        ("model.embedding_dim=10", "model.embedding_dim", "FBGEMM"),
        ("train.batch_size=1.5", "train.batch_size", "expected an integer"),
        ("model.backbone=nope", "model.backbone", "unknown backbone"),
        ("train.sparse_optimizer=lamb", "train.sparse_optimizer", "unknown optimizer"),
        ("model.dropout=1.5", "model.dropout", "[0, 1)"),
    ],
)
def test_bad_override_names_the_key(override: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"'{key}'" in str(e.value) and words in str(e.value)


def test_set_dims_must_match_sets_and_fbgemm() -> None:
    with pytest.raises(ConfigError, match="model.set_dims.*3 entries"):
        load_config(None, ["model.num_sets=2", "model.set_dims=[8, 8, 8]"])
    with pytest.raises(ConfigError, match="model.set_dims.*FBGEMM"):
        load_config(None, ["model.num_sets=2", "model.set_dims=[8, 6]"])


def test_adam_refused_on_cpu() -> None:
    with pytest.raises(ConfigError, match="no CPU kernel"):
        load_config(None, ["train.device=cpu", "train.sparse_optimizer=adam"])


def test_bad_file_and_malformed_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    f = tmp_path / "c.yaml"
    f.write_text("model: 3\n")
    with pytest.raises(ConfigError, match="'model'.*mapping"):
        load_config(str(f))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["model.num_sets"])


def test_cli_reports_one_error_and_exits_nonzero(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["train", "model.embedding_dim=10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.embedding_dim" in err[0] and "multiple of 4" in err[0]
