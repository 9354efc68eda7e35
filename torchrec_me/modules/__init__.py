"""Multi-embedding building blocks for TorchRec models.

* :mod:`~torchrec_me.modules.multi_embedding` and :mod:`~torchrec_me.modules.layouts`:
  the K embedding sets over TorchRec ``EmbeddingBagCollection`` (the sparse arch);
* :mod:`~torchrec_me.modules.interactions`: one set's interaction (one module per set);
* :mod:`~torchrec_me.modules.heads`: the head shared by all sets, after the mean;
* :mod:`~torchrec_me.modules.layers` and :mod:`~torchrec_me.modules.mlp`: the layers
  TorchRec lacks, written by hand, and the hidden layer with its fused/plain switch;
* :mod:`~torchrec_me.modules.naming`: the table names ``set{k}__{feature}``;
* :mod:`~torchrec_me.modules.regularizers`: the paper's embedding regularisers.

Shape letters, used in every docstring of the package:

* ``B``: batch size;
* ``F``: number of fields (sparse features, plus one when dense features are projected
  to a field);
* ``D``, ``D_k``: embedding dim (of set k);
* ``K``: number of embedding sets;
* ``H``: width of an interaction's output (the hidden width);
* ``N``: a flattened width, ``F * D``.
"""

from torchrec_me.modules.heads import FinalMLPHead, MLPHead, XDeepFMHead
from torchrec_me.modules.interactions import (
    DCNv2Interaction,
    DLRMInteraction,
    DNNInteraction,
    FinalMLPInteraction,
    FusedCrossNet,
    IPNNInteraction,
    NFwFMInteraction,
    XDeepFMInteraction,
)
from torchrec_me.modules.layers import (
    BilinearFusion,
    CompressedInteraction,
    FeatureSelectionGate,
    FieldWeightedFM,
    InnerProduct,
)
from torchrec_me.modules.layouts import (
    LAYOUT_REGISTRY,
    GroupedMultiEmbeddingBagCollection,
    PackedMultiEmbeddingBagCollection,
    build_sets,
)
from torchrec_me.modules.mlp import LayerConfig, ReLUDropout, mlp_block
from torchrec_me.modules.multi_embedding import MultiEmbeddingBagCollection, MultiEmbeddingSets
from torchrec_me.modules.naming import packed_table_name, parse_table_name, set_table_name

__all__ = [
    "BilinearFusion",
    "CompressedInteraction",
    "DCNv2Interaction",
    "DLRMInteraction",
    "DNNInteraction",
    "FeatureSelectionGate",
    "FieldWeightedFM",
    "FinalMLPHead",
    "FinalMLPInteraction",
    "FusedCrossNet",
    "GroupedMultiEmbeddingBagCollection",
    "IPNNInteraction",
    "InnerProduct",
    "LAYOUT_REGISTRY",
    "LayerConfig",
    "MLPHead",
    "MultiEmbeddingBagCollection",
    "MultiEmbeddingSets",
    "NFwFMInteraction",
    "PackedMultiEmbeddingBagCollection",
    "ReLUDropout",
    "XDeepFMHead",
    "XDeepFMInteraction",
    "build_sets",
    "mlp_block",
    "packed_table_name",
    "parse_table_name",
    "set_table_name",
]
