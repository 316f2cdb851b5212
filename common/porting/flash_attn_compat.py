"""A stand-in for the `flash_attn` package (flash-attn 2.x API) on torch's scaled_dot_product_attention (SDPA).

Remote model code often does `from flash_attn import flash_attn_varlen_func` at module top. flash-attn is a set
of NVIDIA-only kernels, so on Ascend NPU, MPS or CPU that import fails and the model cannot even load. `install()`
registers module objects under `flash_attn`, `flash_attn.flash_attn_interface`, `flash_attn.bert_padding` and
`flash_attn.layers.rotary` whose functions have flash-attn's signatures and semantics and run on SDPA, so the
unmodified remote code runs on any device torch runs on:

    from common.porting import flash_attn_compat
    flash_attn_compat.install()   # before the remote code is imported (AutoModel.from_pretrained(trust_remote_code))

Semantics follow flash-attn 2.7 (the version `__version__` claims, "2.7.4+sdpa"):
  * layouts: q (batch, seqlen_q, nheads, headdim), k/v (batch, seqlen_k, nheads_k, headdim); varlen: packed
    (total_tokens, nheads, headdim) with int32 cu_seqlens. GQA/MQA: query head h uses kv head h // (nheads/nheads_k).
  * causal with seqlen_q != seqlen_k is aligned to the bottom-right corner (flash-attn >= 2.1): query i sees keys
    j <= i + seqlen_k - seqlen_q. A query row that sees no key at all outputs zeros, as flash-attn's does.
  * `unpad_input` returns the 5-tuple of flash-attn >= 2.7.0 (hidden_states_unpad, indices, cu_seqlens,
    max_seqlen_in_batch, seqused); 2.6.x and older returned only the first four.
  * Computation is in the inputs' dtype (fp32/bf16/fp16), by whichever SDPA kernel the device has.
Unsupported, each a NotImplementedError naming the argument (never a silently different result): dropout_p > 0
(inference only), sliding windows (window_size other than (-1, -1)), softcap, alibi_slopes, return_attn_probs /
return_softmax_lse, paged KV (block_table), rotary inside flash_attn_with_kvcache, cache_leftpad, and
apply_rotary_emb with cu_seqlens. `deterministic` only concerns flash-attn's backward pass and is ignored.

What installing does NOT do: make transformers choose attn_implementation="flash_attention_2". transformers
decides that from the `flash-attn` distribution's metadata and a CUDA device, neither of which a module in
sys.modules provides; `importlib.util.find_spec("flash_attn")` does succeed (so transformers' `check_imports` of
remote code passes), but the layer is for code that calls flash_attn functions directly.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import torch
import torch.nn.functional as F

FLASH_ATTN_VERSION = "2.7.4+sdpa"  # the flash-attn API these functions follow; '+sdpa' marks the stand-in
# How flash_attn_varlen_func lays out the packed batch for SDPA: "auto" picks the cheaper of the two per call.
VARLEN_LAYOUT = "auto"  # "auto" | "padded" | "block_diagonal"
_MARKER = "__sdpa_compat__"  # attribute set on every module install() registers, so uninstall() removes only ours
_saved_modules: dict[str, types.ModuleType | None] = {}  # what install(force=True) replaced, for uninstall()


# --- argument checks ------------------------------------------------------------------------------------------

def _reject_unsupported(dropout_p=0.0, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                        return_attn_probs=False, block_table=None, **more) -> None:
    """Raise NotImplementedError naming the first argument that asks for a feature this layer does not have."""
    checks = {
        "dropout_p": (dropout_p > 0, "inference only: pass 0.0 (the model in eval mode)"),
        "window_size": (any(w >= 0 for w in tuple(window_size)), "sliding-window attention; only (-1, -1)"),
        "softcap": (softcap > 0, "logit soft-capping; only 0.0"),
        "alibi_slopes": (alibi_slopes is not None, "ALiBi; only None"),
        "return_attn_probs": (bool(return_attn_probs), "attention probabilities are never materialised"),
        "block_table": (block_table is not None, "paged KV cache; only None"),
    }
    checks.update(more)
    values = {"dropout_p": dropout_p, "window_size": window_size, "softcap": softcap,
              "alibi_slopes": "<tensor>" if alibi_slopes is not None else None,
              "return_attn_probs": return_attn_probs, "block_table": "<tensor>" if block_table is not None else None}
    for name, (bad, why) in checks.items():
        if bad:
            raise NotImplementedError(f"flash_attn_compat: {name}={values.get(name, '<given>')!r} is not "
                                      f"supported ({why})")


def _check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads_axis: int = -2) -> None:
    """flash-attn's GQA rule: nheads must be a multiple of nheads_k; k and v must agree."""
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[heads_axis] % k.shape[heads_axis]:
        raise ValueError(f"nheads ({q.shape[heads_axis]}) must be a multiple of nheads_k ({k.shape[heads_axis]})")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k head dims differ: {q.shape[-1]} vs {k.shape[-1]}")


