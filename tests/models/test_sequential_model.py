"""The sequential model, its training wrapper and the full-corpus ranking metrics."""

import dataclasses
import inspect
import math
import re
import textwrap
from typing import List, Tuple

import pytest
import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_me.config import ConfigError
from torchrec_me.data.sequence_batch import SequenceBatch
from torchrec_me.models.retrieval_metrics import exclude_history, ranking_metrics, target_ranks
from torchrec_me.models.sequential import SequentialConfig, SequentialModel, SequentialTrain
from torchrec_me.modules.sequential import EncoderConfig, NegativeSampler

NUM_ITEMS = 40


def _batch(rows: List[List[int]], times: List[List[int]], targets: List[int], target_times: List[int]) -> SequenceBatch:
    values = torch.tensor([i for r in rows for i in r])
    kjt = KeyedJaggedTensor.from_lengths_sync(["item"], values, torch.tensor([len(r) for r in rows]))
    return SequenceBatch(
        items=kjt,
        timestamps=torch.tensor([t for r in times for t in r]),
        ratings=torch.ones(len(values)),
        targets=torch.tensor(targets),
        target_timestamps=torch.tensor(target_times),
        users=torch.arange(len(rows)),
    )


def _model(**overrides: object) -> SequentialModel:
    cfg = dict(num_sets=2, embedding_dim=8, max_seq_len=8, num_negatives=6, dropout=0.0, num_heads=2)
    cfg.update(overrides)
    return SequentialModel(NUM_ITEMS, SequentialConfig(**cfg))  # type: ignore[arg-type]


def test_config_validates_and_names_keys() -> None:
    assert SequentialConfig().dims() == [48]
    assert SequentialConfig(num_sets=3, set_dims=[8, 12, 16]).dims() == [8, 12, 16]
    with pytest.raises(ConfigError, match="model.set_dims"):
        SequentialConfig(num_sets=2, set_dims=[8])
    with pytest.raises(ConfigError, match="model.embedding_dim"):
        SequentialConfig(embedding_dim=50)
    with pytest.raises(ConfigError, match="model.num_heads"):
        SequentialConfig(embedding_dim=12, num_heads=8)
    with pytest.raises(ConfigError, match="model.time_bias_source"):
        SequentialConfig(time_bias_source="future")
    with pytest.raises(ConfigError, match="model.temperature"):
        SequentialConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="model.shared_encoder"):
        SequentialConfig(num_sets=2, set_dims=[8, 12], shared_encoder=True)


def test_encoder_config_carries_every_encoder_key() -> None:
    encoder = EncoderConfig(num_blocks=3, num_heads=2, max_seq_len=7, dropout=0.1, rab="time", attention="softmax",
                            attention_scale="sqrt_dim", time_bias_source="next", num_time_buckets=9)  # fmt: skip
    keys = {f.name: getattr(encoder, f.name) for f in dataclasses.fields(EncoderConfig)}
    config = SequentialConfig(embedding_dim=8, backbone="llama", num_negatives=3, **keys)
    assert type(config.encoder_config()) is EncoderConfig
    assert config.encoder_config() == encoder


@pytest.mark.parametrize("cls", [SequentialConfig, SequentialModel, SequentialTrain], ids=lambda c: c.__name__)
def test_docstring_example_runs(cls: type, torch_seed: int) -> None:
    body = inspect.getdoc(cls).split("Example::", 1)[1]  # type: ignore[union-attr]
    code = textwrap.dedent(re.split(r"\n(?=\S)", body.lstrip("\n"), maxsplit=1)[0])
    exec(compile(code, f"<{cls.__name__} example>", "exec"), dict(vars(inspect.getmodule(cls))))


