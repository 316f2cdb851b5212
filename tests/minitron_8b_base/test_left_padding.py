"""Minitron-8B-Base's one padding rule, inference.left_padded: what CausalLM.encode, the parity check (with
position ids) and the server's batches are built from."""
from __future__ import annotations

import pytest
import torch

from tests.support import MINITRON_FOLDER, load_script

CPU = torch.device("cpu")
PROMPTS = ["The three most important inventions of the twentieth century are", "x", "Hello there, my friend"]


@pytest.fixture(scope="module")
def inference():
    return load_script(MINITRON_FOLDER, "inference")


def test_rows_end_in_the_last_column(inference):
    batch = inference.left_padded([[5, 6, 7], [8], [9, 10]], pad_id=0, device=CPU)
    assert set(batch) == {"input_ids", "attention_mask"}  # generate() derives the positions itself
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long


def test_positions_count_from_each_rows_first_real_token(inference):
    batch = inference.left_padded([[5, 6, 7], [8], [9, 10]], pad_id=3, device=CPU, positions=True)
    assert batch["input_ids"][1].tolist() == [3, 3, 8]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 1]]


def test_equal_lengths_need_no_padding(inference):
    batch = inference.left_padded([[1, 2], [3, 4]], pad_id=0, device=CPU)
    assert batch["input_ids"].tolist() == [[1, 2], [3, 4]] and bool(batch["attention_mask"].all())


def test_encode_is_the_tokenizers_own_left_padding(inference, tiny_minitron):
    """CausalLM.encode builds, through left_padded, exactly the batch the tokenizer pads on the left by itself."""
    tokenizer = inference.load_tokenizer_and_config(str(tiny_minitron))[0]
    lm = object.__new__(inference.CausalLM)  # no weights: encode needs the tokenizer and the device only
    lm.tokenizer, lm.device = tokenizer, CPU
    inference.set_special_tokens(tokenizer, type("Generation", (), {"eos_token_id": 1, "pad_token_id": 1})())
    want = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    got = lm.encode(PROMPTS)
    assert set(got) == {"input_ids", "attention_mask"}
    assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["attention_mask"],
                                                                            want["attention_mask"])
    assert len({len(ids) for ids in tokenizer(PROMPTS)["input_ids"]}) > 1  # the prompts really were padded


def test_the_server_batches_as_encode_does(inference, tiny_minitron):
    tokenizer = inference.load_tokenizer_and_config(str(tiny_minitron))[0]
    tokenizer.padding_side = "left"  # what set_special_tokens sets when CausalLM loads
    serve = load_script(MINITRON_FOLDER, "serve")
    backend = object.__new__(serve.CausalLMBackend)
    backend.tokenizer, backend.lm = tokenizer, type("LM", (), {"device": CPU})()
    ids = tokenizer(PROMPTS)["input_ids"]
    got = backend.batch([serve.Prompt(token_count=len(i), payload=i) for i in ids])
    want = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["attention_mask"],
                                                                            want["attention_mask"])
