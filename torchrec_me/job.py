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
from typing import Any, Callable, Collection, Dict, Iterator, Mapping, Optional, Sequence

import torch
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingPlan
from torchrec.optim.keyed import CombinedOptimizer

from torchrec_me.config import Config, ConfigError, DataConfig, ModelConfig, config_from_dict, parse_config
from torchrec_me.data import DATASET_REGISTRY, Dataset, build_dataset
from torchrec_me.data.sequence_batch import ITEM_FEATURE
from torchrec_me.data.sequences.dataset import SequenceDataset
from torchrec_me.data.sequences.layout import load_sequence_metadata
from torchrec_me.data.sequences.ranking import RankingOptions, RankingRows
from torchrec_me.data.sequences.reader import ReadOptions
from torchrec_me.data.sequences.synthetic import SyntheticSequenceConfig, SyntheticSequences
from torchrec_me.data.store import DatasetError, load_metadata
from torchrec_me.distributed import checkpoint as ckpt
from torchrec_me.distributed.optimizers import SPARSE_OPTIMIZERS, apply_sparse_optimizer, build_optimizer, table_kernel
from torchrec_me.distributed.sharding import DistContext, init_distributed, plan_and_shard, replicate
from torchrec_me.evaluation import evaluate, evaluate_ranking
from torchrec_me.retrieval import evaluate_retrieval
from torchrec_me.models import BACKBONE_REGISTRY, PRESET_REGISTRY, MultiEmbeddingTrain, build_model
from torchrec_me.models.ranking import SequentialRanker, SequentialRankerTrain
from torchrec_me.models.sequential import SequentialConfig, SequentialModel, SequentialTrain
from torchrec_me.models.sequential_presets import SEQUENTIAL_PRESETS
from torchrec_me.modules.layouts import LAYOUT_REGISTRY
from torchrec_me.modules.regularizers import REGULARIZER_REGISTRY
from torchrec_me.modules.sequential.encoders import ENCODER_REGISTRY
from torchrec_me.modules.sequential.items import NegativeSampler


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
        # "adam" on CPU: the same math is adam_dense (see distributed/optimizers.py).
        on_cpu = ", ".join(n for n, o in SPARSE_OPTIMIZERS.items() if o.on_cpu)
        _fail(
            "train.sparse_optimizer",
            f"{t.sparse_optimizer!r} has no CPU kernel in FBGEMM and train.device={t.device} runs on CPU; "
            f"on CPU choose one of {on_cpu} (adam_dense: Adam over replicated tables, see distributed/optimizers.py)",
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


def dataset_config(cfg: Config) -> DataConfig:
    """``cfg.data`` with its dataset name resolved for the model family: the default
    ``synthetic`` means the family's synthetic data, and a path alone a prepared dataset."""
    family, data = family_of(cfg), cfg.data
    if data.name == "synthetic":
        return dataclasses.replace(data, name=family.prepared_dataset if data.path is not None else family.synthetic_dataset)
    return data


def _check_data(cfg: Config) -> None:
    data, family = dataset_config(cfg), family_of(cfg)
    _check_member("data.name", data.name, family.datasets)
    if data.name == family.prepared_dataset:
        if not data.path:
            _fail("data.path", f"data.name={data.name} needs data.path=DIR, a dataset written by `torchrec-me prepare`")
        try:
            family.load_metadata(data.path)
        except DatasetError as e:
            _fail("data.path", str(e))


def check_job_config(cfg: Config) -> None:
    """Rules across sections and registries; raises one ConfigError naming the key."""
    _check_member("model.backbone", cfg.model.backbone, {**BACKBONE_REGISTRY, **ENCODER_REGISTRY})
    _check_member("model.regularizer", cfg.model.regularizer, REGULARIZER_REGISTRY, extra=("none",))
    _check_device_and_optimizer(cfg)
    _check_layout(cfg)
    if cfg.model.task == "ranking" and cfg.model.backbone not in ENCODER_REGISTRY:
        _fail("model.task", f"ranking reads user sequences: it needs a sequential backbone ({', '.join(ENCODER_REGISTRY)}), "
                            f"got model.backbone={cfg.model.backbone}")
    if family_of(cfg).sequential:
        sequential_config(cfg.model)  # the encoders validate their own keys
    _check_data(cfg)


def load_job_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """The checked Config of a job: defaults, the YAML file ``path``, then ``overrides``
    (``model=NAME`` selects a registered preset)."""
    text = None
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path!r} does not exist")
        text = p.read_text()
    cfg = parse_config(text, overrides, presets={**PRESET_REGISTRY, **SEQUENTIAL_PRESETS}, origin=path or "config")
    check_job_config(cfg)
    return cfg