def test_me_score_is_the_mean_of_per_set_dot_products(torch_seed: int) -> None:
    model = _model(set_dims=[8, 12], num_sets=2).eval()
    batch = _batch([[1, 2, 3], [4, 5]], [[0, 10, 20], [0, 5]], [6, 7], [30, 9])
    with torch.no_grad():
        users = model(batch)
        items = model.all_item_vectors(chunk_size=16)
        scores = model.score_all_items(users, items)
    assert users.shape == (2, 20) and items.shape == (NUM_ITEMS, 20)
    tables = model.item_sets.set_weights()
    expected = torch.zeros(2, NUM_ITEMS)
    for k, (lo, hi) in enumerate([(0, 8), (8, 20)]):
        u_k = users[:, lo:hi]
        torch.testing.assert_close(u_k.norm(dim=-1), torch.ones(2))
        expected += u_k @ F.normalize(tables[k].detach(), dim=-1).T / 2
    torch.testing.assert_close(scores, expected)
    values, ids = model.top_k(users, items, 5)
    torch.testing.assert_close(values, scores.gather(1, ids))
    assert (values[:, :-1] >= values[:, 1:]).all()


@pytest.mark.parametrize("source", ["seen", "next"])
@pytest.mark.parametrize("backbone", ["hstu", "sasrec", "llama"])
def test_training_logit_of_the_next_item_equals_full_corpus_score(backbone: str, source: str, torch_seed: int) -> None:
    """Position i of a training window scores item i+1 exactly as the evaluation of the
    history 0..i scores its target: the train and eval paths read the same inputs."""
    model = _model(backbone=backbone, time_bias_source=source)
    window, times = [3, 9, 1, 30, 7], [100, 200, 5000, 5001, 90000]
    loss, logits, labels = model.forward_train(_batch([window], [times], [-1], [0]))
    assert logits.shape == (4, 7) and labels.tolist() == [0] * 4
    model.eval()
    with torch.no_grad():
        items = model.all_item_vectors()
        for i in range(4):
            users = model(_batch([window[: i + 1]], [times[: i + 1]], [window[i + 1]], [times[i + 1]]))
            score = model.score_all_items(users, items)[0, window[i + 1]]
            assert logits[i, 0].item() == pytest.approx(score.item() / 0.05, abs=1e-4)


def test_negatives_equal_to_the_positive_are_masked_in_the_model(torch_seed: int) -> None:
    model = SequentialModel(3, SequentialConfig(embedding_dim=8, max_seq_len=8, num_negatives=64, dropout=0.0))
    batch = _batch([[0, 1, 2, 1]], [[0, 1, 2, 3]], [-1], [0])
    drawn = NegativeSampler(3, 64)(batch.items, batch.users)[0]["item_negative"].values()  # the model's first draw
    _, logits, _ = model.forward_train(batch)
    assert model.sampler.step.item() == 1
    for i, target in enumerate([1, 2, 1]):  # 64 draws over 3 items: every positive is drawn
        assert torch.equal(torch.isinf(logits[i, 1:]), drawn == target)


def test_per_position_sampler_in_the_model(torch_seed: int) -> None:
    sampler = NegativeSampler(NUM_ITEMS, 6, per_position=True)
    model = SequentialModel(NUM_ITEMS, SequentialConfig(embedding_dim=8, max_seq_len=8, num_negatives=6), sampler=sampler)
    loss, logits, _ = model.forward_train(_batch([[1, 2, 3], [4, 5], [6]], [[0, 1, 2], [0, 1], [0]], [-1] * 3, [0] * 3))
    assert logits.shape == (3, 7) and torch.isfinite(loss)
    loss.backward()
    # Rows of one item predict nothing: an empty loss, still differentiable.
    empty, logits, _ = model.forward_train(_batch([[1], [2]], [[0], [0]], [-1] * 2, [0] * 2))
    assert empty.item() == 0 and logits.shape == (0, 7)
    empty.backward()
    with pytest.raises(ValueError, match="max_seq_len"):
        model.forward_train(_batch([list(range(10))], [list(range(10))], [-1], [0]))


