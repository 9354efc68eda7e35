"""Sequence encoders and item tables of the sequential (generative) recommenders.

* :mod:`~torchrec_me.modules.sequential.hstu`: HSTU blocks and their relative attention
  bias; :mod:`~torchrec_me.modules.sequential.sasrec`: SASRec;
  :mod:`~torchrec_me.modules.sequential.llama`: a Llama-style decoder;
* :mod:`~torchrec_me.modules.sequential.encoders`: the registry ``model.backbone`` ->
  encoder, and the K per-set stacks;
* :mod:`~torchrec_me.modules.sequential.items`: the K item tables (``set{k}__item``, one
  ``EmbeddingCollection`` each) and the negative sampler feeding them;
* :mod:`~torchrec_me.modules.sequential.loss`: the sampled softmax;
* :mod:`~torchrec_me.modules.sequential.config`: the encoders' hyperparameters.

Shape letters, used in every docstring of the package:

* ``B``: users (rows) in the batch;
* ``L``: the longest row of the batch (rows are right-padded to it), ``L_b`` row b's
  length;
* ``N``: tokens, ``sum_b L_b`` (jagged values); ``P`` the predicted positions;
* ``D``, ``D_k``: embedding dim (of set k); ``d = D / H`` the per-head dim;
* ``K``: number of item-embedding sets; ``H``: attention heads; ``M``: negatives.
"""

from torchrec_me.modules.sequential.common import SequenceEncoder, SequenceInput
from torchrec_me.modules.sequential.config import EncoderConfig
from torchrec_me.modules.sequential.encoders import ENCODER_REGISTRY, SetEncoders, build_encoder
from torchrec_me.modules.sequential.hstu import HSTUBlock, HSTUEncoder, RelativeBias
from torchrec_me.modules.sequential.items import (
    NEGATIVE_FEATURE,
    ItemEmbeddingSets,
    NegativeSampler,
    item_id_features,
    sample_negatives,
)
from torchrec_me.modules.sequential.llama import LlamaBlock, LlamaEncoder, RotaryEmbedding
from torchrec_me.modules.sequential.loss import SampledSoftmaxLoss
from torchrec_me.modules.sequential.sasrec import SASRecBlock, SASRecEncoder

__all__ = [
    "ENCODER_REGISTRY",
    "EncoderConfig",
    "HSTUBlock",
    "HSTUEncoder",
    "ItemEmbeddingSets",
    "LlamaBlock",
    "LlamaEncoder",
    "NEGATIVE_FEATURE",
    "NegativeSampler",
    "RelativeBias",
    "RotaryEmbedding",
    "SASRecBlock",
    "SASRecEncoder",
    "SampledSoftmaxLoss",
    "SequenceEncoder",
    "SequenceInput",
    "SetEncoders",
    "build_encoder",
    "item_id_features",
    "sample_negatives",
]
