"""The T5 folder on other T5-family checkpoints, built here as tiny seeded random models (no hub):

* t5-v1.0: ReLU feed-forward, lm_head tied to the embedding with the d_model**-0.5 rescale, and config.json in the
  hub's t5-small format (no feed_forward_proj, no tie_word_embeddings, architectures ["T5WithLMHeadModel"]);
* mt5: MT5ForConditionalGeneration (model_type "mt5"), a vocabulary without T5's sentinels, an embedding size that is
  not a multiple of 64, and config.json as current transformers writes it;
* wide: other width, heads, head size (heads x d_kv != d_model), 3 encoder + 1 decoder layers, 8 position buckets,
  gated-SiLU feed-forward;
* byt5: the byte-level ByT5Tokenizer (no tokenizer.json, ids are bytes).

Each runs through the inference CLI, eval_accuracy (fp32 PASS), the benchmark (both sides count the same new
tokens) and memory_estimate --model_path (the formula equals the real parameter count). Before the generality fixes
the benchmark test failed on t5-v1.0 (the peer counted 0 new tokens: it counted "not <pad>" and the tied model
emits <pad>), memory_estimate had no --model_path (and assumed gated + untied + vocab 32128), and a checkpoint with
only spiece.model failed with a misleading tiktoken error.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import struct

import pytest
import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    ByT5Tokenizer,
    MT5Config,
    MT5ForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
    T5Tokenizer,
)

from common.results import mark_test_checkpoint
from tests.support import T5_FOLDER, load_script

VARIANTS = ("t5-v1.0", "mt5", "wide", "byt5")
LAYOUT = {  # what inference.describe must report for each variant
    "t5-v1.0": ("t5,", "relu", "tied lm_head"), "mt5": ("mt5,", "gated-gelu", "untied lm_head"),
    "wide": ("t5,", "gated-silu", "untied lm_head"), "byt5": ("t5,", "gated-gelu", "untied lm_head"),
}
SPECIALS = dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
T5_SMALL_CONFIG_KEYS = ("d_ff", "d_kv", "d_model", "decoder_start_token_id", "dropout_rate", "eos_token_id",
                        "initializer_factor", "is_encoder_decoder", "layer_norm_epsilon", "model_type", "num_heads",
                        "num_layers", "pad_token_id", "relative_attention_num_buckets", "vocab_size")


def unigram_tokenizer(sentinels: bool):
    """The folder's small Unigram tokenizer; without T5's 100 sentinels for mT5 (whose vocabulary has none)."""
    tokenizer = load_script(T5_FOLDER, "make_tiny_checkpoint").train_tokenizer()
    if sentinels:
        return tokenizer
    vocab = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["vocab"]
    return T5Tokenizer(vocab=[(p, s) for p, s in vocab if not p.startswith("<extra_id_")], extra_ids=0)


def variant_model(name: str, vocab: int):
    if name == "t5-v1.0":
        return T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                                                   num_layers=2, feed_forward_proj="relu", **SPECIALS))
    if name == "mt5":
        return MT5ForConditionalGeneration(MT5Config(vocab_size=vocab + 12, d_model=32, d_ff=48, num_heads=2, d_kv=16,
                                                     num_layers=2, tie_word_embeddings=False, **SPECIALS))
    if name == "wide":
        return T5ForConditionalGeneration(T5Config(
            vocab_size=vocab + 3, d_model=48, d_ff=80, num_heads=3, d_kv=20, num_layers=3, num_decoder_layers=1,
            relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-silu",
            tie_word_embeddings=False, **SPECIALS))
    return T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                                               num_layers=2, feed_forward_proj="gated-gelu",
                                               tie_word_embeddings=False, **SPECIALS))


def build_variant(name: str, folder):
    """Seeded tiny checkpoint of one variant, saved the way its real checkpoints are."""

    tokenizer = ByT5Tokenizer() if name == "byt5" else unigram_tokenizer(sentinels=name != "mt5")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    model = variant_model(name, len(tokenizer)).eval()
    model.config.architectures = [type(model).__name__]
    if name != "t5-v1.0":  # its own lm_head, as T5 v1.1, Flan-T5, mT5 and ByT5 have
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    model.save_pretrained(folder)
    if name == "t5-v1.0":  # config.json as the hub's t5-small has it
        config = json.loads((folder / "config.json").read_text())
        config = {key: config[key] for key in T5_SMALL_CONFIG_KEYS}
        config.update(architectures=["T5WithLMHeadModel"], n_positions=512, output_past=True)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    mark_test_checkpoint(folder, seed=0, source=f"tests/google_flan_t5_small/test_generality.py ({name})")
    return folder


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request, tmp_path_factory):
    return request.param, build_variant(request.param, tmp_path_factory.mktemp(request.param))


@pytest.mark.slow
def test_inference_cli(variant, cli, tmp_path, capsys):
    name, folder = variant
    out = tmp_path / "out.jsonl"
    assert cli(load_script(T5_FOLDER, "inference"), "--model_path", folder, "--device", "cpu", "--text",
               "summarize: the city council met", "--text", "Hi", "--max_new_tokens", 4, "--output", out) == 0
    printed = capsys.readouterr().out
    assert all(part in printed for part in LAYOUT[name]), printed
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2


@pytest.mark.slow
def test_eval_accuracy_fp32_passes(variant, cli, tmp_path):
    name, folder = variant
    out = tmp_path / "parity.json"
    assert cli(load_script(T5_FOLDER, "eval_accuracy"), "--model_path", folder, "--device", "cpu", "--dtype", "fp32",
               "--max_new_tokens", 4, "--output", out) == 0
    result = json.loads(out.read_text())
    assert result["passed"] and result["kind"] == "parity" and result["weights"] == "test checkpoint"
    assert result["parts"]["generation"]["exact_match_rate"] == 1.0


@pytest.mark.slow
def test_benchmark_counts_the_same_tokens_on_both_sides(variant, cli, tmp_path):
    name, folder = variant
    out = tmp_path / "bench.json"
    assert cli(load_script(T5_FOLDER, "benchmark"), "--model_path", folder, "--device", "cpu",
               "--encoder_batch_sizes", "2", "--input_tokens", 8, "--requests", 4, "--gen_batch_size", 2,
               "--max_new_tokens", 4, "--num_beams", 2, "--repeats", 1, "--output", out) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "benchmark" and result["headline"]["ratio"] > 0
    for row in result["generation"]:
        assert row["same_text_as_peer"] == 1.0
        assert row["ours"]["new_tokens"] == row["peer"]["new_tokens"] > 0, row["mode"]


def test_memory_estimate_matches_the_real_parameter_count(variant, cli, tmp_path):
    name, folder = variant
    module = load_script(T5_FOLDER, "memory_estimate")
    real = sum(p.numel() for p in AutoModelForSeq2SeqLM.from_pretrained(folder).parameters())
    config_only = tmp_path / "config-only"  # no weights: tied or not is read from the config alone
    config_only.mkdir()
    shutil.copy(folder / "config.json", config_only / "config.json")
    for source in (folder, config_only):
        out = tmp_path / f"{source.name}.json"
        assert cli(module, "--model_path", source, "--output", out) == 0
        doc = json.loads(out.read_text())
        (row,) = doc["rows"]
        assert doc["kind"] == "estimate" and row["parameters"] == real, source
        assert f"{row['lm_head']} lm_head" == LAYOUT[name][2]


# --- a checkpoint that ships only SentencePiece's spiece.model (mT5 and T5 v1.1 on the hub) ------------------------

def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire)
    return key + (_varint(len(payload)) + payload if wire == 2 else payload)


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def spiece_model(vocab: list) -> bytes:
    """A SentencePiece ModelProto (unigram) written by hand: pieces with scores and types, unk id 2."""
    kinds = {"<pad>": 3, "</s>": 3, "<unk>": 2}  # CONTROL, CONTROL, UNKNOWN; everything else NORMAL (1)
    pieces = b"".join(_field(1, 2, _field(1, 2, piece.encode()) + _field(2, 5, struct.pack("<f", score))
                             + _field(3, 0, _varint(kinds.get(piece, 1)))) for piece, score in vocab)
    return pieces + _field(2, 2, _field(3, 0, _varint(1)) + _field(40, 0, _varint(2)))


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # no parent package
        return False


@pytest.mark.slow
def test_spiece_only_checkpoint_loads_or_says_what_to_install(cli, tmp_path, capsys):
    source = build_variant("mt5", tmp_path / "mt5")
    folder = tmp_path / "mt5-spiece"
    shutil.copytree(source, folder)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    (folder / "spiece.model").write_bytes(spiece_model(vocab))
    (folder / "tokenizer.json").unlink()
    inference = load_script(T5_FOLDER, "inference")
    runs = {}
    for checkpoint in (source, folder):
        code = cli(inference, "--model_path", checkpoint, "--device", "cpu", "--text", "summarize: the city council",
                   "--max_new_tokens", 3)
        runs[checkpoint.name] = code, capsys.readouterr()
    code, captured = runs["mt5-spiece"]
    if _importable("sentencepiece") and _importable("google.protobuf"):
        # converted on load: the same tokenizer, so the same output as the tokenizer.json copy
        assert code == 0 and captured.out.splitlines()[-1] == runs["mt5"][1].out.splitlines()[-1]
    else:
        err = captured.err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "spiece.model" in err and "pip install" in err and "sentencepiece" in err


@pytest.mark.slow
def test_make_tiny_checkpoint_from_another_architecture(cli, tmp_path, capsys):
    """--from builds a tiny random copy of any T5-family model's architecture (common.porting.tiny_checkpoint)."""
    source = build_variant("t5-v1.0", tmp_path / "source")
    out = tmp_path / "tiny"
    assert cli(load_script(T5_FOLDER, "make_tiny_checkpoint"), "--output", out, "--from", source) == 0
    assert json.loads((out / "test_checkpoint.json").read_text())["random_weights"] is True
    assert cli(load_script(T5_FOLDER, "inference"), "--model_path", out, "--device", "cpu", "--text", "Hi",
               "--max_new_tokens", 2) == 0
    assert "relu" in capsys.readouterr().out