def test_train_wrapper_contract(torch_seed: int) -> None:
    train = SequentialTrain(_model())
    batch = _batch([[1, 2, 3], [4, 5]], [[0, 1, 2], [0, 1]], [-1, -1], [0, 0])
    loss, (detached, logits, labels) = train(batch)
    assert loss.requires_grad and not detached.requires_grad and logits.shape == (3, 7) and labels.shape == (3,)
    train.eval()
    zero, (_, users, targets) = train(_batch([[1, 2, 3], [4]], [[0, 1, 2], [0]], [5, 6], [3, 1]))
    assert zero.item() == 0 and users.shape == (2, 16) and targets.tolist() == [5, 6]


def _transition_batches(generator: torch.Generator, steps: int) -> List[SequenceBatch]:
    """Users walk item i -> i + 1 (mod NUM_ITEMS) from a random start: a learnable rule."""
    out = []
    for _ in range(steps):
        starts = torch.randint(NUM_ITEMS, (16,), generator=generator)
        lengths = torch.randint(2, 8, (16,), generator=generator)
        rows = [[(int(s) + j) % NUM_ITEMS for j in range(int(n))] for s, n in zip(starts, lengths)]
        times = [[60 * j for j in range(len(r))] for r in rows]
        out.append(_batch(rows, times, [-1] * 16, [0] * 16))
    return out


def test_tiny_model_learns_transitions(torch_seed: int, generator: torch.Generator) -> None:
    train = SequentialTrain(_model(num_blocks=1))
    opt = torch.optim.Adam(train.parameters(), lr=0.01)
    losses = []
    for batch in _transition_batches(generator, 60):
        loss, _ = train(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    # And it ranks the next item first for most histories.
    train.eval()
    model = train.model
    with torch.no_grad():
        batch = _batch([[5, 6, 7], [20, 21], [38, 39]], [[0, 60, 120], [0, 60], [0, 60]], [8, 22, 0], [180, 120, 120])
        ranks = target_ranks(model.score_all_items(model(batch), model.all_item_vectors()), batch.targets)
    assert ranking_metrics(ranks, ks=(5,))["hr@5"] >= 2 / 3


# ---------------------------------------------------------------------------------------
# Metrics against hand-computed ranks.


def test_target_ranks_count_ties_against_the_target() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.2, 0.2, 0.2, 0.2], [1.0, 0.0, 0.0, 0.0]])
    assert target_ranks(scores, torch.tensor([2, 0, 0])).tolist() == [1, 3, 0]


def test_exclude_history_keeps_the_target() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.4, 0.8, 0.6, 0.7]])
    history, lengths = torch.tensor([1, 2, 1, 3]), torch.tensor([2, 2])
    targets = torch.tensor([2, 3])  # row 0: target 2 is also in its history
    masked = exclude_history(scores, history, lengths, targets)
    inf = float("-inf")
    assert masked.tolist() == [[pytest.approx(0.1), inf, pytest.approx(0.5), pytest.approx(0.3)],
                               [pytest.approx(0.4), inf, pytest.approx(0.6), pytest.approx(0.7)]]  # fmt: skip
    assert target_ranks(masked, targets).tolist() == [0, 0]
    assert target_ranks(scores, targets).tolist() == [1, 1]
    assert scores[0, 1] == pytest.approx(0.9)  # input untouched


def test_ranking_metrics_by_hand() -> None:
    ranks = torch.tensor([0, 3, 9, 10, 60, 250])
    m = ranking_metrics(ranks)
    assert m["hr@10"] == pytest.approx(3 / 6)
    assert m["hr@50"] == pytest.approx(4 / 6)
    assert m["hr@200"] == pytest.approx(5 / 6)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(11)) / 6)
    assert m["ndcg@200"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(11) + 1 / math.log2(12) + 1 / math.log2(62)) / 6)
    assert m["mrr"] == pytest.approx(sum(1 / (r + 1) for r in [0, 3, 9, 10, 60, 250]) / 6)
