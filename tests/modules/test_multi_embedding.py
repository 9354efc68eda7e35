import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_me.modules import MultiEmbeddingBagCollection


def _kjt() -> KeyedJaggedTensor:
    # f1: [1], [2, 3]; f2: [], [4]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["f1", "f2"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([1, 2, 0, 1], dtype=torch.int32)
    )


def test_per_set_outputs_tables_and_dims() -> None:
    m = MultiEmbeddingBagCollection(["f1", "f2"], [10, 20], [8, 8, 16])
    outs = m(_kjt())
    assert [o.shape for o in outs] == [(2, 2, 8), (2, 2, 8), (2, 2, 16)]
    assert [[c.name for c in e.embedding_bag_configs()] for e in m.ebcs] == [
        [f"set{k}__f1", f"set{k}__f2"] for k in range(3)
    ]
    # Sum pooling per feature, gathered straight from each set's own table.
    w1 = m.ebcs[2].embedding_bags["set2__f1"].weight
    w2 = m.ebcs[2].embedding_bags["set2__f2"].weight
    torch.testing.assert_close(outs[2][1, 0], w1[2] + w1[3])
    torch.testing.assert_close(outs[2][0, 1], torch.zeros(16))
    torch.testing.assert_close(outs[2][1, 1], w2[4])
    assert not torch.equal(outs[0], outs[1])  # independent sets


def test_rejects_bad_dims_and_mismatched_vocab() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        MultiEmbeddingBagCollection(["f1"], [10], [8, 10])
    with pytest.raises(ValueError, match="vocabulary sizes"):
        MultiEmbeddingBagCollection(["f1", "f2"], [10], [8])
