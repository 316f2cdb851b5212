"""common/porting/flash_attn_compat.py against a naive float64 softmax(Q K^T * scale + mask) V written here, on random
inputs: mixed sequence lengths (1 and 0 included), causal and not, bottom-right causal alignment when
seqlen_q != seqlen_k, GQA and MQA, custom scales, fp32 (max abs error < 1e-5) and bf16 (< 2e-2: inputs are
rounded to bf16 first, so the only error left is SDPA computing in bf16, ~8 mantissa bits on outputs of order 1).
Plus the KV cache, bert_padding, rotary, and install()/uninstall() with unmodified "remote code"."""
from __future__ import annotations

import importlib.util
import inspect
import sys

import pytest
import torch
from packaging import version
from transformers.dynamic_module_utils import check_imports

from common.porting import flash_attn_compat as fa

FP32_TOL = 1e-5
BF16_TOL = 2e-2
HEADDIM = 16


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def bottom_right(seqlen_q: int, seqlen_k: int) -> torch.Tensor:
    """The flash-attn >= 2.1 causal mask, written out element by element."""
    keep = torch.zeros(seqlen_q, seqlen_k, dtype=torch.bool)
    for i in range(seqlen_q):
        for j in range(seqlen_k):
            keep[i, j] = j <= i + seqlen_k - seqlen_q
    return keep


def naive(q, k, v, keep=None, scale=None):
    """q (B, Sq, H, D), k/v (B, Sk, Hk, D), keep (B or 1, Sq, Sk) -> (B, Sq, H, D) float64; keyless rows are 0."""
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if keep is not None:
        scores = scores.masked_fill(~keep[:, None], float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1).nan_to_num(0.0), v)


def max_err(out, ref) -> float:
    assert out.shape == ref.shape and not out.isnan().any()
    return (out.double() - ref).abs().max().item()


def cu(lengths) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


@pytest.fixture
def clean_modules():
    """Whatever a test installs is gone afterwards, and the test can check sys.modules is as it found it."""
    before = {n: m for n, m in sys.modules.items() if n == "flash_attn" or n.startswith("flash_attn.")}
    yield before
    fa.uninstall()


# --- signatures: positional callers must land on the same parameters as with the real flash-attn 2.7 ----------

REAL_SIGNATURES = {  # copied from flash_attn/flash_attn_interface.py, flash_attn/bert_padding.py, layers/rotary.py
    "flash_attn_func": "q k v dropout_p softmax_scale causal window_size softcap alibi_slopes deterministic "
                       "return_attn_probs",
    "flash_attn_varlen_func": "q k v cu_seqlens_q cu_seqlens_k max_seqlen_q max_seqlen_k dropout_p softmax_scale "
                              "causal window_size softcap alibi_slopes deterministic return_attn_probs block_table",
    "flash_attn_with_kvcache": "q k_cache v_cache k v rotary_cos rotary_sin cache_seqlens cache_batch_idx "
                               "cache_leftpad block_table softmax_scale causal window_size softcap rotary_interleaved "
                               "alibi_slopes num_splits return_softmax_lse",
    "unpad_input": "hidden_states attention_mask unused_mask",
    "pad_input": "hidden_states indices batch seqlen",
    "apply_rotary_emb": "x cos sin interleaved inplace seqlen_offsets cu_seqlens max_seqlen",
}


@pytest.mark.parametrize("name", REAL_SIGNATURES)
def test_signatures_match_flash_attn(name):
    assert list(inspect.signature(getattr(fa, name)).parameters) == REAL_SIGNATURES[name].split()


# --- flash_attn_func ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("heads", [(8, 8), (8, 2), (8, 1)], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("seqlens", [(6, 6), (3, 9), (9, 3), (1, 7)])
@pytest.mark.parametrize("causal", [False, True])
def test_func_matches_naive_fp32(heads, seqlens, causal):
    (h, hk), (sq, sk) = heads, seqlens
    q, k, v = randn(2, sq, h, HEADDIM, seed=1), randn(2, sk, hk, HEADDIM, seed=2), randn(2, sk, hk, HEADDIM, seed=3)
    out = fa.flash_attn_func(q, k, v, causal=causal)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert max_err(out, naive(q, k, v, bottom_right(sq, sk)[None] if causal else None)) < FP32_TOL


