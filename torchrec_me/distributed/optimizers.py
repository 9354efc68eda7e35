"""Optimizers of a sharded job: the sparse-optimizer table and the dense optimizer.

The embedding tables are updated by FBGEMM's fused (in-backward) optimizer, picked by
config name from :data:`SPARSE_OPTIMIZERS`, the one table of those names. The dense
parameters get Adam through a TorchRec ``KeyedOptimizerWrapper``; both are combined into
one ``CombinedOptimizer`` that ``TrainPipelineSparseDist`` steps.

FBGEMM's CPU kernels have no Adam. ``adam_dense`` gets it anyway: the tables stay plain
TorchRec collections replicated on every rank (:func:`~torchrec_me.distributed.sharding.replicate`;
full gradients averaged by DDP, no fused update), and a ``torch.optim.Adam`` (lr
``train.sparse_lr``, the dense betas, eps 1e-8, no weight decay) steps them after the
backward, like the generative-recommenders reference's Adam over its ``nn.Embedding``:
every row's moments decay at every step, and a row not in the batch still moves by its
momentum. It costs a full-table update per step.
"""

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Type

import torch
from torch import nn
from torchrec import optim as trec_optim
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter


@dataclass(frozen=True)
class SparseOptimizer:
    """One fused optimizer of the embedding tables.

    Args:
        cls (Type[torch.optim.Optimizer]): TorchRec's optimizer class; TorchRec maps it to
            an FBGEMM ``EmbOptimType``.
        fbgemm (str): that FBGEMM type, for messages.
        on_cpu (bool): FBGEMM's CPU kernels implement it.
        elementwise (bool): state and update are per element (not one state per row), so
            a row shared by several sets still updates them independently.
        kernel (str): ``fused`` (sharded tables, the optimizer runs inside FBGEMM's
            backward) or ``dense`` (replicated plain tables, ``cls`` is a torch optimizer
            stepped after the backward).
    """

    cls: Type[torch.optim.Optimizer]
    fbgemm: str
    on_cpu: bool
    elementwise: bool
    kernel: str = "fused"


SPARSE_OPTIMIZERS: Dict[str, SparseOptimizer] = {
    "rowwise_adagrad": SparseOptimizer(trec_optim.RowWiseAdagrad, "EXACT_ROWWISE_ADAGRAD", True, False),
    "adagrad": SparseOptimizer(trec_optim.Adagrad, "EXACT_ADAGRAD", True, True),
    "sgd": SparseOptimizer(trec_optim.SGD, "EXACT_SGD", True, True),
    "adam": SparseOptimizer(trec_optim.Adam, "ADAM", False, True),
    "adam_dense": SparseOptimizer(torch.optim.Adam, "none (replicated tables, torch Adam)", True, True, "dense"),
}
#: The modules whose parameters are embedding tables (``dense`` tables are never sharded).
TABLE_MODULES = (EmbeddingBagCollection, EmbeddingCollection)
#: eps of the table Adam (the reference's).
TABLE_ADAM_EPS = 1e-8


def table_kernel(name: str) -> str:
    """``fused`` or ``dense``: how the tables of sparse optimizer ``name`` are held."""
    return SPARSE_OPTIMIZERS[name].kernel


def apply_sparse_optimizer(model: nn.Module, name: str, lr: float) -> None:
    """Attach the fused optimizer ``name`` to every embedding collection's tables (nothing
    for a ``dense``-kernel optimizer: :func:`build_optimizer` steps those tables)."""
    if table_kernel(name) != "fused":
        return
    params = [p for m in model.modules() if isinstance(m, TABLE_MODULES) for p in m.parameters()]
    kwargs: Dict[str, Any] = {"lr": lr}
    if name == "adam":
        kwargs["eps"] = 1e-8
    apply_optimizer_in_backward(SPARSE_OPTIMIZERS[name].cls, params, kwargs)


def _fused_adam_ok(params: Iterable[torch.Tensor]) -> bool:
    """PyTorch's fused Adam kernel takes float tensors on CPU or CUDA."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


DENSE_OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    fused: bool = True,
    kind: str = "adam",
    betas: Sequence[float] = (0.9, 0.999),
    table_lr: Optional[float] = None,
) -> CombinedOptimizer:
    """The fused sparse optimizer (already applied in backward) + ``kind`` (Adam or AdamW)
    over the dense parameters; ``fused`` selects PyTorch's single-kernel implementation
    where it applies, else the plain per-tensor loop (the same math).

    With ``table_lr``, the replicated tables (sparse optimizer ``adam_dense``) get their
    own ``torch.optim.Adam`` at that lr, with ``betas``."""
    dense = dict(in_backward_optimizer_filter(model.named_parameters()))
    optimizers: List[Any] = []
    sparse = getattr(model, "fused_optimizer", None)
    if sparse is not None:
        optimizers.append(sparse)
    if table_lr is not None:
        table_ids = {id(p) for m in model.modules() if isinstance(m, TABLE_MODULES) for p in m.parameters()}
        tables = {n: p for n, p in dense.items() if id(p) in table_ids}
        dense = {n: p for n, p in dense.items() if id(p) not in table_ids}
        optimizers.append(KeyedOptimizerWrapper(
            tables, lambda params: torch.optim.Adam(params, lr=table_lr, betas=tuple(betas), eps=TABLE_ADAM_EPS)
        ))  # fmt: skip
    cls = DENSE_OPTIMIZERS[kind]
    dense_opt = KeyedOptimizerWrapper(
        dense,
        lambda params: cls(
            params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), fused=fused and _fused_adam_ok(params)
        ),
    )
    return CombinedOptimizer([*optimizers, dense_opt])
