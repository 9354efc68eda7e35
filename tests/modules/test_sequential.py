"""Sequence encoders, item sampler and sampled softmax of ``torchrec_me.modules.sequential``.

The HSTU block is checked against a plain-loop float64 implementation of the issue's
formulas (per row, per position, per head, per key), written here independently.
"""

import inspect
import math
import re
import textwrap
from typing import Any, Dict, List, Optional

import pytest
import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import torchrec_me.modules.sequential as seq
from torchrec_me.config import ConfigError
from torchrec_me.modules.sequential import (
    EncoderConfig,
    HSTUBlock,
    HSTUEncoder,
    LlamaEncoder,
    NegativeSampler,
    SampledSoftmaxLoss,
    SASRecEncoder,
    SetEncoders,
    build_encoder,
    sample_negatives,
)
from torchrec_me.modules.sequential.hstu import RelativeBias, time_buckets
from torchrec_me.modules.sequential.items import hash_ids


# ---------------------------------------------------------------------------------------
# HSTU parity: an independent plain-loop implementation of the formulas, in float64.


def _layer_norm(vec: List[float], eps: float = 1e-6) -> List[float]:
    mean = sum(vec) / len(vec)
    var = sum((v - mean) ** 2 for v in vec) / len(vec)
    return [(v - mean) / math.sqrt(var + eps) for v in vec]


def _silu(z: float) -> float:
    return z / (1.0 + math.exp(-z))


def _bucket(gap: int, num_buckets: int) -> int:
    return min(max(int(math.floor(math.log(max(abs(gap), 1)) / 0.301)), 0), num_buckets)


def _rab(block: HSTUBlock, ts: List[int], nts: List[int], i: int, j: int, cfg: EncoderConfig) -> float:
    bias = 0.0
    if cfg.rab in ("position", "both"):
        w = block.rab.position_weight.detach().tolist()
        bias += w[j - i + cfg.max_seq_len - 1]
    if cfg.rab in ("time", "both"):
        w = block.rab.time_weight.detach().tolist()
        query = ts[i] if cfg.time_bias_source == "seen" else nts[i]
        bias += w[_bucket(query - ts[j], cfg.num_time_buckets)]
    return bias


def _row_attention(q, k, v, bias, i: int, heads: int, dh: int, cfg: EncoderConfig) -> List[float]:
    """(A v)_i for one row: per head, a loop over the keys j <= i."""
    out = [0.0] * (heads * dh)
    for h in range(heads):
        sl = slice(h * dh, (h + 1) * dh)
        dots = [sum(a * b for a, b in zip(q[i][sl], k[j][sl])) for j in range(i + 1)]
        if cfg.attention == "softmax":
            logits = [d / math.sqrt(dh) + bias(i, j) for j, d in enumerate(dots)]
            top = max(logits)
            exps = [math.exp(z - top) for z in logits]
            weights = [e / sum(exps) for e in exps]
        elif cfg.attention_scale == "length":
            weights = [_silu(d + bias(i, j)) / cfg.max_seq_len for j, d in enumerate(dots)]
        else:
            weights = [_silu(d / math.sqrt(dh) + bias(i, j)) for j, d in enumerate(dots)]
        for j, a in enumerate(weights):
            for c in range(dh):
                out[h * dh + c] += a * v[j][sl][c]
    return out


def reference_hstu_block(block: HSTUBlock, x: torch.Tensor, ts: torch.Tensor, nts: torch.Tensor, cfg: EncoderConfig) -> torch.Tensor:
    """y = x + W_o (u * LN(A v)) with A = SiLU(q k^T + rab) / n (causal), plain loops."""
    w = block.uvqk.detach().double().tolist()
    wo = block.output.weight.detach().double().tolist()
    bo = block.output.bias.detach().double().tolist()
    b_, length, dim = x.shape
    heads, dh = cfg.num_heads, dim // cfg.num_heads
    out = torch.zeros(b_, length, dim, dtype=torch.float64)
    for b in range(b_):
        rows = x[b].double().tolist()
        proj = []
        for i in range(length):
            normed = _layer_norm(rows[i])
            proj.append([_silu(sum(normed[r] * w[r][c] for r in range(dim))) for c in range(4 * dim)])
        u = [p[:dim] for p in proj]
        v = [p[dim : 2 * dim] for p in proj]
        q = [p[2 * dim : 3 * dim] for p in proj]
        k = [p[3 * dim :] for p in proj]
        t, nt = ts[b].tolist(), nts[b].tolist()
        for i in range(length):
            av = _layer_norm(_row_attention(q, k, v, lambda a, c: _rab(block, t, nt, a, c, cfg), i, heads, dh, cfg))
            gated = [u[i][c] * av[c] for c in range(dim)]
            for c in range(dim):
                out[b, i, c] = rows[i][c] + bo[c] + sum(wo[c][r] * gated[r] for r in range(dim))
    return out