# --- the one SDPA call everything goes through ----------------------------------------------------------------

def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None, scale: float,
            causal_square: bool = False) -> torch.Tensor:
    """SDPA on (B, H, Sq, D) / (B, Hk, Sk, D) with a boolean keep-mask broadcastable to (B, 1, Sq, Sk).

    Rows of `keep` with no True get zeros, like flash-attn; SDPA alone would give NaN (softmax over all -inf)
    on older torch versions, so those rows attend to everything and are zeroed afterwards.
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # GQA: repeat each kv head for its group of query heads (portable: no enable_gqa on old torch)
        k = k[:, :, None].expand(-1, -1, groups, -1, -1).flatten(1, 2)
        v = v[:, :, None].expand(-1, -1, groups, -1, -1).flatten(1, 2)
    if k.shape[2] == 0:  # no keys at all: every row is empty
        return q.new_zeros(*q.shape[:-1], v.shape[-1])
    if keep is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal_square, scale=scale)
    live = keep.any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep | ~live, scale=scale)
    return out.masked_fill(~live, 0.0)


def _bottom_right_causal(seqlen_q: int, seqlen_k: int, device) -> torch.Tensor:
    """(seqlen_q, seqlen_k) keep-mask: query i sees keys j <= i + seqlen_k - seqlen_q."""
    return torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device).tril(diagonal=seqlen_k - seqlen_q)


def _scale(q: torch.Tensor, softmax_scale) -> float:
    return q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)


# --- flash_attn.flash_attn_interface ----------------------------------------------------------------------------

def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """Attention over (batch, seqlen, nheads, headdim) tensors; returns (batch, seqlen_q, nheads, headdim)."""
    _reject_unsupported(dropout_p, window_size, softcap, alibi_slopes, return_attn_probs)
    _check_heads(q, k, v)
    seqlen_q, seqlen_k = q.shape[1], k.shape[1]
    # SDPA's is_causal is top-left aligned: right only when the matrix is square, else pass the mask explicitly.
    keep = _bottom_right_causal(seqlen_q, seqlen_k, q.device) if causal and seqlen_q != seqlen_k else None
    out = _attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), keep, _scale(q, softmax_scale),
                  causal_square=causal and seqlen_q == seqlen_k)
    return out.transpose(1, 2).contiguous()


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """qkv: (batch, seqlen, 3, nheads, headdim)."""
    q, k, v = qkv.unbind(dim=2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                           deterministic, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """kv: (batch, seqlen_k, 2, nheads_k, headdim)."""
    k, v = kv.unbind(dim=2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                           deterministic, return_attn_probs)


def _seqlens(cu_seqlens: torch.Tensor, total: int, max_seqlen: int, name: str) -> tuple[list[int], list[int]]:
    """Host-side starts and lengths from cu_seqlens, checked. One small device->host copy per call: it buys
    the check that max_seqlen really bounds every length (flash-attn trusts it and reads garbage otherwise)."""
    cu = [int(x) for x in cu_seqlens.tolist()]
    lens = [b - a for a, b in zip(cu, cu[1:])]
    if len(cu) < 2 or min(lens) < 0 or cu[0] < 0 or cu[-1] > total:
        raise ValueError(f"cu_seqlens_{name} must be non-decreasing from >= 0 to <= {total} tokens, got {cu}")
    if max(lens) > max_seqlen:
        raise ValueError(f"max_seqlen_{name}={max_seqlen} is smaller than the longest sequence ({max(lens)})")
    return cu[:-1], lens


def _token_positions(starts: list[int], lens: list[int], device) -> tuple[torch.Tensor, ...]:
    """For every packed token: its sequence number, its position in the sequence and its row in the packed tensor."""
    lens_t = torch.tensor(lens, device=device)
    seq = torch.repeat_interleave(torch.arange(len(lens), device=device), lens_t, output_size=sum(lens))
    first = torch.cumsum(lens_t, 0) - lens_t  # where each sequence starts among the selected tokens
    pos = torch.arange(sum(lens), device=device) - first[seq]
    row = torch.tensor(starts, device=device)[seq] + pos
    return seq, pos, row


def _varlen_padded(q, k, v, tq, tk, lens_q, lens_k, scale, causal):
    """Scatter the packed tokens into (batch, max_len) tensors, one SDPA call with a per-sequence mask, gather."""
    device, batch = q.device, len(lens_q)
    padded = []
    for x, (seq, pos, row), width in ((q, tq, max(lens_q)), (k, tk, max(lens_k)), (v, tk, max(lens_k))):
        buffer = x.new_zeros(batch, width, *x.shape[1:])
        buffer[seq, pos] = x[row]
        padded.append(buffer.transpose(1, 2))  # (batch, heads, width, headdim) for SDPA
    len_q = torch.tensor(lens_q, device=device).view(-1, 1, 1, 1)
    len_k = torch.tensor(lens_k, device=device).view(-1, 1, 1, 1)
    i = torch.arange(max(lens_q), device=device).view(-1, 1)
    j = torch.arange(max(lens_k), device=device).view(1, -1)
    keep = j < len_k  # padding keys never count
    if causal:  # bottom-right aligned within each sequence
        keep = keep & (j <= i + len_k - len_q)
    out = _attend(*padded, keep, scale).transpose(1, 2)  # (batch, max_len_q, heads, headdim)
    return out[tq[0], tq[1]]


def _varlen_block_diagonal(q, k, v, tq, tk, lens_q, lens_k, scale, causal):
    """All tokens as one sequence; a block-diagonal mask keeps each token inside its own sequence."""
    keep = tq[0][:, None] == tk[0][None, :]
    if causal:
        shift = (torch.tensor(lens_k, device=q.device) - torch.tensor(lens_q, device=q.device))[tq[0]]
        keep = keep & (tk[1][None, :] <= tq[1][:, None] + shift[:, None])
    packed = [x[row].transpose(0, 1)[None] for x, row in ((q, tq[2]), (k, tk[2]), (v, tk[2]))]
    return _attend(*packed, keep[None, None], scale)[0].transpose(0, 1)


def _varlen_layout(lens_q: list[int], lens_k: list[int]) -> str:
    """Padding costs batch x max_q x max_k scores, block-diagonal costs total_q x total_k. Padding wins for
    similar lengths (the usual case: a few images or prompts), block-diagonal for one long sequence among many
    short ones. Both give the same result; only the work and memory differ."""
    if VARLEN_LAYOUT != "auto":
        return VARLEN_LAYOUT
    padded = len(lens_q) * max(lens_q) * max(lens_k)
    return "padded" if padded <= sum(lens_q) * sum(lens_k) else "block_diagonal"


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """Attention over packed sequences: q (total_q, nheads, headdim), k/v (total_k, nheads_k, headdim), sequence b
    being rows cu_seqlens[b]:cu_seqlens[b+1]. Returns (total_q, nheads, headdim); rows outside every sequence
    and queries of a sequence with no keys are zeros (never NaN)."""
    _reject_unsupported(dropout_p, window_size, softcap, alibi_slopes, return_attn_probs, block_table)
    _check_heads(q, k, v)
    starts_q, lens_q = _seqlens(cu_seqlens_q, q.shape[0], max_seqlen_q, "q")
    starts_k, lens_k = _seqlens(cu_seqlens_k, k.shape[0], max_seqlen_k, "k")
    if len(lens_q) != len(lens_k):
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k describe {len(lens_q)} and {len(lens_k)} sequences")
    out = q.new_zeros(*q.shape[:-1], v.shape[-1])
    if sum(lens_q) == 0:
        return out
    tq, tk = _token_positions(starts_q, lens_q, q.device), _token_positions(starts_k, lens_k, k.device)
    layout = _varlen_layout(lens_q, lens_k)
    attend = {"padded": _varlen_padded, "block_diagonal": _varlen_block_diagonal}[layout]
    result = attend(q, k, v, tq, tk, lens_q, lens_k, _scale(q, softmax_scale), causal)
    if starts_q[0] == 0 and sum(lens_q) == q.shape[0]:  # the sequences tile q exactly: no scatter needed
        return result
    out[tq[2]] = result
    return out


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """qkv: (total, 3, nheads, headdim)."""
    q, k, v = qkv.unbind(dim=1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, softmax_scale,
                                  causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """kv: (total_k, 2, nheads_k, headdim)."""
    k, v = kv.unbind(dim=1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                  softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs)


def _cache_lengths(cache_seqlens, batch: int, seqlen_cache: int, new: int, device) -> tuple[torch.Tensor, int]:
    """Per-row cache lengths before the new tokens, and how many cache positions attention must look at.
    An int length is known on the host, so the cache is cut to it; a tensor is not (no device sync), so the
    whole cache is read and masked."""
    if cache_seqlens is None:
        if new:
            raise ValueError("flash_attn_with_kvcache: k and v need cache_seqlens (where to write them)")
        return torch.full((batch,), seqlen_cache, device=device), seqlen_cache
    if isinstance(cache_seqlens, int):
        if cache_seqlens < 0 or cache_seqlens + new > seqlen_cache:
            raise ValueError(f"cache_seqlens={cache_seqlens} + {new} new tokens does not fit a cache of "
                             f"{seqlen_cache} positions")
        return torch.full((batch,), cache_seqlens, device=device), cache_seqlens + new
    return cache_seqlens.to(device=device, dtype=torch.long).reshape(batch), seqlen_cache


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """Incremental decoding: writes k/v (batch, seqlen_new, nheads_k, headdim) into the caches in place at
    cache_seqlens, then attends q over cache[:cache_seqlens + seqlen_new]. Returns (batch, seqlen_q, nheads, headdim).
    num_splits is a kernel tuning knob and is ignored."""
    _reject_unsupported(window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes, block_table=block_table,
                        rotary_cos=(rotary_cos is not None or rotary_sin is not None,
                                    "rotary inside the kernel; rotate q and k before the call"),
                        cache_leftpad=(cache_leftpad is not None, "left-padded caches; only None"),
                        return_softmax_lse=(bool(return_softmax_lse), "the log-sum-exp is never materialised"))
    _check_heads(q, k_cache, v_cache)
    if (k is None) != (v is None):
        raise ValueError("flash_attn_with_kvcache: pass both k and v, or neither")
    batch, seqlen_q, device = q.shape[0], q.shape[1], q.device
    new = 0 if k is None else k.shape[1]
    lens, limit = _cache_lengths(cache_seqlens, batch, k_cache.shape[1], new, device)
    rows = torch.arange(batch, device=device) if cache_batch_idx is None else cache_batch_idx.to(device).long()
    if new:  # in place, like the kernel: the caller's cache holds the new tokens afterwards
        at = lens[:, None] + torch.arange(new, device=device)
        k_cache[rows[:, None], at] = k.to(k_cache.dtype)
        v_cache[rows[:, None], at] = v.to(v_cache.dtype)
    if cache_batch_idx is None:  # rows 0..batch-1: views, no copy of the cache per call
        keys, values = k_cache[:batch, :limit], v_cache[:batch, :limit]
    else:
        keys, values = k_cache[rows, :limit], v_cache[rows, :limit]
    seen = (lens + new).view(-1, 1, 1, 1)  # keys each row may see
    j = torch.arange(limit, device=device).view(1, -1)
    keep = j < seen
    if causal:
        keep = keep & (j <= torch.arange(seqlen_q, device=device).view(-1, 1) + seen - seqlen_q)
    out = _attend(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), keep, _scale(q, softmax_scale))
    return out.transpose(1, 2).contiguous()


# --- flash_attn.bert_padding ----------------------------------------------------------------------------------

def index_first_axis(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """x[indices]. The real one is `IndexFirstAxis.apply`, a hand-written autograd Function; plain indexing is
    differentiable already."""
    return x[indices]


def index_put_first_axis(values: torch.Tensor, indices: torch.Tensor, first_axis_dim: int) -> torch.Tensor:
    """A zero tensor of first_axis_dim rows with `values` at rows `indices`."""
    out = values.new_zeros(first_axis_dim, *values.shape[1:])
    out[indices] = values
    return out


class IndexFirstAxis:
    """Only `.apply` of the real autograd.Function is ever called; it is the plain function here."""

    apply = staticmethod(index_first_axis)


class IndexPutFirstAxis:
    apply = staticmethod(index_put_first_axis)


def unpad_input(hidden_states, attention_mask, unused_mask=None):
    """(batch, seqlen, ...) + (batch, seqlen) mask -> the flash-attn >= 2.7.0 5-tuple:
    (hidden_states_unpad (total, ...), indices (total,) into the flattened batch, cu_seqlens (batch + 1,) int32,
    max_seqlen_in_batch (int), seqused (batch,) int32: tokens selected by attention_mask alone).
    Tokens in unused_mask are kept (counted in cu_seqlens) but not in seqused."""
    all_masks = attention_mask + unused_mask if unused_mask is not None else attention_mask
    seqlens = all_masks.sum(dim=-1, dtype=torch.int32)
    used = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    return index_first_axis(hidden_states.flatten(0, 1), indices), indices, cu_seqlens, int(seqlens.max()), used


def pad_input(hidden_states, indices, batch, seqlen):
    """Inverse of unpad_input: (total, ...) -> (batch, seqlen, ...), zeros where nothing was selected."""
    return index_put_first_axis(hidden_states, indices, batch * seqlen).unflatten(0, (batch, seqlen))


# --- flash_attn.layers.rotary ---------------------------------------------------------------------------------

def _rotary_tables(cos, sin, seqlen: int, offsets, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin rows for positions offset + 0..seqlen-1, shaped to broadcast over (batch, seqlen, heads, dim/2).
    Like the kernel: an int offset must fit the table; tensor offsets past its end rotate by nothing."""
    if isinstance(offsets, int):
        if offsets + seqlen > cos.shape[0]:
            raise ValueError(f"rotary tables have {cos.shape[0]} positions, need {offsets + seqlen}")
        return cos[offsets:offsets + seqlen, None].float(), sin[offsets:offsets + seqlen, None].float()
    pos = offsets.to(device=device, dtype=torch.long)[:, None] + torch.arange(seqlen, device=device)
    inside = (pos < cos.shape[0])[..., None, None]
    pos = pos.clamp(max=cos.shape[0] - 1)
    return (torch.where(inside, cos[pos][:, :, None].float(), 1.0),
            torch.where(inside, sin[pos][:, :, None].float(), 0.0))


