"""common.pooling: the padding mask must be respected by every pooler, every mode must give what
sentence-transformers' Pooling module gives (both padding sides, prompt excluded or not), and normalisation must
be NaN-free."""
from __future__ import annotations

import pytest
import torch
from sentence_transformers.sentence_transformer.modules import Pooling

from common.pooling import (
    POOLERS,
    cls_pool,
    exclude_prompt,
    l2_normalize,
    lasttoken_pool,
    max_pool,
    mean_pool,
    pool,
    pooling_modes,
    weightedmean_pool,
)

HUGE = 1e30

# batch of 2, 4 positions, hidden 3; row 0 has 2 real tokens, row 1 has 4 (no padding)
MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
HIDDEN = torch.tensor([
    [[1.0, 2.0, 3.0], [3.0, -2.0, 5.0], [HUGE, HUGE, HUGE], [HUGE, -HUGE, HUGE]],
    [[0.0, 1.0, -1.0], [2.0, 1.0, 1.0], [4.0, 1.0, 0.0], [6.0, 1.0, 8.0]],
])


def test_mean_pool_averages_real_tokens_only():
    pooled = mean_pool(HIDDEN, MASK)
    expected = torch.tensor([[(1 + 3) / 2, (2 - 2) / 2, (3 + 5) / 2],
                             [(0 + 2 + 4 + 6) / 4, 1.0, (-1 + 1 + 0 + 8) / 4]])
    assert pooled.dtype == torch.float32
    assert pooled.shape == (2, 3)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-6)


def test_mean_pool_ignores_padding_values_whatever_they_are():
    other = HIDDEN.clone()
    other[0, 2:] = -7.0
    torch.testing.assert_close(mean_pool(HIDDEN, MASK), mean_pool(other, MASK), rtol=0, atol=0)
    assert mean_pool(HIDDEN, MASK).abs().max() < 10


def test_mean_pool_low_precision_input_computed_in_fp32():
    hidden = HIDDEN.clone()
    hidden[0, 2:] = 60000.0  # near the fp16 maximum: a sum in fp16 would overflow to inf
    hidden[1] = 60000.0
    pooled = mean_pool(hidden.to(torch.float16), MASK)
    assert pooled.dtype == torch.float32
    assert torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled[1], torch.full((3,), 60000.0))


def test_mean_pool_mask_dtypes_agree():
    for mask in (MASK.bool(), MASK.to(torch.int32), MASK.float()):
        torch.testing.assert_close(mean_pool(HIDDEN, mask), mean_pool(HIDDEN, MASK), rtol=0, atol=0)


def test_mean_pool_all_padding_row_is_zero_not_nan():
    mask = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])
    pooled = mean_pool(HIDDEN, mask)
    assert torch.equal(pooled[0], torch.zeros(3))


def test_mean_pool_nonfinite_padding_does_not_leak():
    hidden = HIDDEN.clone()
    hidden[0, 2] = float("inf")
    hidden[0, 3] = float("nan")
    pooled = mean_pool(hidden, MASK)
    torch.testing.assert_close(pooled, mean_pool(HIDDEN, MASK))


def test_cls_pool_takes_position_zero():
    pooled = cls_pool(HIDDEN.to(torch.bfloat16), MASK)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, -1.0]]), rtol=0, atol=0)
    torch.testing.assert_close(cls_pool(HIDDEN), pooled, rtol=0, atol=0)  # mask is optional


def test_max_pool_ignores_larger_padding():
    pooled = max_pool(HIDDEN, MASK)
    expected = torch.tensor([[3.0, 2.0, 5.0], [6.0, 1.0, 8.0]])
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


def test_max_pool_all_negative_real_tokens_beat_padding():
    hidden = -torch.arange(1.0, 25.0).reshape(2, 4, 3)  # all negative
    hidden[0, 2:] = 0.0  # padding (0) is larger than every real value in row 0
    pooled = max_pool(hidden, MASK)
    torch.testing.assert_close(pooled[0], torch.maximum(hidden[0, 0], hidden[0, 1]), rtol=0, atol=0)
    torch.testing.assert_close(pooled[1], hidden[1].max(dim=0).values, rtol=0, atol=0)


