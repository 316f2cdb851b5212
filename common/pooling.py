"""Pooling token states into one vector per text, with the padding mask respected.

The modes and their math are those of sentence-transformers' `Pooling` module (v6), so a port that reads a
checkpoint's pooling config gets the vectors `SentenceTransformer.encode` gives:

    cls                   the first non-padding token (position 0 with right padding, later with left padding)
    max                   element-wise max over the real tokens
    mean                  average of the real tokens
    mean_sqrt_len_tokens  sum of the real tokens / sqrt(their count)
    weightedmean          average weighted by position 1, 2, 3, ... counted from the first real token
    lasttoken             the last real token (right padding) or the last position (left padding)

Several modes are concatenated in the order given. Every pooler works in float32 whatever the model's dtype (the
same as sentence-transformers for fp32 models; for 16-bit states it avoids overflow in the sums), and padding
positions are masked with masked_fill, never multiplied by 0, so an inf/NaN there (an fp16 overflow) cannot leak.
"""
from __future__ import annotations

import torch

# sentence-transformers' legacy boolean keys (1_Pooling/config.json before v5.2) in its concatenation order.
LEGACY_MODE_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def _real(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) mask of 0/1 (any dtype) -> (B, L, 1) bool."""
    return attention_mask.unsqueeze(-1).bool()


def _first_real(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's first non-padding position (0 for an all-padding row, as argmax gives)."""
    return attention_mask.to(torch.int32).argmax(dim=1)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the non-padding tokens. hidden (B, L, H), mask (B, L) of 0/1 -> (B, H), computed in float32."""
    mask = _real(attention_mask)
    summed = hidden.to(torch.float32).masked_fill(~mask, 0.0).sum(dim=1)
    # clamp as sentence-transformers does: an all-padding row gives zeros rather than NaN
    return summed / mask.sum(dim=1).to(torch.float32).clamp(min=1e-9)


def mean_sqrt_len_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the non-padding tokens divided by the square root of their count."""
    mask = _real(attention_mask)
    summed = hidden.to(torch.float32).masked_fill(~mask, 0.0).sum(dim=1)
    return summed / torch.sqrt(mask.sum(dim=1).to(torch.float32).clamp(min=1e-9))


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The first non-padding token's state (BERT's [CLS]); without a mask, position 0."""
    if attention_mask is None:
        return hidden[:, 0].to(torch.float32)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, _first_real(attention_mask).to(hidden.device)].to(torch.float32)


def max_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Element-wise max over the non-padding tokens (padding set to -inf first so it can never win)."""
    filled = hidden.to(torch.float32).masked_fill(~_real(attention_mask), float("-inf"))
    return filled.max(dim=1).values


def weightedmean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor,
                      padded_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Average weighted by position: the first real token weighs 1, the next 2, ... (SGPT's weighted mean).
    Positions count from the first non-padding token of `padded_mask` (the batch's padding mask; it differs from
    `attention_mask` when prompt tokens are excluded, which keep their weights out of the average)."""
    padded_mask = attention_mask if padded_mask is None else padded_mask
    positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=torch.float32).view(1, -1)
    weights = (positions - _first_real(padded_mask).view(-1, 1).to(torch.float32)).unsqueeze(-1)
    weights = weights.masked_fill(~_real(attention_mask), 0.0)
    summed = (hidden.to(torch.float32).masked_fill(~_real(attention_mask), 0.0) * weights).sum(dim=1)
    return summed / weights.sum(dim=1).clamp(min=1e-9)


def lasttoken_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last non-padding token's state: with right padding the last real one, with left padding the last
    position. A row with no real token gives zeros (sentence-transformers takes the masked last position)."""
    seq_len = hidden.shape[1]
    found, from_end = attention_mask.flip(1).max(dim=1)
    from_end = torch.where(found == 0, torch.zeros_like(from_end), from_end)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    picked = hidden[rows, (seq_len - 1 - from_end).to(hidden.device)].to(torch.float32)
    return picked * (found != 0).unsqueeze(-1).to(torch.float32)


POOLERS = {"cls": cls_pool, "max": max_pool, "mean": mean_pool, "mean_sqrt_len_tokens": mean_sqrt_len_pool,
           "weightedmean": weightedmean_pool, "lasttoken": lasttoken_pool}


def exclude_prompt(attention_mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """A copy of the mask with each row's first `prompt_length` real positions zeroed (the prompt, its leading
    special token included), as sentence-transformers does for `include_prompt: false`."""
    mask = attention_mask.clone()
    start = _first_real(attention_mask)  # 0 with right padding, the pad count with left padding
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    mask[positions < (start + prompt_length).unsqueeze(1)] = 0
    return mask


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, modes: list[str] | tuple[str, ...],
         prompt_length: int | None = None) -> torch.Tensor:
    """Each mode's vector, concatenated in the order of `modes`: (B, L, H) -> (B, len(modes) * H) float32.
    `prompt_length`: leave the first that many tokens (a prompt) out of every mode."""
    mask = exclude_prompt(attention_mask, prompt_length) if prompt_length else attention_mask
    parts = []
    for mode in modes:
        if mode == "weightedmean":
            parts.append(weightedmean_pool(hidden, mask, padded_mask=attention_mask))
        else:
            parts.append(POOLERS[mode](hidden, mask))
    return torch.cat(parts, dim=-1)


def pooling_modes(config: dict) -> list[str]:
    """The modes a sentence-transformers pooling config asks for, in concatenation order. Reads both formats:
    v5.2+ `{"pooling_mode": "cls" | [...]}` and the legacy booleans `{"pooling_mode_cls_token": true, ...}` (no
    mode set: mean, like sentence-transformers). Raises ValueError for an unknown mode."""
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        modes = [raw] if isinstance(raw, str) else list(raw)
    else:
        modes = [mode for key, mode in LEGACY_MODE_KEYS.items() if config.get(key, False)] or ["mean"]
    unknown = [m for m in modes if m not in POOLERS]
    if unknown or not modes:
        raise ValueError(f"unknown pooling mode(s) {unknown or modes!r}; known: {', '.join(POOLERS)}")
    return modes


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Unit length rows; eps keeps a zero row at zero instead of NaN (torch.nn.functional.normalize's rule)."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)
