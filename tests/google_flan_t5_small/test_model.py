"""Flan-T5 port on a tiny random checkpoint: the checkpoint has the real structure, the class matches plain
transformers, batching and truncation behave, the fp16 overflow watch finds a forced overflow, memory arithmetic."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5Config, T5ForConditionalGeneration

from tests.support import T5_FOLDER, load_script


@pytest.fixture(scope="module")
def inference():
    return load_script(T5_FOLDER, "inference")


@pytest.fixture(scope="module")
def model(inference, tiny_t5):
    return inference.T5Summarizer(str(tiny_t5), device="cpu", dtype="fp32")


PROMPTS = ["summarize: The council approved a new budget for parks and schools.",
           "translate English to German: Where is the station?",
           "question: What colour is the sky? context: On a clear day the sky is blue.",
           "Hi"]


def test_tiny_checkpoint_has_flan_t5_structure(tiny_t5):
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5)
    config = model.config
    assert type(model).__name__ == "T5ForConditionalGeneration"
    assert config.feed_forward_proj == "gated-gelu" and config.is_gated_act
    assert (config.d_model, config.d_ff, config.num_heads, config.d_kv) == (64, 128, 4, 16)
    assert (config.num_layers, config.num_decoder_layers, config.relative_attention_num_buckets) == (2, 2, 32)
    # flan-t5 (T5 v1.1) has its own lm_head and no d_model**-0.5 rescaling of the decoder output
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    assert not torch.equal(model.lm_head.weight, model.shared.weight)
    assert config.scale_decoder_outputs is False
    assert json.loads((tiny_t5 / "config.json").read_text())["tie_word_embeddings"] is False
    block = model.encoder.block[0]
    assert hasattr(block.layer[1].DenseReluDense, "wi_0") and block.layer[0].SelfAttention.has_relative_attention_bias
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1  # T5's layout: sentinels last,
    assert tokenizer.convert_tokens_to_ids("<extra_id_99>") == len(tokenizer) - 100  # in reverse order
    assert len(tokenizer) <= config.vocab_size
    ids = tokenizer("summarize: the city council")["input_ids"]
    assert ids[-1] == 1 and tokenizer.unk_token_id not in ids


@pytest.mark.slow
def test_summarize_matches_plain_transformers_generate(model, tiny_t5):
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5)
    peer = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5).eval()
    for beams in (1, 3):
        ours = model.summarize(PROMPTS, max_new_tokens=8, num_beams=beams)
        expected = []
        for prompt in PROMPTS:  # one at a time: no padding on the peer side
            out = peer.generate(**tokenizer([prompt], return_tensors="pt"), max_new_tokens=8, num_beams=beams)
            expected += tokenizer.batch_decode(out, skip_special_tokens=True)
        assert ours == expected
    assert model.last_stats["prompts"] == 4 and model.last_stats["new_tokens"] > 0


@pytest.mark.slow
def test_pipeline_style_call_and_single_string(model):
    out = model(PROMPTS[:2], max_new_tokens=5)
    assert [set(o) for o in out] == [{"generated_text"}] * 2
    assert all(isinstance(o["generated_text"], str) for o in out)
    assert model("Hi", max_new_tokens=5) == [{"generated_text": model.summarize(["Hi"], max_new_tokens=5)[0]}]


@pytest.mark.slow
def test_batching_and_order_do_not_change_outputs(model):
    one = model.generate_ids(PROMPTS, max_new_tokens=6, batch_size=1)
    many = model.generate_ids(PROMPTS, max_new_tokens=6, batch_size=16)
    reversed_order = model.generate_ids(PROMPTS[::-1], max_new_tokens=6, batch_size=3)[::-1]
    assert one == many == reversed_order
    assert model.last_stats["padded_tokens"] >= model.last_stats["input_tokens"]


def test_truncation_is_counted_and_keeps_eos(inference, tiny_t5):
    model = inference.T5Summarizer(str(tiny_t5), device="cpu", dtype="fp32", max_input_length=16)
    ids, truncated = model.tokenize(["summarize: " + "the city council met " * 20, "Hi"])
    assert truncated == 1 and len(ids[0]) == 16 and ids[0][-1] == model.eos_id
    model.summarize(["summarize: " + "the city council met " * 20], max_new_tokens=3)
    assert model.last_stats["truncated"] == 1


def test_generation_settings_are_checked(model, inference):
    for kwargs in ({"num_beams": 0}, {"max_new_tokens": 0}, {"batch_size": 0}):
        with pytest.raises(inference.UserError):
            model.summarize(["Hi"], **kwargs)
    assert model.summarize([]) == []


def test_overflow_watch_names_the_first_overflowing_module(inference, overflowing_t5):
    model = inference.T5Summarizer(str(overflowing_t5), device="cpu", dtype="fp16")
    assert model.watch_overflow  # on by default in fp16
    assert model.model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32  # transformers
    model.summarize(PROMPTS[:2], max_new_tokens=3)
    report = model.last_stats["overflow"]
    assert report["detected"] and report["first_module"].startswith("encoder.block.0.layer.1.DenseReluDense")
    assert report["checked_outputs"] > 50


def test_overflow_watch_is_quiet_on_a_healthy_run(inference, overflowing_t5, tiny_t5):
    healthy = inference.T5Summarizer(str(tiny_t5), device="cpu", dtype="fp32", watch_overflow=True)
    healthy.summarize(PROMPTS, max_new_tokens=4)
    assert healthy.last_stats["overflow"]["detected"] is False
    big_fp32 = inference.T5Summarizer(str(overflowing_t5), device="cpu", dtype="fp32", watch_overflow=True)
    big_fp32.summarize(PROMPTS[:1], max_new_tokens=2)  # the same large activations are fine in fp32
    assert big_fp32.last_stats["overflow"]["detected"] is False


def test_memory_formula_matches_real_model_objects(model):
    memory = load_script(T5_FOLDER, "memory_estimate")
    c = model.model.config
    counted = memory.t5_parameters(c.d_model, c.d_ff, c.num_heads, c.d_kv, c.num_layers, c.num_decoder_layers,
                                   vocab=c.vocab_size, buckets=c.relative_attention_num_buckets)
    assert counted["total"] == sum(p.numel() for p in model.model.parameters())

    config = T5Config(**memory.FLAN_T5, **memory.KNOWN_SIZES["google/flan-t5-small"])
    with torch.device("meta"):
        small = T5ForConditionalGeneration(config)
    small.lm_head.weight = torch.nn.Parameter(torch.empty_like(small.shared.weight))  # untied, as in the checkpoint
    assert memory.known_rows()[0]["parameters"] == 76_961_152 == sum(p.numel() for p in small.parameters())
    with torch.device("meta"):  # T5 v1.0: t5-small's config is T5Config's defaults (ReLU, tied lm_head)
        t5_small = T5ForConditionalGeneration(T5Config())
    row = memory.estimate("t5-small", T5Config())
    assert (row["feed_forward"], row["lm_head"]) == ("relu", "tied")
    assert row["parameters"] == 60_506_624 == sum(p.numel() for p in t5_small.parameters())  # as published
