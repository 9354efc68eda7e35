"""Typed run configuration: dataclasses, YAML files and ``key=value`` overrides.

A run is described by one :class:`Config` holding three sections (``data``, ``model``,
``train``). It is built from the dataclass defaults, then an optional YAML file, then
command-line overrides such as ``model.num_sets=1``. Every value is type-checked and
validated at build time, so a bad key or value fails before any process group or
model exists, with one :class:`ConfigError` naming the key.
"""

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
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
        num_users (int): synthetic sequences (sequential backbones): users.
        num_items (int): synthetic sequences: items.
        mean_length (float): synthetic sequences: mean sequence length.
        num_topics (int): synthetic sequences: latent interests of the generator.
        train_user_fraction (float): sequences: train on this share of the users (a
            seeded subset; evaluation keeps every user), for data-scaling studies.
        positive_rating (float): ranking on rated sequences: ``rating >= it`` is a positive.
        ranking_negatives (int): ranking: sampled negatives per interaction; -1 (default)
            is 1 on implicit data and 0 on rated data.
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
    num_users: int = 4096
    num_items: int = 2048
    mean_length: float = 50.0
    num_topics: int = 16
    train_user_fraction: float = 1.0
    positive_rating: float = 4.0
    ranking_negatives: int = -1

    def validate(self) -> None:
        """Raise a ConfigError naming the first key out of range."""
        _check_at_least("data", {"ranking_negatives": self.ranking_negatives}, -1)
        _check_finite("data", {"positive_rating": self.positive_rating}, -math.inf, math.inf)
        if not 0.0 < self.train_user_fraction <= 1.0:  # NaN fails too
            _fail("data.train_user_fraction", f"must be in (0, 1], got {self.train_user_fraction!r}")
        _check_at_least("data", {"val_samples": self.val_samples, "max_cardinality": self.max_cardinality,
                                 "teacher_dim": self.teacher_dim}, 1)  # fmt: skip
        if not 0.0 < self.positive_rate < 1.0:  # NaN fails too
            _fail("data.positive_rate", f"must be in (0, 1), got {self.positive_rate!r}")
        _check_positive_finite("data", {"cardinality_scale": self.cardinality_scale, "zipf_alpha": self.zipf_alpha})


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

    Sequential backbones (``hstu``, ``sasrec``, ``llama``) also read ``num_sets``,
    ``embedding_dim``, ``set_dims``, ``dropout`` and ``shared_interaction`` (one encoder
    for all K sets), ``hidden_dim`` (ranking: the fused width), and:

    Args:
        task (str): ``retrieval`` (next-item prediction over every item) or ``ranking``
            (a label per interaction; see ``torchrec_me/models/ranking.py``).
        num_blocks (int): encoder blocks.
        num_heads (int): attention heads (every set dim divisible by it).
        max_seq_len (int): longest history the encoder reads.
        rab (str): HSTU relative attention bias: ``none``, ``position``, ``time``, ``both``.
        attention (str): HSTU attention: ``silu`` (the paper's) or ``softmax``.
        attention_scale (str): HSTU scale: ``length`` (1/n, the reference) or ``sqrt_dim``.
        time_bias_source (str): HSTU time gaps from ``seen`` items only (default) or from
            the ``next`` item's timestamp as the reference does (leaks the target's time).
        num_time_buckets (int): log buckets of the time gap.
        length_buckets (int): the encoders run on this many groups of rows of similar
            length, each padded to its own longest row (1: the batch padded to its
            longest row); same function, less padding on long-tailed lengths (8: the
            fastest at MovieLens-100k's lengths, see benchmarks/README.md).
        num_negatives (int): uniform negatives of the sampled softmax.
        negatives_per_position (bool): draw ``num_negatives`` for every predicted
            position (the reference's sampling, L times the lookups) instead of per row.
        temperature (float): temperature of the sampled softmax.
        in_batch_negatives (bool): add negatives drawn from the batch's positives.
    """

    backbone: str = "dcnv2"
    task: str = "retrieval"
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
    num_blocks: int = 2
    num_heads: int = 1
    max_seq_len: int = 200
    rab: str = "both"
    attention: str = "silu"
    attention_scale: str = "length"
    time_bias_source: str = "seen"
    num_time_buckets: int = 128
    length_buckets: int = 8
    num_negatives: int = 128
    negatives_per_position: bool = False
    temperature: float = 0.05
    in_batch_negatives: bool = False

    def dims(self) -> List[int]:
        """The embedding dim of each of the K sets."""
        return list(self.set_dims) if self.set_dims else [self.embedding_dim] * self.num_sets

    def validate(self) -> None:
        """Raise a ConfigError naming the first key out of range (registries: see job.py)."""
        _check_at_least("model", {"num_sets": self.num_sets, "hidden_dim": self.hidden_dim,
                                  "fs_hidden_dim": self.fs_hidden_dim}, 1)  # fmt: skip
        _check_at_least("model", {"num_cross_layers": self.num_cross_layers}, 0)
        if self.task not in TASKS:
            _fail("model.task", f"must be one of {', '.join(TASKS)}; got {self.task!r}")
        if self.set_dims is not None and len(self.set_dims) != self.num_sets:
            _fail("model.set_dims", f"has {len(self.set_dims)} entries but model.num_sets={self.num_sets}")
        dim_key = "model.set_dims" if self.set_dims else "model.embedding_dim"
        for dim in self.dims():
            if dim <= 0 or dim % 4:
                _fail(
                    dim_key,
                    f"embedding dim {dim} is not a positive multiple of 4; FBGEMM's fused embedding "
                    "kernels (TBE) require embedding_dim % 4 == 0 (the paper's base dim 10 maps to 12 here)",
                )
        if self.shared_interaction and len(set(self.dims())) > 1:
            _fail("model.shared_interaction", f"a shared interaction needs equal set dims, got {self.dims()}")
        if not self.cin_layer_sizes or min(self.cin_layer_sizes) < 1:
            _fail("model.cin_layer_sizes", f"needs one or more positive sizes, got {self.cin_layer_sizes}")
        if not self.dense_hidden_dims or min(self.dense_hidden_dims) < 1:
            _fail("model.dense_hidden_dims", f"needs one or more positive sizes, got {self.dense_hidden_dims}")
        _check_finite("model", {"dropout": self.dropout}, 0.0, 1.0, high_open=True)
        _check_finite("model", {"reg_weight": self.reg_weight}, 0.0, math.inf, high_open=True)
        _check_at_least("model", {"num_blocks": self.num_blocks, "num_heads": self.num_heads,
                                  "max_seq_len": self.max_seq_len, "num_time_buckets": self.num_time_buckets,
                                  "length_buckets": self.length_buckets,
                                  "num_negatives": self.num_negatives}, 1)  # fmt: skip
        _check_positive_finite("model", {"temperature": self.temperature})
        if self.regularizer == "space_similarity" and self.num_sets < 2:
            _fail("model.regularizer", "space_similarity compares embedding sets and needs model.num_sets >= 2")


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
        sparse_optimizer (str): optimizer of the embedding tables: FBGEMM fused
            ``rowwise_adagrad``, ``adagrad``, ``sgd``, ``adam`` (GPU), or ``adam_dense``
            (Adam over replicated tables, any device).
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
        dense_optimizer (str): ``adam`` or ``adamw`` (decoupled weight decay, the HSTU
            reference's) for the dense parameters.
        dense_betas (List[float]): Adam's (beta1, beta2); the HSTU reference uses
            (0.9, 0.98).
        exclude_history (bool): sequential models: full-corpus ranking leaves out the
            items the user has already interacted with (except the target).
        eval_protocol (str): sequential models: ``honest`` (early stopping on the
            validation item, the test item scored once with the best checkpoint) or
            ``reference`` (the test item evaluated at every validation, the best reported,
            as the published numbers were obtained).
        keep_per_rank_batch (bool): on a resume at another world size, keep
            ``batch_size`` per rank instead of the global batch (the sample order changes).
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
    dense_optimizer: str = "adam"
    dense_betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    exclude_history: bool = True
    eval_protocol: str = "honest"
    keep_per_rank_batch: bool = False

    def validate(self) -> None:
        """Raise a ConfigError naming the first key out of range (device and optimizer
        availability: see job.py)."""
        _check_at_least("train", {"steps": self.steps, "batch_size": self.batch_size,
                                  "eval_batch_size": self.eval_batch_size, "log_every": self.log_every,
                                  "early_stop_patience": self.early_stop_patience,
                                  "keep_checkpoints": self.keep_checkpoints}, 1)  # fmt: skip
        _check_at_least("train", {"eval_every": self.eval_every, "checkpoint_every": self.checkpoint_every,
                                  "ia_every": self.ia_every, "seed": self.seed}, 0)  # fmt: skip
        _check_positive_finite("train", {"dense_lr": self.dense_lr, "sparse_lr": self.sparse_lr})
        _check_finite("train", {"dense_weight_decay": self.dense_weight_decay}, 0.0, math.inf, high_open=True)
        if self.device not in DEVICES:
            _fail("train.device", f"must be one of {', '.join(DEVICES)}; got {self.device!r}")
        if self.dense_optimizer not in DENSE_OPTIMIZERS:
            _fail("train.dense_optimizer", f"must be one of {', '.join(DENSE_OPTIMIZERS)}; got {self.dense_optimizer!r}")
        if len(self.dense_betas) != 2 or not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in self.dense_betas):
            _fail("train.dense_betas", f"must be two numbers in [0, 1), got {self.dense_betas}")
        if self.eval_protocol not in EVAL_PROTOCOLS:
            _fail("train.eval_protocol", f"must be one of {', '.join(EVAL_PROTOCOLS)}; got {self.eval_protocol!r}")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Validate every section; rules across sections and registries live in job.py."""
        self.data.validate()
        self.model.validate()
        self.train.validate()


DEVICES = ("auto", "cpu", "cuda")
DENSE_OPTIMIZERS = ("adam", "adamw")
EVAL_PROTOCOLS = ("honest", "reference")
TASKS = ("retrieval", "ranking")


def _fail(key: str, msg: str) -> None:
    raise ConfigError(f"config key '{key}': {msg}")


def _check_at_least(section: str, values: Mapping[str, Any], minimum: int) -> None:
    for name, value in values.items():
        if value < minimum:
            _fail(f"{section}.{name}", f"must be >= {minimum}, got {value}")


def _check_finite(section: str, values: Mapping[str, float], low: float, high: float, high_open: bool = False) -> None:
    """Each value finite and in ``[low, high]`` (``[low, high)`` with ``high_open``)."""
    for name, value in values.items():
        ok = math.isfinite(value) and low <= value and (value < high if high_open else value <= high)
        if not ok:
            bracket = ")" if high_open else "]"
            _fail(f"{section}.{name}", f"must be a finite number in [{low:g}, {high:g}{bracket}, got {value!r}")


def _check_positive_finite(section: str, values: Mapping[str, float]) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            _fail(f"{section}.{name}", f"must be a finite number > 0, got {value!r}")


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


Presets = Mapping[str, Mapping[str, Any]]


def apply_preset(cfg: Config, name: Any, presets: Optional[Presets]) -> None:
    """``model=NAME``: set the model fields of preset ``NAME`` from ``presets``."""
    if presets is None:
        _fail("model", "model=NAME presets need the preset registry; load configs with torchrec_me.job.load_job_config")
    if not isinstance(name, str) or name not in presets:
        grid = [p for p in presets if re.match(r"^.+-(se|me)-\d+x$", p)]
        backbones = sorted({p.rsplit("-", 2)[0] for p in grid})
        published = sorted(set(presets) - set(grid))
        _fail(
            "model",
            f"unknown preset {name!r}; presets are BACKBONE-se-{{1,2,3,4,10}}x or BACKBONE-me-{{2,3,4,10}}x "
            f"(ME-1x is SE-1x: use BACKBONE-se-1x) with BACKBONE in {', '.join(backbones)}, e.g. dcnv2-me-4x, "
            f"or a published one: {', '.join(published)}",
        )
    for key, value in presets[name].items():
        section, _, field_name = key.rpartition(".")
        _set(cfg, f"{section or 'model'}.{field_name}", value, presets)


def _set(cfg: Config, key: str, value: Any, presets: Optional[Presets]) -> None:
    if key == "model":
        apply_preset(cfg, value, presets)
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


def _apply_mapping(cfg: Config, mapping: Mapping[str, Any], origin: str, presets: Optional[Presets]) -> None:
    for section, values in mapping.items():
        if section == "model" and isinstance(values, str):
            apply_preset(cfg, values, presets)
            continue
        if not isinstance(values, Mapping):
            _fail(str(section), f"in {origin}: expected a mapping of keys, got {values!r}")
        for name, value in values.items():
            _set(cfg, f"{section}.{name}", value, presets)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that floats may be written as people write
    them: ``1e-3``, ``1E-4``, ``.5`` and ``5e2`` (PyYAML's resolver needs ``1.0e-3``)."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),  # fmt: skip
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML with :class:`_Loader` (the one place numbers are read)."""
    return yaml.load(text, Loader=_Loader)


def parse_override(text: str) -> "tuple[str, Any]":
    """Split ``a.b=value``; the value is parsed as YAML (so ``1`` is int, ``[12, 16]`` a list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. model.num_sets=1")
    try:
        value = load_yaml(raw) if raw else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"config key '{key}': value {raw!r} is not valid YAML ({e})")
    return key.strip(), value


def parse_config(
    text: Optional[str] = None,
    overrides: Sequence[str] = (),
    presets: Optional[Presets] = None,
    origin: str = "config",
) -> Config:
    """A validated Config from defaults, YAML ``text`` (read by the caller) and overrides."""
    cfg = Config()
    if text is not None:
        try:
            loaded = load_yaml(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {origin!r} is not valid YAML: {e}")
        if loaded is not None:
            if not isinstance(loaded, Mapping):
                raise ConfigError(f"config file {origin!r}: top level must be a mapping")
            _apply_mapping(cfg, loaded, origin, presets)
    for item in overrides:
        key, value = parse_override(item)
        _set(cfg, key, value, presets)
    cfg.validate()
    return cfg


def config_from_dict(mapping: Mapping[str, Any], origin: str = "saved config") -> Config:
    """A validated Config from ``Config.to_dict()`` output (e.g. a checkpoint's meta)."""
    cfg = Config()
    _apply_mapping(cfg, mapping, origin, None)
    cfg.validate()
    return cfg


# Keys a resumed run may change: how long it runs, how often it pauses, what it logs.
# Every other key describes the model, the data or the optimisation, and a resume with
# another value would silently train something else.
RESUMABLE_KEYS = frozenset({
    "train.steps", "train.eval_every", "train.eval_batch_size", "train.checkpoint_every",
    "train.keep_checkpoints", "train.log_every", "train.ia_every", "train.early_stop_patience",
    "train.keep_per_rank_batch",
})  # fmt: skip


def changed_keys(saved: Mapping[str, Any], cfg: Config) -> List[str]:
    """``SECTION.NAME`` keys whose value in ``cfg`` differs from the ``saved`` dict
    (``Config.to_dict()`` of a checkpoint), excluding :data:`RESUMABLE_KEYS`."""
    now, defaults = cfg.to_dict(), Config().to_dict()
    keys = {f"{sec}.{name}" for part in (saved, now) for sec, values in part.items() for name in values}

    def get(d: Mapping[str, Any], key: str) -> Any:
        sec, _, name = key.partition(".")
        # A key the saved config lacks was added later: it had its default's behaviour.
        return d.get(sec, {}).get(name, defaults.get(sec, {}).get(name, "<absent>"))

    return sorted(k for k in keys - RESUMABLE_KEYS if get(saved, k) != get(now, k))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