def apply_rotary_emb(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0, cu_seqlens=None,
                     max_seqlen=None):
    """Rotary embedding on the first 2 * cos.shape[-1] dims of x (batch, seqlen, nheads, headdim); cos/sin
    (seqlen_rotary, rotary_dim / 2). GPT-NeoX halves, or GPT-J even/odd pairs when interleaved. fp32 math."""
    if cu_seqlens is not None:
        raise NotImplementedError("flash_attn_compat: cu_seqlens in apply_rotary_emb is not supported "
                                  "(rotate the padded (batch, seqlen, ...) tensor)")
    dim = 2 * cos.shape[-1]
    if dim > x.shape[-1]:
        raise ValueError(f"rotary dim {dim} is larger than the head dim {x.shape[-1]}")
    c, s = _rotary_tables(cos, sin, x.shape[1], seqlen_offsets, x.device)
    part = x[..., :dim].float()
    if interleaved:
        c, s = c.repeat_interleave(2, dim=-1), s.repeat_interleave(2, dim=-1)
        rotated = torch.stack((-part[..., 1::2], part[..., 0::2]), dim=-1).flatten(-2)
    else:
        c, s = torch.cat((c, c), dim=-1), torch.cat((s, s), dim=-1)
        half = part.chunk(2, dim=-1)
        rotated = torch.cat((-half[1], half[0]), dim=-1)
    result = (part * c + rotated * s).to(x.dtype)
    if inplace:
        x[..., :dim] = result
        return x
    return torch.cat((result, x[..., dim:]), dim=-1)