def job_config_from_dict(mapping: Mapping[str, Any], origin: str = "saved config") -> Config:
    """The checked Config saved as ``Config.to_dict()`` (e.g. in a checkpoint)."""
    cfg = config_from_dict(mapping, origin)
    check_job_config(cfg)
    return cfg


def load_dataset(cfg: Config) -> Dataset:
    """The dataset ``cfg`` describes (name resolved by :func:`dataset_config`)."""
    data = dataset_config(cfg)
    family = family_of(cfg)
    if family.sequential:
        options = ReadOptions(seed=data.seed, train_on_val=cfg.train.eval_protocol == "reference",
                              train_user_fraction=data.train_user_fraction)  # fmt: skip
        reader = SEQUENCE_DATASETS[data.name](data, options)
        if family.kind == "ranking":
            ranking = RankingOptions(data.positive_rating, data.ranking_negatives, data.seed, cfg.model.max_seq_len)
            return RankingRows(reader, ranking)
        return reader
    return build_dataset(data)


def sequential_config(m: ModelConfig) -> SequentialConfig:
    """The sequential model's settings from the ``model`` section (one key each)."""
    names = {f.name for f in dataclasses.fields(SequentialConfig)} - {"shared_encoder"}
    return SequentialConfig(**{n: getattr(m, n) for n in names}, shared_encoder=m.shared_interaction)


def _ctr_module(cfg: Config, dataset: Dataset, device: Optional[torch.device]) -> nn.Module:
    model = build_model(cfg.model, dataset.feature_names, dataset.num_embeddings, device, dataset.num_dense)
    return MultiEmbeddingTrain(model)


def _sequential_module(cfg: Config, dataset: Dataset, device: Optional[torch.device]) -> nn.Module:
    seq = sequential_config(cfg.model)
    sampler = NegativeSampler(dataset.num_items, seq.num_negatives, seed=cfg.train.seed, per_position=seq.negatives_per_position)
    return SequentialTrain(SequentialModel(dataset.num_items, seq, device=device, sampler=sampler))


def _ranking_module(cfg: Config, dataset: Dataset, device: Optional[torch.device]) -> nn.Module:
    return SequentialRankerTrain(SequentialRanker(dataset.num_items, sequential_config(cfg.model), cfg.model.hidden_dim, device))


def _synthetic_sequences(data: DataConfig, options: ReadOptions) -> Dataset:
    params = SyntheticSequenceConfig(num_users=data.num_users, num_items=data.num_items, mean_length=data.mean_length,
                                     num_topics=data.num_topics, seed=data.seed)  # fmt: skip
    return SyntheticSequences(params, options)


SEQUENCE_DATASETS: Dict[str, Callable[[DataConfig, ReadOptions], Dataset]] = {
    "synthetic_sequences": _synthetic_sequences,
    "sequences": lambda data, options: SequenceDataset(str(data.path), options),
}


