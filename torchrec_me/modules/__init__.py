from torchrec_me.modules.heads import FinalMLPHead, MLPHead, XDeepFMHead
from torchrec_me.modules.interactions import (
    DCNv2Interaction,
    DLRMInteraction,
    DNNInteraction,
    FinalMLPInteraction,
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
from torchrec_me.modules.mlp import mlp_block
from torchrec_me.modules.multi_embedding import MultiEmbeddingBagCollection, set_table_name

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
    "IPNNInteraction",
    "InnerProduct",
    "MLPHead",
    "MultiEmbeddingBagCollection",
    "NFwFMInteraction",
    "XDeepFMHead",
    "XDeepFMInteraction",
    "mlp_block",
    "set_table_name",
]
