"""One job builder: from a config to the sharded model, its optimizers and its plan.

Every entry point (``train``, ``predict``, ``analyze``), the benchmarks and the tests
build through :func:`build_job`, so the sequence below is written once::

    config --check_job_config--> dataset --build_model(meta)--> MultiEmbeddingTrain
        --apply_sparse_optimizer (FBGEMM fused, in backward)--> planner plan
        --DistributedModelParallel--> + dense Adam = CombinedOptimizer

This is also where the rules that span config sections or need a registry live
(``config.py`` is a leaf that knows neither): registry membership, layout x sparse
optimizer, live IA x layout, device x optimizer, and the dataset path.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingPlan
from torchrec.optim.keyed import CombinedOptimizer

from torchrec_me.config import Config, ConfigError, DataConfig, config_from_dict, parse_config
from torchrec_me.data import DATASET_REGISTRY, Dataset, build_dataset
from torchrec_me.data.store import DatasetError, load_metadata
from torchrec_me.distributed import checkpoint as ckpt
from torchrec_me.distributed.optimizers import SPARSE_OPTIMIZERS, apply_sparse_optimizer, build_optimizer
from torchrec_me.distributed.sharding import DistContext, init_distributed, plan_and_shard
from torchrec_me.models import BACKBONE_REGISTRY, PRESET_REGISTRY, MultiEmbeddingTrain, build_model
from torchrec_me.modules.layouts import LAYOUT_REGISTRY
from torchrec_me.modules.regularizers import REGULARIZER_REGISTRY


def _fail(key: str, msg: str) -> None:
    raise ConfigError(f"config key '{key}': {msg}")


def _check_member(key: str, value: str, registry: Mapping[str, Any], extra: Sequence[str] = ()) -> None:
    if value not in registry and value not in extra:
        known = ", ".join([*extra, *sorted(registry)])
        _fail(key, f"unknown value {value!r}; registered: {known}")


def _resolved_device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _check_device_and_optimizer(cfg: Config) -> None:
    t = cfg.train
    _check_member("train.sparse_optimizer", t.sparse_optimizer, SPARSE_OPTIMIZERS)
    device = _resolved_device(t.device)
    if device == "cuda" and not torch.cuda.is_available():
        _fail("train.device", "is cuda, but this machine has no CUDA device; use train.device=cpu or auto")
    if device == "cpu" and not SPARSE_OPTIMIZERS[t.sparse_optimizer].on_cpu:
        on_cpu = ", ".join(n for n, o in SPARSE_OPTIMIZERS.items() if o.on_cpu)
        _fail(
            "train.sparse_optimizer",
            f"{t.sparse_optimizer!r} has no CPU kernel in FBGEMM and train.device={t.device} runs on CPU; "
            f"on CPU choose one of {on_cpu}",
        )


def _check_layout(cfg: Config) -> None:
    m, t = cfg.model, cfg.train
    _check_member("model.layout", m.layout, LAYOUT_REGISTRY)
    layout = LAYOUT_REGISTRY[m.layout]
    if layout.elementwise_optimizer_only and m.num_sets > 1 and not SPARSE_OPTIMIZERS[t.sparse_optimizer].elementwise:
        elementwise = ", ".join(n for n, o in SPARSE_OPTIMIZERS.items() if o.elementwise)
        _fail(
            "model.layout",
            f"{m.layout!r} shares each table row across the K sets, so the row-wise optimizer "
            f"train.sparse_optimizer={t.sparse_optimizer} would share one state across sets and change "
            f"the model; use an element-wise one ({elementwise}) or model.layout=separate/grouped",
        )
    if not layout.per_set_tables and t.ia_every:
        _fail(
            "model.layout",
            f"{m.layout!r} has no per-set tables, which the collapse analysis (train.ia_every) needs; "
            "use model.layout=separate or grouped",
        )


def dataset_config(data: DataConfig) -> DataConfig:
    """``data`` with its dataset name resolved: a path alone means a prepared dataset."""
    if data.path is not None and data.name == "synthetic":
        return dataclasses.replace(data, name="parquet")
    return data


def _check_data(data: DataConfig) -> None:
    data = dataset_config(data)
    _check_member("data.name", data.name, DATASET_REGISTRY)
    if data.name == "parquet":
        if not data.path:
            _fail("data.path", "data.name=parquet needs data.path=DIR, a dataset written by `torchrec-me prepare`")
        try:
            load_metadata(data.path)
        except DatasetError as e:
            _fail("data.path", str(e))


def check_job_config(cfg: Config) -> None:
    """Rules across sections and registries; raises one ConfigError naming the key."""
    _check_member("model.backbone", cfg.model.backbone, BACKBONE_REGISTRY)
    _check_member("model.regularizer", cfg.model.regularizer, REGULARIZER_REGISTRY, extra=("none",))
    _check_device_and_optimizer(cfg)
    _check_layout(cfg)
    _check_data(cfg.data)


def load_job_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """The checked Config of a job: defaults, the YAML file ``path``, then ``overrides``
    (``model=NAME`` selects a registered preset)."""
    text = None
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path!r} does not exist")
        text = p.read_text()
    cfg = parse_config(text, overrides, presets=PRESET_REGISTRY, origin=path or "config")
    check_job_config(cfg)
    return cfg


def job_config_from_dict(mapping: Mapping[str, Any], origin: str = "saved config") -> Config:
    """The checked Config saved as ``Config.to_dict()`` (e.g. in a checkpoint)."""
    cfg = config_from_dict(mapping, origin)
    check_job_config(cfg)
    return cfg


def load_dataset(data: DataConfig) -> Dataset:
    """The dataset ``data`` describes (name resolved by :func:`dataset_config`)."""
    return build_dataset(dataset_config(data))


def build_train_module(cfg: Config, dataset: Dataset, device: Optional[torch.device] = None) -> MultiEmbeddingTrain:
    """The unsharded model of ``cfg`` over ``dataset``'s tables, in its loss wrapper.

    ``device=meta`` leaves the tables unallocated for DistributedModelParallel.
    """
    model = build_model(cfg.model, dataset.feature_names, dataset.num_embeddings, device, dataset.num_dense)
    return MultiEmbeddingTrain(model)


@dataclass
class Job:
    """A built job: what every entry point needs to train, score or analyse.

    Args:
        cfg (Config): the checked config.
        ctx (DistContext): rank, world size and device of this process.
        dataset (Dataset): the data the model's tables were sized for.
        model (DistributedModelParallel): the sharded ``MultiEmbeddingTrain``.
        optimizer (CombinedOptimizer): fused table optimizer + dense Adam.
        plan (ShardingPlan): the planner's plan the model was sharded with.
    """

    cfg: Config
    ctx: DistContext
    dataset: Dataset
    model: DistributedModelParallel
    optimizer: CombinedOptimizer
    plan: ShardingPlan

    @property
    def dataset_name(self) -> str:
        """The dataset's registered name (``parquet`` when only a path was given)."""
        return dataset_config(self.cfg.data).name


