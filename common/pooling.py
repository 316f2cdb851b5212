"""Pooling token states into one vector per text, with the padding mask respected."""
from __future__ import annotations

import torch


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the non-padding tokens. hidden (B, L, H), mask (B, L) of 0/1 -> (B, H), computed in float32."""
    mask = attention_mask.unsqueeze(-1).bool()
    # masked_fill, not multiply: inf or NaN at a padding position (an fp16 overflow) must not leak (inf*0 = NaN)
    summed = hidden.to(torch.float32).masked_fill(~mask, 0.0).sum(dim=1)
    # clamp: an all-padding row (should not happen) gives zeros rather than NaN
    return summed / mask.sum(dim=1).to(torch.float32).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The first token's state (BERT's [CLS]); right padding assumed, so position 0 is always real."""
    return hidden[:, 0].to(torch.float32)


def max_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Element-wise max over the non-padding tokens (padding set to -inf first so it can never win)."""
    mask = attention_mask.unsqueeze(-1).bool()
    filled = hidden.to(torch.float32).masked_fill(~mask, float("-inf"))
    return filled.max(dim=1).values


POOLERS = {"mean": mean_pool, "cls": cls_pool, "max": max_pool}


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Unit length rows; eps keeps a zero row at zero instead of NaN."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)