def test_func_causal_is_bottom_right_and_keyless_rows_are_zero():
    q, k, v = randn(1, 5, 2, HEADDIM, seed=1), randn(1, 2, 2, HEADDIM, seed=2), randn(1, 2, 2, HEADDIM, seed=3)
    out = fa.flash_attn_func(q, k, v, causal=True)
    assert torch.equal(out[:, :3], torch.zeros_like(out[:, :3]))  # queries 0..2 see no key
    assert torch.allclose(out[0, 3], v[0, 0], atol=1e-6)  # query 3 sees exactly key 0
    # 2 queries over 5 keys: the first sees keys 0..3 (top-left alignment would give it key 0 only)
    q2 = randn(1, 2, 2, HEADDIM, seed=4)
    k5, v5 = randn(1, 5, 2, HEADDIM, seed=5), randn(1, 5, 2, HEADDIM, seed=6)
    first = fa.flash_attn_func(q2, k5, v5, causal=True)[:, :1]
    assert max_err(first, naive(q2[:, :1], k5[:, :4], v5[:, :4])) < FP32_TOL
    assert max_err(first, naive(q2[:, :1], k5[:, :1], v5[:, :1])) > 0.1


def test_func_custom_softmax_scale():
    q, k, v = randn(2, 4, 8, HEADDIM, seed=1), randn(2, 6, 2, HEADDIM, seed=2), randn(2, 6, 2, HEADDIM, seed=3)
    out = fa.flash_attn_func(q, k, v, softmax_scale=0.7, causal=True)
    assert max_err(out, naive(q, k, v, bottom_right(4, 6)[None], scale=0.7)) < FP32_TOL
    assert max_err(out, naive(q, k, v, bottom_right(4, 6)[None])) > 1e-2  # the scale really is used


@pytest.mark.parametrize("causal", [False, True])
def test_func_bf16(causal):
    shapes = [(7, 8), (9, 2), (9, 2)]  # GQA, seqlen_q != seqlen_k
    q, k, v = (randn(2, s, h, HEADDIM, seed=i, dtype=torch.bfloat16) for i, (s, h) in enumerate(shapes))
    out = fa.flash_attn_func(q, k, v, causal=causal)
    assert out.dtype == torch.bfloat16
    assert max_err(out, naive(q, k, v, bottom_right(7, 9)[None] if causal else None)) < BF16_TOL


def test_packed_variants_equal_unpacked():
    q, k, v = randn(2, 5, 4, HEADDIM, seed=1), randn(2, 5, 4, HEADDIM, seed=2), randn(2, 5, 4, HEADDIM, seed=3)
    ref = fa.flash_attn_func(q, k, v, causal=True)
    assert torch.equal(fa.flash_attn_qkvpacked_func(torch.stack((q, k, v), dim=2), causal=True), ref)
    assert torch.equal(fa.flash_attn_kvpacked_func(q, torch.stack((k, v), dim=2), causal=True), ref)
    c = cu([5, 5])
    flat = [x.flatten(0, 1) for x in (q, k, v)]
    ref_varlen = fa.flash_attn_varlen_func(*flat, c, c, 5, 5, causal=True)
    assert torch.allclose(ref_varlen, ref.flatten(0, 1), atol=FP32_TOL)
    assert torch.equal(fa.flash_attn_varlen_qkvpacked_func(torch.stack(flat, dim=1), c, 5, causal=True), ref_varlen)
    kv = torch.stack(flat[1:], dim=1)
    assert torch.equal(fa.flash_attn_varlen_kvpacked_func(flat[0], kv, c, c, 5, 5, causal=True), ref_varlen)


