"""common.porting.tiny_checkpoint: tiny random checkpoints of any model's architecture, built from its config and tokenizer."""
from __future__ import annotations

import json

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from common.cli import UserError, run_main
from common.model_path import embedded_weights
from common.porting import tiny_checkpoint as tc
from common.results import weights_kind


def test_shrink_keeps_the_attention_layout_and_per_layer_lists():
    llama = {"hidden_size": 4096, "intermediate_size": 16384, "num_hidden_layers": 32, "num_attention_heads": 48,
             "num_key_value_heads": 8, "head_dim": 128, "layer_types": ["full_attention"] * 32, "rope_theta": 1e4,
             "initializer_range": 0.02, "torch_dtype": "bfloat16"}
    d = tc.shrink_config_dict(llama)
    assert (d["hidden_size"], d["intermediate_size"], d["num_hidden_layers"]) == (tc.WIDTH, tc.FEED_FORWARD, tc.LAYERS)
    assert d["num_attention_heads"] == tc.HEADS and d["head_dim"] == tc.WIDTH // tc.HEADS
    assert 1 <= d["num_key_value_heads"] < d["num_attention_heads"]  # grouped-query stays grouped
    assert d["layer_types"] == ["full_attention"] * tc.LAYERS and d["rope_theta"] == 1e4
    assert d["torch_dtype"] == "float32"
    mha = tc.shrink_config_dict({"hidden_size": 768, "num_attention_heads": 12, "num_key_value_heads": 12,
                                 "num_hidden_layers": 12})
    assert mha["num_key_value_heads"] == mha["num_attention_heads"]  # multi-head stays multi-head
    t5 = tc.shrink_config_dict({"d_model": 512, "d_ff": 1024, "d_kv": 64, "num_heads": 6, "num_layers": 8,
                                "num_decoder_layers": 8, "initializer_factor": 1.0})
    assert (t5["d_model"], t5["d_kv"], t5["num_layers"], t5["num_decoder_layers"]) == (64, 16, 2, 2)
    assert tc.shrink_config_dict({"hidden_size": 32, "num_hidden_layers": 1})["hidden_size"] == 32  # never grows


@pytest.fixture(scope="module")
def embedded_minilm():
    return embedded_weights("all-MiniLM-L6-v2")


def test_sentence_transformers_model_from_the_real_minilm(embedded_minilm, tmp_path):
    out = tc.build_tiny(embedded_minilm, tmp_path / "tiny", "sentence-transformers")
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == tc.WIDTH and config["model_type"] == "bert"
    assert config["vocab_size"] <= 1024 and config["vocab_size"] % tc.VOCAB_MULTIPLE == 0
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == tc.WIDTH and pooling["pooling_mode_mean_tokens"] is True
    assert weights_kind(out) == "test checkpoint"
    vectors = SentenceTransformer(str(out), device="cpu").encode(["A man eats.", "Le chat dort sur le canapé."])
    assert vectors.shape == (2, tc.WIDTH)


@pytest.fixture(scope="module")
def causal_spec(smollm2, tmp_path_factory):
    return tc.build_tiny(smollm2, tmp_path_factory.mktemp("spec"), "causal-lm", weights=False)


@pytest.mark.slow
def test_causal_lm_spec_builds_the_same_checkpoint_every_time(causal_spec, tmp_path):
    assert not list(causal_spec.glob("*.safetensors")) and (causal_spec / "tiny_spec.json").is_file()
    first = tc.build_tiny(causal_spec, tmp_path / "a", "causal-lm")
    second = tc.build_tiny(causal_spec, tmp_path / "b", "causal-lm")
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (causal_spec / "tokenizer.json").read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(first)
    model = AutoModelForCausalLM.from_pretrained(first)
    assert model.config.model_type == "llama" and model.config.hidden_size == tc.WIDTH
    assert len(tokenizer) <= model.config.vocab_size <= 1024
    assert tokenizer.decode(tokenizer("Natalia sold 48 clips.")["input_ids"]) == "Natalia sold 48 clips."
    assert model.config.eos_token_id == tokenizer.eos_token_id  # special ids follow the retrained tokenizer
    with torch.no_grad():
        out = model.generate(**tokenizer(["Question: 2 + 3?"], return_tensors="pt"), max_new_tokens=4,
                             do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] > 4


def test_seq2seq_from_the_tiny_t5(tiny_t5, tmp_path):
    out = tc.build_tiny(tiny_t5, tmp_path / "t5", "seq2seq")
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert model.config.model_type == "t5" and model.config.d_model <= tc.WIDTH
    assert model.config.decoder_start_token_id == model.config.pad_token_id  # T5 starts decoding from <pad>
    untied = model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert untied  # flan-t5 has its own lm_head: the tiny copy must too, whatever the default of the class


@pytest.mark.parametrize("case", ["missing folder", "file", "no config", "offline hub id", "wrong family",
                                  "unknown family"])
def test_bad_sources_are_one_line_errors(case, tmp_path, causal_spec):
    source, family = {
        "missing folder": (str(tmp_path / "nope"), "causal-lm"),
        "file": (str(causal_spec / "config.json"), "causal-lm"),
        "no config": (str(tmp_path), "causal-lm"),
        "offline hub id": ("nobody/no-such-model", "causal-lm"),
        "wrong family": (str(causal_spec), "seq2seq"),
        "unknown family": (str(causal_spec), "vision"),
    }[case]
    with pytest.raises(UserError) as info:
        tc.build_tiny(source, tmp_path / "out", family)
    assert "\n" not in str(info.value)


def test_cli_refuses_a_non_empty_output(causal_spec, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")

    args = tc.build_parser().parse_args(["--from", str(causal_spec), "--family", "causal-lm",
                                         "--output", str(tmp_path)])
    assert run_main(tc.main, args) == 2
    assert "not empty" in capsys.readouterr().err and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