PARITY_CASES = [
    dict(num_heads=2, rab="both", time_bias_source="seen"),
    dict(num_heads=1, rab="both", time_bias_source="next"),
    dict(num_heads=2, rab="position", attention_scale="sqrt_dim"),
    dict(num_heads=2, rab="time", attention="softmax"),
    dict(num_heads=1, rab="none"),
]


@pytest.mark.parametrize("case", PARITY_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_hstu_block_matches_plain_loop_formulas(case: Dict[str, Any], torch_seed: int) -> None:
    cfg = EncoderConfig(max_seq_len=6, num_time_buckets=16, dropout=0.0, **case)
    block = HSTUBlock(8, cfg).double().eval()
    with torch.no_grad():  # a non-trivial output projection bias
        block.output.bias.normal_()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    ts = torch.cumsum(torch.randint(0, 100_000, (2, 5)), dim=1)
    nts = torch.cat([ts[:, 1:], ts[:, -1:] + 7], dim=1)
    torch.testing.assert_close(block(x, ts, nts), reference_hstu_block(block, x, ts, nts, cfg), rtol=1e-10, atol=1e-10)


def test_time_buckets_are_log_spaced_and_clamped() -> None:
    gaps = torch.tensor([0, 1, -1, 2, 10, 10**6, 10**12])
    expected = [_bucket(int(g), 40) for g in gaps]
    assert time_buckets(gaps, 40).tolist() == expected
    assert time_buckets(torch.tensor([10**12]), 40).item() == 40  # clamped (ln 1e12 / 0.301 = 91)


# ---------------------------------------------------------------------------------------
# Causality and the rab switches.

ENCODERS = {"hstu": HSTUEncoder, "sasrec": SASRecEncoder, "llama": LlamaEncoder}


def _inputs(b: int = 2, length: int = 6, dim: int = 8, generator: Optional[torch.Generator] = None):
    x = torch.randn(b, length, dim, generator=generator)
    ts = torch.cumsum(torch.randint(1, 10**5, (b, length), generator=generator), dim=1)
    nts = torch.cat([ts[:, 1:], ts[:, -1:] + 100], dim=1)
    return x, torch.ones(b, length, dtype=torch.bool), ts, nts


@pytest.mark.parametrize("backbone", sorted(ENCODERS))
def test_encoders_are_causal_and_zero_the_padding(backbone: str, torch_seed: int, generator: torch.Generator) -> None:
    enc = ENCODERS[backbone](8, EncoderConfig(num_blocks=2, num_heads=2, max_seq_len=8)).eval()
    x, mask, ts, nts = _inputs(generator=generator)
    out = enc(x, mask, ts, nts)
    assert out.shape == (2, 6, 8)
    changed = x.clone()
    changed[:, 4:] = torch.randn(2, 2, 8, generator=generator)
    moved = ts.clone()
    moved[:, 4:] += 5000
    out2 = enc(changed, mask, moved, torch.cat([moved[:, 1:], moved[:, -1:] + 100], 1))
    torch.testing.assert_close(out2[:, :3], out[:, :3])  # positions 0..2 read items 0..2 only
    assert not torch.allclose(out2[:, 4:], out[:, 4:])
    # A padded row gives the same valid outputs as the unpadded one, and zeros after it.
    short = mask.clone()
    short[0, 4:] = False
    padded = enc(x, short, ts, nts)
    torch.testing.assert_close(padded[0, :4], out[0, :4])
    assert padded[0, 4:].abs().max() == 0


@pytest.mark.parametrize("backbone", sorted(ENCODERS))
def test_length_buckets_give_the_same_function(backbone: str, torch_seed: int, generator: torch.Generator) -> None:
    """Rows of long-tailed lengths: 1 bucket (padded to the longest row) and 3 or 7 buckets
    give the same outputs and the same gradients of every weight and input."""
    lengths = torch.tensor([1, 12, 3, 2, 9, 1, 5])
    x, _, ts, nts = _inputs(b=7, length=12, generator=generator)
    mask = torch.arange(12) < lengths.unsqueeze(1)
    cotangent = torch.randn(7, 12, 8, generator=generator)
    results = []
    for buckets in (1, 3, 7):
        torch.manual_seed(0)
        cfg = EncoderConfig(num_blocks=2, num_heads=2, max_seq_len=12, dropout=0.0, length_buckets=buckets)
        enc = ENCODERS[backbone](8, cfg)
        inputs = x.clone().requires_grad_()
        out = enc(inputs, mask, ts, nts)
        (out * cotangent).sum().backward()
        results.append((out.detach(), inputs.grad, {n: p.grad for n, p in enc.named_parameters()}))
    base_out, base_dx, base_grads = results[0]
    assert base_out[~mask].abs().max() == 0
    for out, dx, grads in results[1:]:
        torch.testing.assert_close(out, base_out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dx, base_dx, rtol=1e-5, atol=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, base_grads[name], rtol=1e-5, atol=1e-5, msg=name)  # summation order


def _hstu_out(rab: str, source: str, ts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    cfg = EncoderConfig(num_blocks=1, max_seq_len=8, rab=rab, time_bias_source=source, dropout=0.0)
    enc = HSTUEncoder(8, cfg).eval()
    with torch.no_grad():  # make the time weights matter
        if enc.blocks[0].rab.time_weight is not None:
            enc.blocks[0].rab.time_weight.normal_(0, 3.0)
    nts = torch.cat([ts[:, 1:], ts[:, -1:] + 100], dim=1)
    return enc(x, torch.ones(x.shape[:2], dtype=torch.bool), ts, nts)


@pytest.mark.parametrize("rab", ["none", "position", "time", "both"])
def test_rab_switches_read_timestamps_as_documented(rab: str, generator: torch.Generator) -> None:
    with torch.random.fork_rng(devices=[]):
        x, _, ts, _ = _inputs(b=1, generator=generator)
        later = ts.clone()
        later[0, 3:] += 10**7  # t_3 moves: the item of position 3, predicted by position 2
        seen, seen2 = _hstu_out(rab, "seen", ts, x), _hstu_out(rab, "seen", later, x)
        nxt, nxt2 = _hstu_out(rab, "next", ts, x), _hstu_out(rab, "next", later, x)
    uses_time = rab in ("time", "both")
    # 'seen': position 2 reads t_0..t_2 only.
    torch.testing.assert_close(seen2[0, :3], seen[0, :3])
    assert torch.allclose(seen2[0, 3:], seen[0, 3:]) != uses_time
    # 'next': position 2 reads t_3 (its target's time).
    torch.testing.assert_close(nxt2[0, :2], nxt[0, :2])
    assert torch.allclose(nxt2[0, 2], nxt[0, 2]) != uses_time


def test_stack_computes_the_time_buckets_once_with_the_same_result(torch_seed: int, generator: torch.Generator) -> None:
    """The encoder hands every block the buckets it computed once; each block computing
    its own gives the same output."""
    enc = HSTUEncoder(8, EncoderConfig(num_blocks=3, num_heads=2, max_seq_len=8, dropout=0.0, rab="both")).eval()
    x, mask, ts, nts = _inputs(generator=generator)
    out = enc(x, mask, ts, nts)
    h = enc.input(x, mask)
    for block in enc.blocks:
        h = block(h, ts, nts)  # no buckets given: computed in the block
    torch.testing.assert_close(out, h * mask.unsqueeze(-1), rtol=0, atol=0)
    rab = enc.blocks[0].rab
    assert torch.equal(rab.buckets(ts, nts), time_buckets(ts.unsqueeze(2) - ts.unsqueeze(1), 128))  # 'seen'
    assert torch.equal(rab(ts, nts), rab(ts, nts, rab.buckets(ts, nts)))
    assert RelativeBias(EncoderConfig(max_seq_len=8, rab="position")).buckets(ts, nts) is None


def test_rab_none_and_position_differ(generator: torch.Generator) -> None:
    with torch.random.fork_rng(devices=[]):
        x, _, ts, _ = _inputs(b=1, generator=generator)
        assert not torch.allclose(_hstu_out("none", "seen", ts, x), _hstu_out("position", "seen", ts, x))


def test_registry_and_shared_encoder(torch_seed: int) -> None:
    cfg = EncoderConfig(max_seq_len=4)
    assert isinstance(build_encoder("llama", 8, cfg), LlamaEncoder)
    with pytest.raises(ConfigError, match="model.backbone"):
        build_encoder("gpt5", 8, cfg)
    with pytest.raises(ConfigError, match="model.shared_encoder"):
        SetEncoders("hstu", [8, 12], cfg, shared=True)
    build_encoder("llama", 12, EncoderConfig(num_heads=6))  # head dim 2: even, as RoPE needs
    with pytest.raises(ConfigError, match="model.num_heads"):
        build_encoder("llama", 12, EncoderConfig(num_heads=4))  # head dim 3
    with pytest.raises(ConfigError, match="model.num_heads"):
        build_encoder("hstu", 12, EncoderConfig(num_heads=5))
    shared = SetEncoders("hstu", [8, 8], cfg, shared=True).eval()
    assert len(shared.stacks) == 1
    outs = shared([torch.randn(1, 3, 8)] * 2, torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.long),
                  torch.zeros(1, 3, dtype=torch.long))  # fmt: skip
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(outs[0].norm(dim=-1), torch.ones(1, 3))


def test_encoder_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match="model.rab"):
        EncoderConfig(rab="relative")
    with pytest.raises(ConfigError, match="model.dropout"):
        EncoderConfig(dropout=1.0)