# --- flash_attn_varlen_func -----------------------------------------------------------------------------------

def naive_varlen(q, k, v, lens_q, lens_k, causal, scale=None):
    """Each sequence on its own through `naive`; the packed rows of q in order."""
    out, cq, ck = [], cu(lens_q).tolist(), cu(lens_k).tolist()
    for b, (lq, lk) in enumerate(zip(lens_q, lens_k)):
        qs, ks, vs = q[cq[b]:cq[b + 1]][None], k[ck[b]:ck[b + 1]][None], v[ck[b]:ck[b + 1]][None]
        out.append(naive(qs, ks, vs, bottom_right(lq, lk)[None] if causal else None, scale)[0])
    return torch.cat(out)


LENS_SELF = ([5, 1, 0, 9, 3], [5, 1, 0, 9, 3])  # self-attention, with a length-1 and a zero-length sequence
LENS_CROSS = ([4, 1, 3, 0, 6], [7, 1, 0, 2, 9])  # different key lengths; sequence 2 has queries but no keys


@pytest.mark.parametrize("layout", ["padded", "block_diagonal", "auto"])
@pytest.mark.parametrize("lens", [LENS_SELF, LENS_CROSS], ids=["self", "cross"])
@pytest.mark.parametrize("heads", [(8, 2), (8, 1)], ids=["GQA", "MQA"])
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_matches_per_sequence_naive(layout, lens, heads, causal, monkeypatch):
    monkeypatch.setattr(fa, "VARLEN_LAYOUT", layout)
    (lens_q, lens_k), (h, hk) = lens, heads
    q, k, v = randn(sum(lens_q), h, HEADDIM, seed=1), randn(sum(lens_k), hk, HEADDIM, seed=2), \
        randn(sum(lens_k), hk, HEADDIM, seed=3)
    out = fa.flash_attn_varlen_func(q, k, v, cu(lens_q), cu(lens_k), max(lens_q), max(lens_k), softmax_scale=0.4,
                                    causal=causal)
    assert max_err(out, naive_varlen(q, k, v, lens_q, lens_k, causal, scale=0.4)) < FP32_TOL
    if lens is LENS_CROSS:  # queries of the keyless sequence: zeros, not NaN
        assert torch.equal(out[5:8], torch.zeros_like(out[5:8]))


def test_varlen_auto_layout_picks_the_cheaper():
    assert fa._varlen_layout([8, 7, 8], [8, 7, 8]) == "padded"
    assert fa._varlen_layout([100] + [1] * 50, [100] + [1] * 50) == "block_diagonal"


def test_varlen_bf16_and_rows_outside_every_sequence():
    lens = [3, 6, 1]
    q, k, v = (randn(12, 4, HEADDIM, seed=i, dtype=torch.bfloat16) for i in range(3))  # 2 trailing rows unused
    out = fa.flash_attn_varlen_func(q, k, v, cu(lens), cu(lens), 6, 6, causal=True)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert max_err(out[:10], naive_varlen(q, k, v, lens, lens, True)) < BF16_TOL
    assert torch.equal(out[10:], torch.zeros_like(out[10:]))


def test_varlen_all_sequences_empty():
    q = randn(0, 4, HEADDIM)
    out = fa.flash_attn_varlen_func(q, q, q, cu([0, 0]), cu([0, 0]), 0, 0)
    assert out.shape == (0, 4, HEADDIM)


@pytest.mark.parametrize("bad, message", [
    (dict(max_seqlen_q=4), "max_seqlen_q=4 is smaller than the longest sequence"),
    (dict(cu_seqlens_k=torch.tensor([0, 5, 3], dtype=torch.int32)), "cu_seqlens_k must be non-decreasing"),
    (dict(cu_seqlens_k=cu([5])), "describe 2 and 1 sequences"),
])
def test_varlen_bad_lengths_are_errors(bad, message):
    q = randn(10, 2, HEADDIM)
    args = dict(cu_seqlens_q=cu([5, 5]), cu_seqlens_k=cu([5, 5]), max_seqlen_q=5, max_seqlen_k=5) | bad
    with pytest.raises(ValueError, match=message):
        fa.flash_attn_varlen_func(q, q, q, **args)


