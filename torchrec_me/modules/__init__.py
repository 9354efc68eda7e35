from torchrec_me.modules.interactions import DCNv2Interaction
from torchrec_me.modules.mlp import MLPHead, mlp_block
from torchrec_me.modules.multi_embedding import MultiEmbeddingBagCollection, set_table_name

__all__ = [
    "DCNv2Interaction",
    "MLPHead",
    "MultiEmbeddingBagCollection",
    "mlp_block",
    "set_table_name",
]
