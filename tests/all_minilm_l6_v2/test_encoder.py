"""all-MiniLM-L6-v2 on the real embedded weights: same numbers as sentence-transformers, batching, truncation."""
from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from tests.support import load_script

FOLDER = "all-MiniLM-L6-v2"
TEXTS = [
    "A man is eating food.",
    "Un homme mange du pain.",
    "今天天气很好，我们去公园散步吧。",
    "Numbers 3.14, 2,718 and -42; punctuation!?",
    "x",
    " ".join(["The committee reviewed the proposal carefully before the vote."] * 40),  # > 256 tokens
    "A man is eating a piece of bread.",
]


@pytest.fixture(scope="module")
def inference():
    return load_script(FOLDER, "inference")


@pytest.fixture(scope="module")
def encoder(inference):
    return inference.MiniLMEncoder(device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def sentence_transformer(encoder):
    return SentenceTransformer(str(encoder.model_dir), device="cpu")


@pytest.mark.slow
def test_embeddings_match_sentence_transformers(encoder, sentence_transformer):
    ours = encoder.encode(TEXTS, batch_size=3)
    peer = sentence_transformer.encode(TEXTS, batch_size=3, normalize_embeddings=True, convert_to_numpy=True)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    assert np.abs(ours - peer).max() <= 1e-5
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_semantics_survive_the_port(encoder):
    """Paraphrases score above unrelated pairs: the weights really are the trained model, not random ones."""
    v = encoder.encode(["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."])
    assert v[0] @ v[1] > 0.6 > v[0] @ v[2] + 0.4


@pytest.mark.slow
def test_batch_size_and_order_do_not_change_results(encoder):
    one = encoder.encode(TEXTS, batch_size=1)
    many = encoder.encode(TEXTS, batch_size=64)
    reversed_order = encoder.encode(TEXTS[::-1], batch_size=4)[::-1]
    assert np.abs(one - many).max() <= 1e-5
    assert np.abs(one - reversed_order).max() <= 1e-5


def test_truncation_is_counted_and_matches_tokenizer(encoder):
    ids, truncated = encoder.tokenize(TEXTS)
    assert truncated == 1
    assert max(len(s) for s in ids) == 256
    reference = encoder.tokenizer(TEXTS[5], truncation=True, max_length=256)["input_ids"]
    assert ids[5] == reference
    encoder.encode(TEXTS)
    stats = encoder.last_stats
    assert stats["truncated"] == 1 and stats["texts"] == len(TEXTS) and stats["nonfinite_rows"] == 0
    assert stats["padded_tokens"] >= stats["tokens"] == sum(len(s) for s in ids)


@pytest.mark.slow
def test_token_count_batching_pads_less_than_character_sorting(encoder):
    """The speed lever: batches by token count pad fewer tokens than sentence-transformers' character sort."""
    bench = load_script(FOLDER, "benchmark")
    texts = bench.synthetic_texts(512)
    encoder.encode(texts, batch_size=32)
    ours_padded = encoder.last_stats["padded_tokens"]
    ids, _ = encoder.tokenize(texts)
    by_chars = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    st_padded = sum(len(b) * max(len(ids[i]) for i in b) for b in
                    (by_chars[i:i + 32] for i in range(0, len(texts), 32)))
    assert ours_padded < st_padded


def test_empty_list_and_single_string(encoder):
    assert encoder.encode([]).shape == (0, 384)
    assert encoder.encode("just one").shape == (1, 384)


@pytest.mark.slow
def test_bf16_path_close_to_fp32(inference, encoder):
    bf16 = inference.MiniLMEncoder(device="cpu", dtype="bf16")
    a, b = bf16.encode(TEXTS), encoder.encode(TEXTS)
    cosine = (a * b).sum(1)
    assert cosine.mean() >= 0.9999 and cosine.min() >= 0.999