# --- flash_attn_with_kvcache ----------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths_as", ["tensor", "int"])
def test_kvcache_decode_token_by_token_equals_full_causal(lengths_as):
    batch, total, prefill, h, hk, cache_len = 2, 9, 4, 8, 2, 16
    q, k, v = randn(batch, total, h, HEADDIM, seed=1), randn(batch, total, hk, HEADDIM, seed=2), \
        randn(batch, total, hk, HEADDIM, seed=3)
    k_cache, v_cache = torch.zeros(batch, cache_len, hk, HEADDIM), torch.zeros(batch, cache_len, hk, HEADDIM)
    steps = [(0, prefill)] + [(t, t + 1) for t in range(prefill, total)]
    outs = []
    for start, end in steps:
        seqlens = torch.full((batch,), start, dtype=torch.int32) if lengths_as == "tensor" else start
        outs.append(fa.flash_attn_with_kvcache(q[:, start:end], k_cache, v_cache, k[:, start:end], v[:, start:end],
                                               cache_seqlens=seqlens, causal=True))
    assert max_err(torch.cat(outs, dim=1), naive(q, k, v, bottom_right(total, total)[None])) < FP32_TOL
    assert torch.equal(k_cache[:, :total], k) and torch.equal(v_cache[:, :total], v)  # written in place
    assert not k_cache[:, total:].any()  # and nowhere else


def test_kvcache_per_row_lengths_and_batch_idx():
    """Three rows at cache lengths 2, 5, 0 in a 4-row cache (rows 3, 0, 2), one new token each, no causal mask:
    each query sees exactly its row's old tokens plus the new one."""
    hk, lengths, rows = 2, [2, 5, 0], [3, 0, 2]
    k_cache, v_cache = randn(4, 8, hk, HEADDIM, seed=1), randn(4, 8, hk, HEADDIM, seed=2)
    old_k, old_v = k_cache.clone(), v_cache.clone()
    q, k, v = randn(3, 1, 8, HEADDIM, seed=3), randn(3, 1, hk, HEADDIM, seed=4), randn(3, 1, hk, HEADDIM, seed=5)
    out = fa.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=torch.tensor(lengths, dtype=torch.int32),
                                     cache_batch_idx=torch.tensor(rows, dtype=torch.int32))
    for b, (n, row) in enumerate(zip(lengths, rows)):
        keys = torch.cat((old_k[row, :n], k[b]))[None]
        values = torch.cat((old_v[row, :n], v[b]))[None]
        assert max_err(out[b:b + 1], naive(q[b:b + 1], keys, values)) < FP32_TOL
        assert torch.equal(k_cache[row, n], k[b, 0]) and torch.equal(v_cache[row, n], v[b, 0])
    assert torch.equal(k_cache[1], old_k[1])  # the row nobody uses is untouched


def test_kvcache_without_new_tokens_reads_the_cache():
    k_cache, v_cache = randn(2, 6, 2, HEADDIM, seed=1), randn(2, 6, 2, HEADDIM, seed=2)
    q = randn(2, 1, 4, HEADDIM, seed=3)
    out = fa.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=4)
    assert max_err(out, naive(q, k_cache[:, :4], v_cache[:, :4])) < FP32_TOL
    assert max_err(fa.flash_attn_with_kvcache(q, k_cache, v_cache), naive(q, k_cache, v_cache)) < FP32_TOL
    with pytest.raises(ValueError, match="need cache_seqlens"):
        fa.flash_attn_with_kvcache(q, k_cache, v_cache, k_cache[:, :1], v_cache[:, :1])
    with pytest.raises(ValueError, match="does not fit"):
        fa.flash_attn_with_kvcache(q, k_cache, v_cache, k_cache[:, :2], v_cache[:, :2], cache_seqlens=5)