apply_rotary_emb_func = apply_rotary_emb  # the real module's backward-compatible alias


# --- install / uninstall --------------------------------------------------------------------------------------

_INTERFACE = ("flash_attn_func", "flash_attn_kvpacked_func", "flash_attn_qkvpacked_func", "flash_attn_varlen_func",
              "flash_attn_varlen_kvpacked_func", "flash_attn_varlen_qkvpacked_func", "flash_attn_with_kvcache")
# module name -> (is a package, names it exports); the submodules remote code imports from. flash_attn.ops.* and
# flash_attn.modules.* (Triton/CUDA kernels, fused layers) are deliberately absent: importing them stays an error.
_MODULES = {
    "flash_attn": (True, _INTERFACE),
    "flash_attn.flash_attn_interface": (False, _INTERFACE),
    "flash_attn.bert_padding": (False, ("unpad_input", "pad_input", "index_first_axis", "index_put_first_axis",
                                        "IndexFirstAxis", "IndexPutFirstAxis")),
    "flash_attn.layers": (True, ()),
    "flash_attn.layers.rotary": (False, ("apply_rotary_emb", "apply_rotary_emb_func")),
}


def _make_module(name: str, package: bool, names: tuple) -> types.ModuleType:
    """A module object with a real ModuleSpec, so importlib.util.find_spec(name) finds it in sys.modules."""
    module = types.ModuleType(name, f"{name} on torch SDPA (common/porting/flash_attn_compat.py), not the real flash-attn.")
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=__file__, is_package=package)
    module.__loader__, module.__file__ = None, __file__
    module.__package__ = name if package else name.rpartition(".")[0]
    if package:
        module.__path__ = []  # a package with no folder: unknown submodules fail to import, as they should
    setattr(module, _MARKER, True)
    for attr in names:
        setattr(module, attr, globals()[attr])
    return module