# ---------------------------------------------------------------------------------------
# Negatives.


def _items(lengths: List[int], generator: torch.Generator) -> KeyedJaggedTensor:
    values = torch.randint(0, 50, (sum(lengths),), generator=generator)
    return KeyedJaggedTensor.from_lengths_sync(["item"], values, torch.tensor(lengths))


@pytest.mark.parametrize("per_position", [False, True])
def test_sampler_is_rank_invariant_and_steps(per_position: bool, generator: torch.Generator) -> None:
    items = _items([3, 1, 4, 2], generator)
    users = torch.tensor([11, 12, 13, 14])
    whole, index = NegativeSampler(1000, 5, seed=3, per_position=per_position)(items, users)
    negatives = whole["item_negative"]
    drawn = _drawn(whole, index)
    if per_position:  # 5 per predicted position, each distinct id once (all in row 0) and an index
        assert index.shape == (sum(n - 1 for n in [3, 1, 4, 2]), 5)
        distinct = negatives.values()
        assert negatives.lengths().tolist() == [len(distinct), 0, 0, 0]
        assert distinct.tolist() == sorted(set(drawn.tolist()))
    else:
        assert negatives.lengths().tolist() == [5] * 4 and index.numel() == 0
    assert whole["item"].values().tolist() == items.values().tolist()
    assert 0 <= int(drawn.min()) and int(drawn.max()) < 1000
    # The same rows split over two "ranks" draw the same ids.
    halves = []
    for rows in ([0, 1], [2, 3]):
        sub = KeyedJaggedTensor.from_jt_dict({"item": items["item"]}).__class__.from_lengths_sync(
            ["item"], torch.cat([items["item"].to_dense()[r] for r in rows]), items.lengths()[rows]
        )
        halves.append(_drawn(*NegativeSampler(1000, 5, seed=3, per_position=per_position)(sub, users[rows])))
    assert torch.cat(halves).tolist() == drawn.tolist()
    # The next step, another seed, another draw; eval mode draws nothing.
    sampler = NegativeSampler(1000, 5, seed=3, per_position=per_position)
    first = _drawn(*sampler(items, users))
    second = _drawn(*sampler(items, users))
    assert sampler.step.item() == 2 and not torch.equal(first, second)
    assert not torch.equal(_drawn(*NegativeSampler(1000, 5, seed=4)(items, users)), first[:20])
    sampler.eval()
    assert sampler(items, users)[0]["item_negative"].lengths().sum() == 0 and sampler.step.item() == 2