# --- bert_padding ---------------------------------------------------------------------------------------------

def test_unpad_pad_round_trip_and_hand_built_indices():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    hidden = randn(4, 5, 3, 2)
    unpadded, indices, cu_seqlens, max_seqlen, seqused = fa.unpad_input(hidden, mask)
    assert indices.tolist() == [0, 1, 2, 10, 11, 12, 13, 14, 15]  # row-major positions of the 1s
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.tolist() == [0, 3, 3, 8, 9]
    assert max_seqlen == 5 and isinstance(max_seqlen, int) and seqused.tolist() == [3, 0, 5, 1]
    assert torch.equal(unpadded, hidden[mask])
    repadded = fa.pad_input(unpadded, indices, 4, 5)
    assert torch.equal(repadded, hidden * mask[..., None, None])
    assert torch.equal(fa.IndexFirstAxis.apply(hidden.flatten(0, 1), indices), unpadded)
    assert torch.equal(fa.index_first_axis(hidden.flatten(0, 1), indices), unpadded)


def test_unpad_unused_mask_is_kept_but_not_used():
    used = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    unused = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    _, indices, cu_seqlens, max_seqlen, seqused = fa.unpad_input(randn(2, 4, 3), used, unused)
    assert indices.tolist() == [0, 1, 2, 4, 5, 6, 7] and cu_seqlens.tolist() == [0, 3, 7]
    assert max_seqlen == 4 and seqused.tolist() == [2, 1]


def test_unpad_varlen_pad_equals_masked_attention():
    """The classic remote-code pattern: unpad q/k/v with the padding mask, varlen attention, pad back."""
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [1] * 5 + [0]], dtype=torch.bool)
    q, k, v = randn(3, 6, 8, HEADDIM, seed=1), randn(3, 6, 2, HEADDIM, seed=2), randn(3, 6, 2, HEADDIM, seed=3)
    q_u, idx, cu_q, max_q, _ = fa.unpad_input(q, mask)
    k_u, _, cu_k, max_k, _ = fa.unpad_input(k, mask)
    v_u = fa.unpad_input(v, mask)[0]
    out = fa.pad_input(fa.flash_attn_varlen_func(q_u, k_u, v_u, cu_q, cu_k, max_q, max_k, causal=True), idx, 3, 6)
    keep = mask[:, None, :] & bottom_right(6, 6)[None]
    ref = naive(q, k, v, keep) * mask[..., None, None]
    assert max_err(out, ref) < FP32_TOL


# --- rotary ---------------------------------------------------------------------------------------------------

