import re
from pathlib import Path

import pytest
import yaml

from torchrec_me.cli import main as cli_main
from torchrec_me.config import Config, ConfigError, parse_config
from torchrec_me.job import load_job_config as load_config

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
        ("model.backbone=nope", "model.backbone", "unknown value 'nope'"),
        ("train.sparse_optimizer=lamb", "train.sparse_optimizer", "unknown value 'lamb'"),
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


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.dense_lr=.inf", "train.dense_lr"),
        ("train.dense_lr=-1e-3", "train.dense_lr"),
        ("train.sparse_lr=.nan", "train.sparse_lr"),
        ("train.sparse_lr=0", "train.sparse_lr"),
        ("model.reg_weight=-1", "model.reg_weight"),
        ("data.positive_rate=0", "data.positive_rate"),
    ],
)
def test_non_finite_or_out_of_range_numbers_are_refused(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        parse_config(None, [override])


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("1E-4", 1e-4), (".5", 0.5), ("5e2", 500.0), ("-2.5e-1", -0.25)])
def test_numbers_in_the_form_people_write_them(tmp_path: Path, text: str, value: float) -> None:
    cfg = parse_config(None, [f"model.reg_weight={abs(value)}", f"train.dense_lr={text.lstrip('-')}"])
    assert cfg.train.dense_lr == abs(value)
    f = tmp_path / "c.yaml"
    f.write_text(f"train:\n  dense_lr: {text.lstrip('-')}\nmodel:\n  reg_weight: {text.lstrip('-')}\n")
    cfg = load_config(str(f))
    assert (cfg.train.dense_lr, cfg.model.reg_weight) == (abs(value), abs(value))


def test_config_module_is_a_leaf() -> None:
    """config.py imports no registry and does no I/O: parsing works without them and
    validation leaves the config unchanged."""
    import ast
    import torchrec_me.config as config_module

    tree = ast.parse(Path(config_module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.startswith("torchrec_me")}, imported
    assert not {"pathlib", "os", "io"} & imported
    cfg = parse_config(None, ["data.path=/nonexistent"])
    before = cfg.to_dict()
    cfg.validate()
    assert cfg.to_dict() == before and cfg.data.name == "synthetic"


def test_presets_need_the_registry_only_through_the_job_loader() -> None:
    with pytest.raises(ConfigError, match="preset registry"):
        parse_config(None, ["model=dcnv2-me-4x"])
    cfg = load_config(None, ["model=dcnv2-me-4x"])
    assert (cfg.model.backbone, cfg.model.num_sets) == ("dcnv2", 4)


def test_overrides_after_flags_are_accepted(tmp_path: Path) -> None:
    from torchrec_me.command import parse_with_overrides
    from torchrec_me.train import add_train_arguments
    import argparse

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parse_with_overrides(parser, ["model.num_sets=1", "--no-progress", "train.steps=3", "--run-dir", "r", "x.y=1"])
    assert args.overrides == ["model.num_sets=1", "train.steps=3", "x.y=1"] and args.no_progress and args.run_dir == "r"
    with pytest.raises(SystemExit):
        parse_with_overrides(parser, ["a.b=1", "--no-progress", "stray"])