def _drawn(features: KeyedJaggedTensor, index: torch.Tensor) -> torch.Tensor:
    """Every negative drawn, in order: row b's M, or each position's M (through the index)."""
    values = features["item_negative"].values()
    return values[index].reshape(-1) if index.numel() else values


def test_hashed_negatives_are_uniform() -> None:
    ids = hash_ids([torch.tensor(1), torch.tensor(0), torch.arange(2000).unsqueeze(1), torch.arange(100)]) % 20
    counts = torch.bincount(ids.reshape(-1), minlength=20).double()
    expected = ids.numel() / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 60  # 19 degrees of freedom: p < 1e-5 above ~50


def test_sample_negatives_uses_the_generator() -> None:
    a = sample_negatives(7, (3, 4), torch.Generator().manual_seed(1))
    b = sample_negatives(7, (3, 4), torch.Generator().manual_seed(1))
    assert a.shape == (3, 4) and torch.equal(a, b) and int(a.max()) < 7


# ---------------------------------------------------------------------------------------
# Sampled softmax against a hand computation.


def _cos(a: List[float], b: List[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_sampled_softmax_matches_hand_computation(generator: torch.Generator) -> None:
    """Two sets, per-row negatives, one negative equal to the positive (masked)."""
    temperature = 0.05
    users = [F.normalize(torch.randn(1, 2, 4, generator=generator), dim=-1) for _ in range(2)]
    pos = [torch.randn(1, 2, 4, generator=generator) for _ in range(2)]
    neg = [torch.randn(1, 3, 4, generator=generator) for _ in range(2)]
    mask = torch.tensor([[True, True]])
    pos_ids, neg_ids = torch.tensor([[5, 6]]), torch.tensor([[6, 1, 2]])
    loss, logits, labels = SampledSoftmaxLoss(temperature)(users, pos, neg, mask, pos_ids, neg_ids)

    def score(i: int, emb: List[torch.Tensor], j: Optional[int]) -> float:
        row = [e[0, i] if j is None else e[0, j] for e in emb]
        return sum(_cos(users[s][0, i].tolist(), row[s].tolist()) for s in range(2)) / 2 / temperature

    expected = []
    for i in range(2):
        p = score(i, pos, None)
        negs = [score(i, neg, j) for j in range(3) if neg_ids[0, j] != pos_ids[0, i]]
        expected.append(math.log(math.exp(p) + sum(math.exp(n) for n in negs)) - p)
    assert logits.shape == (2, 4) and labels.tolist() == [0, 0]
    assert logits[1, 1] == float("-inf") and torch.isfinite(logits[0]).all()
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_per_position_negatives_equal_shared_ones_when_equal(generator: torch.Generator) -> None:
    users = [F.normalize(torch.randn(2, 3, 8, generator=generator), dim=-1)]
    pos, neg = [torch.randn(2, 3, 8, generator=generator)], torch.randn(2, 4, 8, generator=generator)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    pos_ids, neg_ids = torch.randint(6, (2, 3), generator=generator), torch.randint(6, (2, 4), generator=generator)
    fn = SampledSoftmaxLoss(0.1)
    shared = fn(users, pos, [neg], mask, pos_ids, neg_ids)
    per_pos = fn(users, pos, [neg.unsqueeze(1).expand(2, 3, 4, 8)], mask, pos_ids, neg_ids.unsqueeze(1).expand(2, 3, 4))
    torch.testing.assert_close(per_pos[0], shared[0])
    torch.testing.assert_close(per_pos[1], shared[1])


@pytest.mark.parametrize("matmul_factor", [1000, 0])  # one matmul over the distinct rows, or gathered chunks
def test_distinct_negative_rows_equal_the_padded_per_position_loss(
    matmul_factor: int, generator: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-position negatives given once per distinct id with an index give the loss,
    logits and gradients (users, positives, each looked-up row summed over its
    occurrences) of the (B, L, M, D) padded form, for K = 2 sets."""
    monkeypatch.setattr(seq.loss, "MATMUL_OVER_GATHER", matmul_factor)
    monkeypatch.setattr(seq.loss, "GATHER_CHUNK", 2)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    p, m, dims = int(mask.sum()), 5, (8, 4)
    neg_ids = torch.randint(7, (p, m), generator=generator)  # repeats across and within positions
    pos_ids = torch.randint(7, (2, 3), generator=generator)
    table = [torch.randn(7, d, generator=generator) for d in dims]
    users = [F.normalize(torch.randn(2, 3, d, generator=generator), dim=-1).requires_grad_() for d in dims]
    positives = [torch.randn(2, 3, d, generator=generator).requires_grad_() for d in dims]
    fn = SampledSoftmaxLoss(0.1)

    def grads(loss: torch.Tensor, rows: List[torch.Tensor]) -> List[torch.Tensor]:
        return torch.autograd.grad(loss, users + positives + rows)

    padded_rows = [t[neg_ids].requires_grad_() for t in table]  # (P, M, D): one lookup per negative
    padded = [r.new_zeros(2, 3, m, r.shape[-1]).index_put((mask,), r) for r in padded_rows]
    padded_ids = torch.zeros(2, 3, m, dtype=torch.long).index_put((mask,), neg_ids)
    loss_a, logits_a, _ = fn(users, positives, padded, mask, pos_ids, padded_ids)
    grads_a = grads(loss_a, padded_rows)
    distinct, index = torch.unique(neg_ids, return_inverse=True)
    rows = [t[distinct].requires_grad_() for t in table]
    loss_b, logits_b, _ = fn(users, positives, rows, mask, pos_ids, neg_ids, index)
    grads_b = grads(loss_b, rows)
    torch.testing.assert_close(loss_b, loss_a)
    torch.testing.assert_close(logits_b, logits_a)
    assert torch.isinf(logits_a).any()  # a negative equal to the positive is masked in both
    for a, b in zip(grads_a[:4], grads_b[:4]):
        torch.testing.assert_close(b, a)
    for k in range(2):  # a distinct row's gradient is the sum over its occurrences
        summed = torch.zeros(len(distinct), dims[k]).index_add_(0, index.reshape(-1), grads_a[4 + k].reshape(-1, dims[k]))
        torch.testing.assert_close(grads_b[4 + k], summed)


def test_in_batch_negatives_equal_to_the_positive_are_masked(generator: torch.Generator) -> None:
    users = [F.normalize(torch.randn(2, 3, 8, generator=generator), dim=-1)]
    pos, neg = [torch.randn(2, 3, 8, generator=generator)], [torch.randn(2, 4, 8, generator=generator)]
    mask = torch.ones(2, 3, dtype=torch.bool)
    same = torch.full((2, 3), 7)  # every positive is item 7: every in-batch negative is masked
    plain = SampledSoftmaxLoss(0.1)(users, pos, neg, mask, same, torch.zeros(2, 4, dtype=torch.long))
    mixed = SampledSoftmaxLoss(0.1, in_batch_negatives=True)(users, pos, neg, mask, same, torch.zeros(2, 4, dtype=torch.long))
    assert mixed[1].shape == (6, 9) and torch.isinf(mixed[1][:, 5:]).all()
    torch.testing.assert_close(mixed[0], plain[0])
    distinct = torch.arange(6).reshape(2, 3)
    other = SampledSoftmaxLoss(0.1, in_batch_negatives=True)(users, pos, neg, mask, distinct, torch.zeros(2, 4, dtype=torch.long))
    assert other[0] > SampledSoftmaxLoss(0.1)(users, pos, neg, mask, distinct, torch.zeros(2, 4, dtype=torch.long))[0]


# ---------------------------------------------------------------------------------------
# Every docstring example of the package runs.


def _examples() -> List[Any]:
    found = []
    for name in seq.__all__:
        obj = getattr(seq, name)
        doc = inspect.getdoc(obj) if inspect.isclass(obj) else None
        if doc and "Example::" in doc:
            body = doc.split("Example::", 1)[1]
            block = re.split(r"\n(?=\S)", body.lstrip("\n"), maxsplit=1)[0]
            found.append(pytest.param(obj, textwrap.dedent(block), id=name))
    return found


@pytest.mark.parametrize("cls,code", _examples())
def test_docstring_example_runs(cls: type, code: str, torch_seed: int) -> None:
    namespace = dict(vars(inspect.getmodule(cls)))
    exec(compile(code, f"<{cls.__name__} example>", "exec"), namespace)