def naive_rotary(x, cos, sin, positions, interleaved):
    """Rotate each pair (a, b) of the first rotary dims by angle atan2(sin, cos) at its position, in float64."""
    x = x.double().clone()
    half = cos.shape[-1]
    for b in range(x.shape[0]):
        for s in range(x.shape[1]):
            p = positions[b][s]
            c, n = (cos[p].double(), sin[p].double()) if p < cos.shape[0] else (torch.ones(half), torch.zeros(half))
            for i in range(half):
                ia, ib = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
                a, bb = x[b, s, :, ia].clone(), x[b, s, :, ib].clone()
                x[b, s, :, ia], x[b, s, :, ib] = a * c[i] - bb * n[i], bb * c[i] + a * n[i]
    return x


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("offsets", [0, 3, "tensor"])
def test_rotary_matches_naive(interleaved, offsets):
    x = randn(2, 5, 3, HEADDIM + 4, seed=1)  # rotary on the first 16 dims, the last 4 untouched
    angles = randn(9, HEADDIM // 2, seed=2)
    cos, sin = angles.cos(), angles.sin()
    offs = torch.tensor([1, 6], dtype=torch.int32) if offsets == "tensor" else offsets  # row 1 runs past the table
    positions = [[int(o) + s for s in range(5)] for o in (offs.tolist() if offsets == "tensor" else [offs] * 2)]
    out = fa.apply_rotary_emb(x, cos, sin, interleaved=interleaved, seqlen_offsets=offs)
    assert max_err(out, naive_rotary(x, cos, sin, positions, interleaved)) < FP32_TOL
    assert torch.equal(out[..., HEADDIM:], x[..., HEADDIM:])
    y = x.clone()
    assert fa.apply_rotary_emb(y, cos, sin, interleaved=interleaved, inplace=True, seqlen_offsets=offs) is y
    assert torch.equal(y, out)


# --- unsupported arguments ------------------------------------------------------------------------------------

def _q():
    return randn(1, 3, 2, HEADDIM)


@pytest.mark.parametrize("call, name", [
    (lambda: fa.flash_attn_func(_q(), _q(), _q(), dropout_p=0.1), "dropout_p"),
    (lambda: fa.flash_attn_func(_q(), _q(), _q(), window_size=(4, 0)), "window_size"),
    (lambda: fa.flash_attn_func(_q(), _q(), _q(), softcap=30.0), "softcap"),
    (lambda: fa.flash_attn_func(_q(), _q(), _q(), alibi_slopes=torch.ones(2)), "alibi_slopes"),
    (lambda: fa.flash_attn_func(_q(), _q(), _q(), return_attn_probs=True), "return_attn_probs"),
    (lambda: fa.flash_attn_varlen_func(_q()[0], _q()[0], _q()[0], cu([3]), cu([3]), 3, 3,
                                       block_table=torch.zeros(1, 1, dtype=torch.int32)), "block_table"),
    (lambda: fa.flash_attn_with_kvcache(_q(), _q(), _q(), rotary_cos=torch.ones(3, 8),
                                        rotary_sin=torch.zeros(3, 8)), "rotary_cos"),
    (lambda: fa.flash_attn_with_kvcache(_q(), _q(), _q(), cache_leftpad=torch.zeros(1, dtype=torch.int32)),
     "cache_leftpad"),
    (lambda: fa.flash_attn_with_kvcache(_q(), _q(), _q(), block_table=torch.zeros(1, 1, dtype=torch.int32)),
     "block_table"),
    (lambda: fa.flash_attn_with_kvcache(_q(), _q(), _q(), return_softmax_lse=True), "return_softmax_lse"),
    (lambda: fa.apply_rotary_emb(_q()[0], torch.ones(3, 8), torch.zeros(3, 8), cu_seqlens=cu([3])), "cu_seqlens"),
])
def test_unsupported_arguments_raise(call, name):
    with pytest.raises(NotImplementedError, match=f"^flash_attn_compat: {name}"):
        call()


def test_gqa_heads_must_divide():
    with pytest.raises(ValueError, match="multiple of nheads_k"):
        fa.flash_attn_func(randn(1, 3, 6, HEADDIM), randn(1, 3, 4, HEADDIM), randn(1, 3, 4, HEADDIM))


# --- install / uninstall --------------------------------------------------------------------------------------

REMOTE_CODE = '''
"""Stands for a model repository's modeling file: flash_attn imported at module top, used as is."""
import torch
from flash_attn import flash_attn_varlen_func
from flash_attn.bert_padding import pad_input, unpad_input


def attention(q, k, v, mask):
    batch, seqlen = mask.shape
    q_u, indices, cu_q, max_q, _ = unpad_input(q, mask)
    k_u, _, cu_k, max_k, _ = unpad_input(k, mask)
    v_u, *_ = unpad_input(v, mask)
    out = flash_attn_varlen_func(q_u, k_u, v_u, cu_q, cu_k, max_q, max_k, dropout_p=0.0, causal=True)
    return pad_input(out, indices, batch, seqlen)
'''

needs_no_real_flash_attn = pytest.mark.skipif(
    "flash_attn" not in sys.modules and importlib.util.find_spec("flash_attn") is not None,
    reason="a real flash_attn is installed here")


def import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_no_real_flash_attn
def test_unmodified_remote_code_imports_and_matches_naive(tmp_path, clean_modules):
    path = tmp_path / "modeling_remote.py"
    path.write_text(REMOTE_CODE)
    with pytest.raises(ModuleNotFoundError, match="flash_attn"):
        import_file(path, "modeling_remote")
    assert fa.install() is True and fa.install() is True  # idempotent
    remote = import_file(path, "modeling_remote")
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2], dtype=torch.bool)
    q, k, v = randn(2, 5, 4, HEADDIM, seed=1), randn(2, 5, 2, HEADDIM, seed=2), randn(2, 5, 2, HEADDIM, seed=3)
    ref = naive(q, k, v, mask[:, None, :] & bottom_right(5, 5)[None]) * mask[..., None, None]
    assert max_err(remote.attention(q, k, v, mask), ref) < FP32_TOL