@dataclass(frozen=True)
class Family:
    """What differs between the CTR models and the sequential ones; the loop, the
    checkpoints and the analysis are shared.

    Args:
        kind (str): ``ctr``, ``retrieval`` or ``ranking`` (the metrics the run reports).
        sequential (bool): models over user sequences (retrieval and ranking).
        datasets (Collection[str]): dataset names the family reads.
        synthetic_dataset (str): the default (embedded) dataset.
        prepared_dataset (str): the dataset name a bare ``data.path`` selects.
        build_module (Callable): ``(cfg, dataset, device) -> train module``.
        primary_metric (str): validation metric of early stopping and the best checkpoint.
        evaluate (Callable): ``(model, dataset, ctx, cfg, split) -> metrics`` (collective).
        train_batches (Callable): ``(dataset, cfg, rank, world_size, start, stop)`` -> batches.
        id_tables (Callable): ``dataset -> {feature: vocabulary size}`` the tracker counts.
        id_features (Callable): ``batch -> KJT`` of the ids the frequency tracker counts.
        pipeline_postproc (bool): ``TrainPipelineSparseDist(pipeline_postproc=...)``: the
            sequential model's negative sampler builds the item KJT inside the forward.
        load_metadata (Callable): ``path -> metadata`` of a prepared dataset (raises DatasetError).
    """

    kind: str
    sequential: bool
    datasets: Collection[str]
    synthetic_dataset: str
    prepared_dataset: str
    build_module: Callable[[Config, Dataset, Optional[torch.device]], nn.Module]
    primary_metric: str
    evaluate: Callable[..., Dict[str, float]]
    train_batches: Callable[..., Iterator[Any]]
    id_tables: Callable[[Any], Dict[str, int]]
    id_features: Callable[[Any], Any]
    pipeline_postproc: bool
    load_metadata: Callable[[str], Dict[str, Any]]


FAMILIES: Dict[str, Family] = {
    "ctr": Family(
        kind="ctr", sequential=False, datasets=tuple(DATASET_REGISTRY), synthetic_dataset="synthetic",
        prepared_dataset="parquet", build_module=_ctr_module, primary_metric="auc",
        evaluate=lambda model, ds, ctx, cfg, split: evaluate(model, ds, ctx, cfg.train.eval_batch_size, split),
        train_batches=lambda ds, cfg, rank, ws, start, stop: ds.train_batches(rank, ws, cfg.train.batch_size, start, stop),
        id_tables=lambda ds: dict(zip(ds.feature_names, ds.num_embeddings)),
        id_features=lambda batch: batch.sparse_features, pipeline_postproc=False, load_metadata=load_metadata,
    ),
    "sequential": Family(
        kind="retrieval", sequential=True, datasets=tuple(SEQUENCE_DATASETS), synthetic_dataset="synthetic_sequences",
        prepared_dataset="sequences", build_module=_sequential_module, primary_metric="ndcg@10",
        evaluate=evaluate_retrieval,
        train_batches=lambda ds, cfg, rank, ws, start, stop: ds.train_batches(
            rank, ws, cfg.train.batch_size, start, stop, cfg.model.max_seq_len),
        id_tables=lambda ds: {ITEM_FEATURE: ds.num_items}, id_features=lambda batch: batch.items,
        pipeline_postproc=True, load_metadata=load_sequence_metadata,
    ),
    "ranking": Family(
        kind="ranking", sequential=True, datasets=tuple(SEQUENCE_DATASETS), synthetic_dataset="synthetic_sequences",
        prepared_dataset="sequences", build_module=_ranking_module, primary_metric="auc",
        evaluate=lambda model, ds, ctx, cfg, split: evaluate_ranking(model, ds, ctx, cfg.train.eval_batch_size, split),
        train_batches=lambda ds, cfg, rank, ws, start, stop: ds.train_batches(
            rank, ws, cfg.train.batch_size, start, stop, cfg.model.max_seq_len),
        id_tables=lambda ds: {ITEM_FEATURE: ds.num_items}, id_features=lambda batch: batch.items,
        pipeline_postproc=False, load_metadata=load_sequence_metadata,
    ),
}  # fmt: skip


def family_of(cfg: Config) -> Family:
    """The model family of ``cfg.model.backbone`` and ``cfg.model.task``."""
    if cfg.model.backbone not in ENCODER_REGISTRY:
        return FAMILIES["ctr"]
    return FAMILIES["ranking" if cfg.model.task == "ranking" else "sequential"]


