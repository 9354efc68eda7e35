"""Optimizers of a sharded job: the sparse-optimizer table and the dense optimizer.

The embedding tables are updated by FBGEMM's fused (in-backward) optimizer, picked by
config name from :data:`SPARSE_OPTIMIZERS`, the one table of those names. The dense
parameters get Adam through a TorchRec ``KeyedOptimizerWrapper``; both are combined into
one ``CombinedOptimizer`` that ``TrainPipelineSparseDist`` steps.
"""

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Sequence, Type

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
    """

    cls: Type[torch.optim.Optimizer]
    fbgemm: str
    on_cpu: bool
    elementwise: bool


SPARSE_OPTIMIZERS: Dict[str, SparseOptimizer] = {
    "rowwise_adagrad": SparseOptimizer(trec_optim.RowWiseAdagrad, "EXACT_ROWWISE_ADAGRAD", True, False),
    "adagrad": SparseOptimizer(trec_optim.Adagrad, "EXACT_ADAGRAD", True, True),
    "sgd": SparseOptimizer(trec_optim.SGD, "EXACT_SGD", True, True),
    "adam": SparseOptimizer(trec_optim.Adam, "ADAM", False, True),
}


def apply_sparse_optimizer(model: nn.Module, name: str, lr: float) -> None:
    """Attach the fused optimizer ``name`` to every embedding collection's tables."""
    collections = (EmbeddingBagCollection, EmbeddingCollection)
    params = [p for m in model.modules() if isinstance(m, collections) for p in m.parameters()]
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
) -> CombinedOptimizer:
    """The fused sparse optimizer (already applied in backward) + ``kind`` (Adam or AdamW)
    over the dense parameters; ``fused`` selects PyTorch's single-kernel implementation
    where it applies, else the plain per-tensor loop (the same math)."""
    dense = dict(in_backward_optimizer_filter(model.named_parameters()))
    cls = DENSE_OPTIMIZERS[kind]
    dense_opt = KeyedOptimizerWrapper(
        dense,
        lambda params: cls(
            params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), fused=fused and _fused_adam_ok(params)
        ),
    )
    sparse = getattr(model, "fused_optimizer", None)
    return CombinedOptimizer([sparse, dense_opt] if sparse is not None else [dense_opt])