@needs_no_real_flash_attn
def test_install_makes_imports_and_find_spec_work(clean_modules):
    fa.install()
    import flash_attn
    from flash_attn import flash_attn_varlen_func
    from flash_attn.bert_padding import pad_input, unpad_input
    from flash_attn.flash_attn_interface import flash_attn_with_kvcache
    from flash_attn.layers.rotary import apply_rotary_emb

    assert (flash_attn_varlen_func, unpad_input, pad_input) == (fa.flash_attn_varlen_func, fa.unpad_input,
                                                                  fa.pad_input)
    assert (flash_attn_with_kvcache, apply_rotary_emb) == (fa.flash_attn_with_kvcache, fa.apply_rotary_emb)
    assert flash_attn.__version__ == fa.FLASH_ATTN_VERSION
    assert version.parse(flash_attn.__version__) >= version.parse("2.7.0")  # callers' version gates pass
    assert importlib.util.find_spec("flash_attn").name == "flash_attn"
    assert importlib.util.find_spec("flash_attn.bert_padding") is not None
    with pytest.raises(ModuleNotFoundError):  # kernels that have no stand-in stay absent
        import flash_attn.ops.rms_norm  # noqa: F401


@needs_no_real_flash_attn
def test_transformers_check_imports_accepts_remote_code(tmp_path, clean_modules):
    path = tmp_path / "modeling_remote.py"
    path.write_text(REMOTE_CODE)
    with pytest.raises(ImportError, match="flash_attn"):
        check_imports(path)
    fa.install()
    assert check_imports(path) == []


@needs_no_real_flash_attn
def test_uninstall_restores_sys_modules(clean_modules):
    fa.install()
    assert fa.is_installed()
    assert fa.uninstall() is True and fa.uninstall() is False
    after = {n: m for n, m in sys.modules.items() if n == "flash_attn" or n.startswith("flash_attn.")}
    assert after == clean_modules and not fa.is_installed()
    assert importlib.util.find_spec("flash_attn") is None


def test_a_real_flash_attn_is_not_shadowed(tmp_path, monkeypatch, clean_modules):
    """A (fake) installed flash_attn on sys.path: install() leaves it alone; force=True replaces it, and uninstall()
    brings the imported real module back."""
    package = tmp_path / "flash_attn"
    package.mkdir()
    (package / "__init__.py").write_text("REAL = True\n__version__ = '2.8.3'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in list(sys.modules):
        if name == "flash_attn" or name.startswith("flash_attn."):
            monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()
    assert fa.install() is False and "flash_attn" not in sys.modules
    import flash_attn
    assert flash_attn.REAL and fa.install() is False and sys.modules["flash_attn"] is flash_attn
    assert fa.install(force=True) is True
    assert sys.modules["flash_attn"] is not flash_attn and sys.modules["flash_attn"].flash_attn_func
    fa.uninstall()
    assert sys.modules["flash_attn"] is flash_attn