def build_job(
    cfg: Config,
    ctx: Optional[DistContext] = None,
    dataset: Optional[Dataset] = None,
    *,
    constraints: Optional[Dict[str, ParameterConstraints]] = None,
    plan: Optional[ShardingPlan] = None,
) -> Job:
    """Collective: the sharded model of ``cfg`` with its optimizers and plan.

    Seeds torch with ``train.seed`` first, so every rank and every caller initialises
    the same weights. ``constraints`` (keyed by table name, ``set{k}__{feature}``) and
    ``plan`` (reuse an earlier plan) are passed to the planner.
    """
    ctx = ctx or init_distributed(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    dataset = dataset if dataset is not None else load_dataset(cfg.data)
    module = build_train_module(cfg, dataset, torch.device("meta"))
    apply_sparse_optimizer(module, cfg.train.sparse_optimizer, cfg.train.sparse_lr)
    dmp, plan = plan_and_shard(module, ctx, cfg.train.batch_size, constraints=constraints, plan=plan)
    optimizer = build_optimizer(dmp, cfg.train.dense_lr, cfg.train.dense_weight_decay, fused=cfg.model.fused_dense)
    return Job(cfg, ctx, dataset, dmp, optimizer, plan)


def job_from_checkpoint(path: Path, ctx: Optional[DistContext] = None, data_path: Optional[str] = None) -> Job:
    """Collective: the job saved in checkpoint ``path``, sharded at the current world size
    (DCP reshards), with its weights loaded. ``data_path`` scores another prepared
    dataset instead of the one trained on; its tables must match the checkpoint's."""
    cfg = job_config_from_dict(ckpt.read_meta(path)["config"], origin=f"{path}/{ckpt.META}")
    dataset = load_dataset(cfg.data)
    if data_path is not None:
        trained = dataset
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name="parquet", path=data_path))
        try:
            dataset = load_dataset(cfg.data)
        except DatasetError as e:
            raise ConfigError(f"--data: {e}") from e
        _check_same_tables(trained, dataset, data_path)
    job = build_job(cfg, ctx, dataset)
    ckpt.load_checkpoint(path, job.model)
    return job


def _check_same_tables(trained: Dataset, scored: Dataset, data: str) -> None:
    a = list(zip(trained.feature_names, trained.num_embeddings))
    b = list(zip(scored.feature_names, scored.num_embeddings))
    if a != b or trained.num_dense != scored.num_dense:
        raise ConfigError(
            f"--data {data!r} does not match the checkpoint's dataset: its features/vocabulary sizes "
            f"{b[:3]}... (and {scored.num_dense} dense) differ from the trained {a[:3]}... "
            f"(and {trained.num_dense} dense); score data prepared with the same vocabularies"
        )