def test_poolers_registry_has_every_sentence_transformers_mode():
    assert set(POOLERS) == set(Pooling.POOLING_MODES)
    assert POOLERS["mean"] is mean_pool and POOLERS["cls"] is cls_pool and POOLERS["max"] is max_pool


def test_cls_pool_takes_the_first_real_token_with_left_padding():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    torch.testing.assert_close(cls_pool(HIDDEN, mask), torch.stack([HIDDEN[0, 2], HIDDEN[1, 0]]), rtol=0, atol=0)


def test_lasttoken_pool_right_and_left_padding():
    torch.testing.assert_close(lasttoken_pool(HIDDEN, MASK), torch.stack([HIDDEN[0, 1], HIDDEN[1, 3]]))
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    torch.testing.assert_close(lasttoken_pool(HIDDEN, left), torch.stack([HIDDEN[0, 3], HIDDEN[1, 3]]))


def test_weightedmean_weights_count_from_the_first_real_token():
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    expected = (1 * HIDDEN[0, 2] + 2 * HIDDEN[0, 3]) / 3
    torch.testing.assert_close(weightedmean_pool(HIDDEN, left)[0], expected)
    torch.testing.assert_close(weightedmean_pool(HIDDEN, MASK)[0], (1 * HIDDEN[0, 0] + 2 * HIDDEN[0, 1]) / 3)


def test_exclude_prompt_zeroes_the_first_real_positions():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert exclude_prompt(right, 2).tolist() == [[0, 0, 1, 0], [0, 0, 1, 1]]
    assert exclude_prompt(left, 2).tolist() == [[0, 0, 0, 1], [0, 0, 1, 1]]
    assert right.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]  # the caller's mask is untouched


def test_pooling_modes_reads_both_config_formats():
    assert pooling_modes({"embedding_dimension": 8, "pooling_mode": "cls"}) == ["cls"]
    assert pooling_modes({"pooling_mode": ["mean", "cls"]}) == ["mean", "cls"]  # the stored order is kept
    legacy = {"word_embedding_dimension": 8, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True,
              "pooling_mode_max_tokens": False}
    assert pooling_modes(legacy) == ["cls", "mean"]  # sentence-transformers' fixed legacy order
    assert pooling_modes({"word_embedding_dimension": 8, "pooling_mode_cls_token": False}) == ["mean"]
    with pytest.raises(ValueError, match="median"):
        pooling_modes({"pooling_mode": "median"})


MODE_SETS = [["cls"], ["max"], ["mean"], ["mean_sqrt_len_tokens"], ["weightedmean"], ["lasttoken"],
             ["mean", "cls"], ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]]


@pytest.mark.parametrize("modes", MODE_SETS, ids=["+".join(m) for m in MODE_SETS])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("prompt_length", [None, 2])
def test_pool_matches_sentence_transformers_pooling(modes, side, prompt_length):
    """The same numbers as sentence-transformers' own Pooling.forward on random states and ragged masks."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 7, 6, generator=generator)
    lengths = [7, 4, 3, 6, 5]
    mask = torch.zeros(5, 7, dtype=torch.int64)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    if side == "left":
        mask = mask.flip(1)
    features = {"token_embeddings": hidden, "attention_mask": mask}
    if prompt_length:
        features["prompt_length"] = prompt_length
    module = Pooling(6, modes[0] if len(modes) == 1 else modes, include_prompt=prompt_length is None)
    want = module(features)["sentence_embedding"]
    got = pool(hidden, mask, modes, prompt_length)
    assert got.shape == want.shape == (5, 6 * len(modes))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_l2_normalize_unit_rows_and_zero_row():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1e-3, 0.0], [1e3, -1e3]])
    y = l2_normalize(x)
    assert not torch.isnan(y).any()
    torch.testing.assert_close(y[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(y[1], torch.zeros(2))
    torch.testing.assert_close(y[2], torch.tensor([-1.0, 0.0]))
    torch.testing.assert_close(y.norm(dim=-1), torch.tensor([1.0, 0.0, 1.0, 1.0]))


def test_l2_normalize_3d_uses_last_axis():
    x = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    y = l2_normalize(x)
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(2, 5))
    torch.testing.assert_close(y * x.norm(dim=-1, keepdim=True), x)