def build_train_module(cfg: Config, dataset: Dataset, device: Optional[torch.device] = None) -> nn.Module:
    """The unsharded model of ``cfg`` over ``dataset``'s tables, in its loss wrapper
    (``MultiEmbeddingTrain`` or ``SequentialTrain``).

    ``device=meta`` leaves the tables unallocated for DistributedModelParallel.
    """
    return family_of(cfg).build_module(cfg, dataset, device)


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
        return dataset_config(self.cfg).name

    @property
    def family(self) -> Family:
        return family_of(self.cfg)


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
    dataset = dataset if dataset is not None else load_dataset(cfg)
    t = cfg.train
    kernel = table_kernel(t.sparse_optimizer)
    if kernel == "dense":
        # Replicated tables, built here for real: every rank draws the same weights.
        dmp, plan = replicate(build_train_module(cfg, dataset, ctx.device), ctx), ShardingPlan(plan={})
    else:
        module = build_train_module(cfg, dataset, torch.device("meta"))
        apply_sparse_optimizer(module, t.sparse_optimizer, t.sparse_lr)
        dmp, plan = plan_and_shard(module, ctx, t.batch_size, constraints=constraints, plan=plan)
    table_lr = t.sparse_lr if kernel == "dense" else None
    optimizer = build_optimizer(
        dmp, t.dense_lr, t.dense_weight_decay, cfg.model.fused_dense, t.dense_optimizer, t.dense_betas, table_lr=table_lr
    )
    return Job(cfg, ctx, dataset, dmp, optimizer, plan)


def dataset_signature(family: Family, dataset: Dataset) -> Dict[str, Any]:
    """What identifies the tables a model was trained for: features with vocabulary sizes,
    dense features, and the vocabularies' fingerprint (equal sizes with other ids differ)."""
    return {
        "tables": family.id_tables(dataset),
        "num_dense": getattr(dataset, "num_dense", 0),
        "fingerprint": getattr(dataset, "fingerprint", None),
    }


def job_from_checkpoint(path: Path, ctx: Optional[DistContext] = None, data_path: Optional[str] = None) -> Job:
    """Collective: the job saved in checkpoint ``path``, sharded at the current world size
    (DCP reshards), with its weights loaded. ``data_path`` scores another prepared
    dataset instead of the one trained on; its tables and vocabularies must match the
    checkpoint's (compared with the signature saved in the checkpoint)."""
    meta = ckpt.read_meta(path)
    cfg = job_config_from_dict(meta["config"], origin=f"{path}/{ckpt.META}")
    if data_path is None:
        dataset = load_dataset(cfg)
    else:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name="parquet", path=data_path))
        try:
            dataset = load_dataset(cfg)
        except DatasetError as e:
            raise ConfigError(f"--data: {e}") from e
        _check_same_tables(meta.get("dataset"), dataset_signature(family_of(cfg), dataset), data_path)
    job = build_job(cfg, ctx, dataset)
    ckpt.load_checkpoint(path, job.model)
    return job


def _check_same_tables(trained: Optional[Dict[str, Any]], scored: Dict[str, Any], data: str) -> None:
    if trained is None:
        raise ConfigError(f"the checkpoint records no dataset signature, so --data {data!r} cannot be checked against it")
    if trained["tables"] != scored["tables"] or trained["num_dense"] != scored["num_dense"]:
        a, b = list(trained["tables"].items()), list(scored["tables"].items())
        raise ConfigError(
            f"--data {data!r} does not match the checkpoint's dataset: its features/vocabulary sizes "
            f"{b[:3]}... (and {scored['num_dense']} dense) differ from the trained {a[:3]}... "
            f"(and {trained['num_dense']} dense); score data prepared with the same vocabularies"
        )
    if trained["fingerprint"] is not None and trained["fingerprint"] != scored["fingerprint"]:
        raise ConfigError(
            f"--data {data!r} does not match the checkpoint's dataset: same vocabulary sizes but other "
            "vocabularies (fingerprint differs), so its ids mean other values; score data prepared with "
            "the training run's vocabularies"
        )
