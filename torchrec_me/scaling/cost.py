"""What a model costs: parameter counts and training FLOPs, counted from the model.

Parameters are split the way the scaling laws need them: *sparse* parameters are the
rows of the embedding tables (TorchRec ``EmbeddingBagCollection`` /
``EmbeddingCollection``), *dense* parameters everything else (interactions, encoders,
heads). Both are counted on the ``meta`` device, so a model with full Criteo
vocabularies costs no memory.

FLOPs are counted, not derived by hand: ``torch.utils.flop_counter`` records every
matmul (mm, addmm, bmm, einsum, scaled-dot-product attention) that the dense part runs
on random inputs of the model's shapes, 2 FLOPs per multiply-add, and a training step
is 3x the forward (the backward computes the gradients of the inputs and of the
weights). Element-wise work (activations, norms, dropout) and the embedding lookups
are not counted.

* CTR models: FLOPs per sample of the interactions and the head.
* Sequential rankers: FLOPs per sample, one row of ``model.max_seq_len`` tokens (encoders,
  fusion and head).
* Sequential retrieval models: FLOPs per token (one position of a sequence) of the K encoder
  stacks and the sampled softmax (negatives per row, or per position with
  ``model.negatives_per_position``), at the full ``model.max_seq_len`` (attention grows
  with the length; the causal half is counted too, as the dense kernels compute it),
  over every position of a batch of full-length rows.
"""

import dataclasses
from typing import Any, Callable, Dict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from torchrec_me.config import Config
from torchrec_me.job import build_train_module, family_of
from torchrec_me.models.ranking import RankingViews

#: Training FLOPs per forward FLOP: the forward, and a backward of twice its matmuls.
TRAINING_PASSES = 3


def _cpu_sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    """FLOPs of CPU flash attention, by the formula torch registers for the CUDA kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


#: Kernels ``FlopCounterMode`` does not count by itself: the CPU flash attention behind
#: ``F.scaled_dot_product_attention`` (Llama-style) and ``nn.MultiheadAttention`` (SASRec).
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def matmul_flops(fn: Callable[[], Any]) -> int:
    """The matmul FLOPs (2 per multiply-add) of what ``fn()`` runs, without autograd;
    scaled-dot-product attention included on CPU too."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def parameter_counts(module: nn.Module) -> Dict[str, int]:
    """``{"dense_params", "sparse_params"}`` of ``module``: table rows x dims, and the rest."""
    sparse_ids = set()
    for sub in module.modules():
        if isinstance(sub, (EmbeddingBagCollection, EmbeddingCollection)):
            sparse_ids.update(id(p) for p in sub.parameters())
    sparse = sum(p.numel() for p in module.parameters() if id(p) in sparse_ids)
    dense = sum(p.numel() for p in module.parameters() if id(p) not in sparse_ids)
    return {"dense_params": dense, "sparse_params": sparse}


def _ctr_flops_per_sample(model: nn.Module, cfg: Config, dataset: Any, rows: int) -> float:
    num_fields = len(dataset.feature_names)
    per_set = [torch.randn(rows, num_fields, d) for d in cfg.model.dims()]
    dense = torch.randn(rows, dataset.num_dense)
    return TRAINING_PASSES * matmul_flops(lambda: model._logits(dense, per_set)) / rows


def _sequential_flops_per_token(model: nn.Module, cfg: Config, rows: int) -> float:
    length, negatives = cfg.model.max_seq_len, cfg.model.num_negatives
    dims = cfg.model.dims()
    mask = torch.ones(rows, length, dtype=torch.bool)
    times = torch.arange(length).expand(rows, length) * 60

    per = (rows, length, negatives) if cfg.model.negatives_per_position else (rows, negatives)

    def step() -> None:
        users = model.encoders([torch.randn(rows, length, d) for d in dims], mask, times, times + 60)
        model.loss(
            users,
            [torch.randn(rows, length, d) for d in dims],
            [torch.randn(*per, d) for d in dims],
            mask,
            torch.zeros(rows, length, dtype=torch.long),
            torch.ones(per, dtype=torch.long),
        )

    return TRAINING_PASSES * matmul_flops(step) / (rows * length)


def _ranking_flops_per_sample(model: nn.Module, cfg: Config, rows: int) -> float:
    """A ranking sample is one row of ``max_seq_len`` tokens, the candidate last."""
    length = cfg.model.max_seq_len
    mask = torch.ones(rows, length, dtype=torch.bool)
    times = torch.arange(length).expand(rows, length) * 60
    actions = torch.ones(rows, length, dtype=torch.long)
    items = [torch.randn(rows, length, d) for d in cfg.model.dims()]
    views = RankingViews(items, mask, times, actions, torch.full((rows,), length - 1))
    return TRAINING_PASSES * matmul_flops(lambda: model.arch(views)) / rows


def training_flops(cfg: Config, dataset: Any, rows: int = 4) -> Dict[str, Any]:
    """Training FLOPs of ``cfg``'s dense part: ``{"flops_per_sample"}`` (CTR, ranking) or
    ``{"flops_per_token"}`` (retrieval), counted on the plain kernels
    (``model.fused_dense=false``) so that the figure is the model's math whichever
    kernels run it, with the tables on ``meta``; and the parameter counts."""
    plain = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, fused_dense=False))
    module = build_train_module(plain, dataset, torch.device("meta"))
    out: Dict[str, Any] = parameter_counts(module)
    kind = family_of(cfg).kind
    # Sequential stacks in training mode: nn.MultiheadAttention's eval fast path is one
    # fused kernel the counter cannot see (dropout changes no FLOP count).
    model = module.model.train(kind != "ctr")
    if kind == "retrieval":
        out["flops_per_token"] = _sequential_flops_per_token(model, plain, rows)
    elif kind == "ranking":
        out["flops_per_sample"] = _ranking_flops_per_sample(model, plain, rows)
    else:
        out["flops_per_sample"] = _ctr_flops_per_sample(model, plain, dataset, rows)
    return out
