"""Typed run configuration: dataclasses, YAML files and ``key=value`` overrides.

A run is described by one :class:`Config` holding three sections (``data``, ``model``,
``train``). It is built from the dataclass defaults, then an optional YAML file, then
command-line overrides such as ``model.num_sets=1``. Every value is type-checked and
validated at build time, so a bad key or value fails before any process group or
model exists, with one :class:`ConfigError` naming the key.
"""

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key."""


@dataclass
class DataConfig:
    """Where batches come from.

    Args:
        name (str): dataset; ``synthetic`` is the embedded Criteo-shaped default,
            ``parquet`` a dataset written by ``torchrec-me prepare``.
        path (Optional[str]): directory or URI of a prepared dataset; setting it with
            the default name selects ``parquet``.
        seed (int): seed of the dataset (synthetic: teacher weights and sample
            streams; parquet: the training shuffle).
        cardinality_scale (float): synthetic vocabularies are Criteo's (after min-count
            10) times this factor, clipped to ``[2, max_cardinality]``.
        max_cardinality (int): upper bound on one synthetic vocabulary.
        zipf_alpha (float): exponent of the Zipf id distribution.
        teacher_dim (int): latent dim of the hidden teacher's field embeddings.
        positive_rate (float): target click rate of the teacher's labels.
        val_samples (int): size of the validation split.
    """

    name: str = "synthetic"
    path: Optional[str] = None
    seed: int = 0
    cardinality_scale: float = 0.005
    max_cardinality: int = 20000
    zipf_alpha: float = 1.1
    teacher_dim: int = 4
    positive_rate: float = 0.25
    val_samples: int = 65536


@dataclass
class ModelConfig:
    """What is trained.

    Args:
        backbone (str): interaction module of each set (see ``torchrec_me.models``).
        num_sets (int): K, the number of embedding sets; 1 is single-embedding (SE).
        embedding_dim (int): dim D of every set; FBGEMM needs ``D % 4 == 0``.
        set_dims (Optional[List[int]]): per-set dims, overriding ``embedding_dim``.
        hidden_dim (int): width of the MLP layers (the paper's 400).
        num_cross_layers (int): cross layers of DCNv2.
        cin_layer_sizes (List[int]): CIN layer sizes of xDeepFM.
        feature_selection (bool): FinalMLP's feature-selection gates on (the reference
            code switched them off).
        fs_hidden_dim (int): hidden width of FinalMLP's gate MLPs.
        dropout (float): dropout after each hidden MLP layer (the paper uses 0.2).
        shared_interaction (bool): ablation: one interaction module for all K sets.
        regularizer (str): ``none``, ``singular_value`` (the paper's SE baseline) or
            ``space_similarity`` (between ME sets).
        reg_weight (float): weight of the regulariser in the loss.
        dense_hidden_dims (List[int]): hidden layers of each set's dense arch, used
            when the data has dense features (DLRM convention).
        layout (str): how the K sets are laid out over TorchRec: ``separate`` (K EBCs),
            ``grouped`` (one EBC with all K*F tables) or ``packed`` (one table per
            feature of dim sum(D_k), column-sliced per set; element-wise optimizers only).
        fused_dense (bool): use torchrec_me's fused dense kernels (one-pass CrossNet
            forward/backward, fused ReLU+Dropout, PyTorch's single-kernel Adam); ``false``
            runs the plain TorchRec/PyTorch modules with the same math.
    """

    backbone: str = "dcnv2"
    num_sets: int = 4
    embedding_dim: int = 12
    set_dims: Optional[List[int]] = None
    hidden_dim: int = 400
    num_cross_layers: int = 4
    cin_layer_sizes: List[int] = field(default_factory=lambda: [16, 16])
    feature_selection: bool = True
    fs_hidden_dim: int = 800
    dropout: float = 0.2
    shared_interaction: bool = False
    regularizer: str = "none"
    reg_weight: float = 1e-4
    dense_hidden_dims: List[int] = field(default_factory=lambda: [64])
    layout: str = "separate"
    fused_dense: bool = True

    def dims(self) -> List[int]:
        """The embedding dim of each of the K sets."""
        return list(self.set_dims) if self.set_dims else [self.embedding_dim] * self.num_sets


@dataclass
class TrainConfig:
    """How it is trained.

    Args:
        steps (int): optimizer steps (per rank; every rank takes one batch per step).
        batch_size (int): per-rank batch size.
        eval_batch_size (int): per-rank batch size of evaluation.
        seed (int): seed of the model initialisation.
        device (str): ``auto``, ``cpu`` or ``cuda``.
        dense_lr (float): Adam learning rate of the dense parameters.
        dense_weight_decay (float): Adam weight decay of the dense parameters.
        sparse_optimizer (str): fused optimizer of the embedding tables.
        sparse_lr (float): learning rate of the fused optimizer.
        log_every (int): steps between progress-bar and log updates.
        ia_every (int): steps between live information-abundance reports (0: off),
            appended to ``ia_log.jsonl`` in the run dir and shown in the progress bar.
        eval_every (int): steps between validations (0: only at the end); each one
            can become the best checkpoint and counts towards early stopping.
        early_stop_patience (int): stop after this many validations without a better AUC.
        checkpoint_every (int): steps between checkpoints in the run dir (0: only at
            the end); needs ``--run-dir``.
        keep_checkpoints (int): how many of the newest step checkpoints to keep.
    """

    steps: int = 600
    batch_size: int = 1024
    eval_batch_size: int = 4096
    seed: int = 0
    device: str = "auto"
    dense_lr: float = 1e-3
    dense_weight_decay: float = 1e-6
    sparse_optimizer: str = "rowwise_adagrad"
    sparse_lr: float = 0.1
    log_every: int = 20
    ia_every: int = 0
    eval_every: int = 0
    early_stop_patience: int = 3
    checkpoint_every: int = 0
    keep_checkpoints: int = 2


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


SPARSE_OPTIMIZERS_CPU = ("rowwise_adagrad", "adagrad", "sgd")
SPARSE_OPTIMIZERS = SPARSE_OPTIMIZERS_CPU + ("adam",)


def _fail(key: str, msg: str) -> None:
    raise ConfigError(f"config key '{key}': {msg}")


def validate(cfg: Config) -> None:
    """Check values that are well-typed but unusable; raise one ConfigError."""
    m, t, d = cfg.model, cfg.train, cfg.data
    if m.num_sets < 1:
        _fail("model.num_sets", f"must be >= 1, got {m.num_sets}")
    if m.set_dims is not None and len(m.set_dims) != m.num_sets:
        _fail(
            "model.set_dims",
            f"has {len(m.set_dims)} entries but model.num_sets={m.num_sets}",
        )
    dim_key = "model.set_dims" if m.set_dims else "model.embedding_dim"
    for dim in m.dims():
        if dim <= 0 or dim % 4:
            _fail(
                dim_key,
                f"embedding dim {dim} is not a positive multiple of 4; FBGEMM's fused "
                "embedding kernels (TBE) require embedding_dim % 4 == 0 "
                "(the paper's base dim 10 maps to 12 here)",
            )
    for key, value in (
        ("model.hidden_dim", m.hidden_dim),
        ("train.steps", t.steps),
        ("train.batch_size", t.batch_size),
        ("train.eval_batch_size", t.eval_batch_size),
        ("train.log_every", t.log_every),
        ("train.early_stop_patience", t.early_stop_patience),
        ("train.keep_checkpoints", t.keep_checkpoints),
        ("data.val_samples", d.val_samples),
        ("data.max_cardinality", d.max_cardinality),
        ("data.teacher_dim", d.teacher_dim),
    ):
        if value < 1:
            _fail(key, f"must be >= 1, got {value}")
    if m.shared_interaction and len(set(m.dims())) > 1:
        _fail("model.shared_interaction", f"a shared interaction needs equal set dims, got {m.dims()}")
    if not m.cin_layer_sizes or min(m.cin_layer_sizes) < 1:
        _fail("model.cin_layer_sizes", f"needs one or more positive sizes, got {m.cin_layer_sizes}")
    if m.fs_hidden_dim < 1:
        _fail("model.fs_hidden_dim", f"must be >= 1, got {m.fs_hidden_dim}")
    from torchrec_me.modules.regularizers import REGULARIZER_REGISTRY

    if m.regularizer != "none" and m.regularizer not in REGULARIZER_REGISTRY:
        _fail(
            "model.regularizer",
            f"unknown regulariser {m.regularizer!r}; choose none or {', '.join(sorted(REGULARIZER_REGISTRY))}",
        )
    if m.regularizer == "space_similarity" and m.num_sets < 2:
        _fail("model.regularizer", "space_similarity compares embedding sets and needs model.num_sets >= 2")
    for key, value in (
        ("train.eval_every", t.eval_every),
        ("train.checkpoint_every", t.checkpoint_every),
        ("train.ia_every", t.ia_every),
    ):
        if value < 0:
            _fail(key, f"must be >= 0 (0 means only at the end), got {value}")
    if m.num_cross_layers < 0:
        _fail("model.num_cross_layers", f"must be >= 0, got {m.num_cross_layers}")
    if not 0.0 <= m.dropout < 1.0:
        _fail("model.dropout", f"must be in [0, 1), got {m.dropout}")
    if not 0.0 < d.positive_rate < 1.0:
        _fail("data.positive_rate", f"must be in (0, 1), got {d.positive_rate}")
    if d.cardinality_scale <= 0:
        _fail("data.cardinality_scale", f"must be > 0, got {d.cardinality_scale}")
    if t.device not in ("auto", "cpu", "cuda"):
        _fail("train.device", f"must be one of auto, cpu, cuda; got {t.device!r}")
    if t.sparse_optimizer not in SPARSE_OPTIMIZERS:
        _fail(
            "train.sparse_optimizer",
            f"unknown optimizer {t.sparse_optimizer!r}; choose one of "
            f"{', '.join(SPARSE_OPTIMIZERS)} (adam is GPU-only in FBGEMM)",
        )
    if t.device == "cpu" and t.sparse_optimizer not in SPARSE_OPTIMIZERS_CPU:
        _fail(
            "train.sparse_optimizer",
            f"{t.sparse_optimizer!r} has no CPU kernel in FBGEMM; on CPU choose one of "
            f"{', '.join(SPARSE_OPTIMIZERS_CPU)}",
        )
    from torchrec_me.modules.layouts import ELEMENTWISE_SPARSE_OPTIMIZERS, LAYOUT_REGISTRY

    layout = LAYOUT_REGISTRY.get(m.layout)
    if layout is None:
        _fail("model.layout", f"unknown layout {m.layout!r}; choose one of {', '.join(LAYOUT_REGISTRY)}")
    if layout.elementwise_optimizer_only and m.num_sets > 1 and t.sparse_optimizer not in ELEMENTWISE_SPARSE_OPTIMIZERS:
        _fail(
            "model.layout",
            f"{m.layout!r} shares each table row across the K sets, so the row-wise optimizer "
            f"train.sparse_optimizer={t.sparse_optimizer} would share one state across sets and change "
            f"the model; use an element-wise one ({', '.join(ELEMENTWISE_SPARSE_OPTIMIZERS)}) or "
            "model.layout=separate/grouped",
        )
    if not layout.per_set_tables and t.ia_every:
        _fail(
            "model.layout",
            f"{m.layout!r} has no per-set tables, which the collapse analysis (train.ia_every) needs; "
            "use model.layout=separate or grouped",
        )
    # Late import: the model registry imports torch, which config users may not need.
    from torchrec_me.models import MODEL_REGISTRY

    if m.backbone not in MODEL_REGISTRY:
        _fail(
            "model.backbone",
            f"unknown backbone {m.backbone!r}; registered: {', '.join(sorted(MODEL_REGISTRY))}",
        )
    from torchrec_me.data import DATASET_REGISTRY

    if d.name not in DATASET_REGISTRY:
        _fail(
            "data.name",
            f"unknown dataset {d.name!r}; registered: {', '.join(sorted(DATASET_REGISTRY))}",
        )
    if d.path is not None and d.name == "synthetic":
        d.name = "parquet"  # a path alone means a prepared dataset
    if d.name == "parquet":
        from torchrec_me.data.store import DatasetError, load_metadata

        if not d.path:
            _fail("data.path", "data.name=parquet needs data.path=DIR, a dataset written by `torchrec-me prepare`")
        try:
            load_metadata(d.path)
        except DatasetError as e:
            _fail("data.path", str(e))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if origin in (list, List):
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            _fail(key, f"expected a list, got {value!r}")
        return [_coerce(key, v, item_tp) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        _fail(key, f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        _fail(key, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        _fail(key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        _fail(key, f"expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp} for {key}")


def apply_preset(cfg: Config, name: Any) -> None:
    """``model=NAME``: set the model fields of a registered preset (e.g. ``dcnv2-me-4x``)."""
    from torchrec_me.models import PRESET_REGISTRY

    if not isinstance(name, str) or name not in PRESET_REGISTRY:
        backbones = sorted({p.rsplit("-", 2)[0] for p in PRESET_REGISTRY})
        _fail(
            "model",
            f"unknown preset {name!r}; presets are BACKBONE-{{se,me}}-{{1,2,3,4,10}}x with BACKBONE in "
            f"{', '.join(backbones)}, e.g. dcnv2-me-4x",
        )
    for key, value in PRESET_REGISTRY[name].items():
        setattr(cfg.model, key, value)


def _set(cfg: Config, key: str, value: Any) -> None:
    if key == "model":
        apply_preset(cfg, value)
        return
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in {f.name for f in dataclasses.fields(Config)}:
        sections = ", ".join(f.name for f in dataclasses.fields(Config))
        _fail(key, f"unknown key; keys have the form SECTION.NAME with SECTION in {sections}")
    section = getattr(cfg, parts[0])
    hints = typing.get_type_hints(type(section))
    if parts[1] not in hints:
        known = ", ".join(f"{parts[0]}.{n}" for n in hints)
        _fail(key, f"unknown key; {parts[0]} has {known}")
    setattr(section, parts[1], _coerce(key, value, hints[parts[1]]))


def _apply_mapping(cfg: Config, mapping: Mapping[str, Any], origin: str) -> None:
    for section, values in mapping.items():
        if section == "model" and isinstance(values, str):
            apply_preset(cfg, values)
            continue
        if not isinstance(values, Mapping):
            _fail(str(section), f"in {origin}: expected a mapping of keys, got {values!r}")
        for name, value in values.items():
            _set(cfg, f"{section}.{name}", value)


def parse_override(text: str) -> "tuple[str, Any]":
    """Split ``a.b=value``; the value is parsed as YAML (so ``1`` is int, ``[12, 16]`` a list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. model.num_sets=1")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"config key '{key}': value {raw!r} is not valid YAML ({e})")
    return key.strip(), value


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Build a validated Config from defaults, an optional YAML file and overrides."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path!r} is not valid YAML: {e}")
        if loaded is not None:
            if not isinstance(loaded, Mapping):
                raise ConfigError(f"config file {path!r}: top level must be a mapping")
            _apply_mapping(cfg, loaded, path)
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def config_from_dict(mapping: Mapping[str, Any], origin: str = "saved config") -> Config:
    """A validated Config from ``Config.to_dict()`` output (e.g. a checkpoint's meta)."""
    cfg = Config()
    _apply_mapping(cfg, mapping, origin)
    validate(cfg)
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