def is_installed() -> bool:
    """Whether sys.modules['flash_attn'] is this stand-in."""
    return getattr(sys.modules.get("flash_attn"), _MARKER, False)


def install(force: bool = False) -> bool:
    """Register the stand-in modules in sys.modules. Idempotent. A real flash_attn (installed or imported) is left
    alone and False returned, unless force=True (e.g. a flash-attn wheel that is installed but cannot load here).
    Returns whether the stand-in is in place."""
    if is_installed():
        return True
    if not force and ("flash_attn" in sys.modules or importlib.util.find_spec("flash_attn") is not None):
        return False
    for name in [n for n in sys.modules if n == "flash_attn" or n.startswith("flash_attn.")]:
        _saved_modules[name] = sys.modules.pop(name)  # a forced install hides the real package and its submodules
    modules = {name: _make_module(name, package, names) for name, (package, names) in _MODULES.items()}
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)  # `import flash_attn.bert_padding` binds it on the parent
    modules["flash_attn"].__version__ = FLASH_ATTN_VERSION
    sys.modules.update(modules)
    return True


def uninstall() -> bool:
    """Remove the stand-in modules and put back whatever a forced install replaced. Returns whether any was there.
    Code that already did `from flash_attn import ...` keeps its references."""
    ours = [n for n, m in list(sys.modules.items())
            if (n == "flash_attn" or n.startswith("flash_attn.")) and getattr(m, _MARKER, False)]
    for name in ours:
        del sys.modules[name]
    sys.modules.update(_saved_modules)
    _saved_modules.clear()
    return bool(ours)


__all__ = [*_INTERFACE, "unpad_input", "pad_input", "index_first_axis", "index_put_first_axis", "apply_rotary_emb",
           "install", "uninstall", "is_installed", "FLASH_ATTN_VERSION"]
