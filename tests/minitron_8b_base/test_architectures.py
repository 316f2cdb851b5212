"""The causal-LM folder on architectures other than Nemotron: it is meant to be copied for ANY AutoModelForCausalLM.

Tiny random checkpoints are built in-test through `make_tiny_checkpoint.build(output, source=...)` (the `--from`
path, common.porting.tiny_checkpoint) from small spec folders: Qwen2 with tied embeddings, GPT-2 (learned absolute
positions, a tokenizer with no pad token), GPT-NeoX (partial rotary, parallel residual) and Llama with one KV head.
Each goes through the inference CLI, eval_accuracy (PASS in fp32) and the benchmark's static-cache path. Then the
checkpoint and tokenizer variants that broke the folder before: generation settings shipped in
generation_config.json, several end-of-sequence ids, token_type_ids from the tokenizer, no pad and no eos token,
prompts longer than a learned position table.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import transformers as t
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tests.support import MINITRON_FOLDER, load_script

FOLDER = MINITRON_FOLDER
ARCHS = {"qwen2-tied": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel", "gpt-neox": "GPTNeoXForCausalLM",
         "llama-gqa": "LlamaForCausalLM"}
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
PROMPTS = ["Question: Natalia sold 48 clips", "x", "The three most important inventions of the century are"]


def gpt2_tokenizer():
    """Like GPT-2's own: byte-level BPE whose only special token, <|endoftext|>, is bos, eos and unk; no pad."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(PROMPTS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def spec(name: str, make_tokenizer):
    """(config, tokenizer) of a small source model: what `--from` reads (no weights)."""
    if name == "gpt2":
        return t.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=1024, vocab_size=448, bos_token_id=0,
                            eos_token_id=0), gpt2_tokenizer()
    tokenizer = make_tokenizer()
    ids = dict(vocab_size=512, bos_token_id=2, eos_token_id=3, pad_token_id=1)
    config = {"qwen2-tied": lambda: t.Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **SMALL, **ids),
              "gpt-neox": lambda: t.GPTNeoXConfig(rotary_pct=0.25, use_parallel_residual=True, **SMALL, **ids),
              "llama-gqa": lambda: t.LlamaConfig(num_key_value_heads=1, **SMALL, **ids)}[name]()
    return config, tokenizer


@pytest.fixture(scope="module")
def builder():
    return load_script(FOLDER, "make_tiny_checkpoint")


@pytest.fixture(scope="module")
def checkpoints(builder, tmp_path_factory):
    root = tmp_path_factory.mktemp("architectures")
    built = {}
    for name in ARCHS:
        config, tokenizer = spec(name, builder.train_tokenizer)
        config.save_pretrained(root / f"{name}-spec")
        tokenizer.save_pretrained(root / f"{name}-spec")
        built[name] = builder.build(root / name, source=root / f"{name}-spec")
    return built


@pytest.fixture
def inference():
    return load_script(FOLDER, "inference")


def variant(folder, tmp_path, **json_edits):
    """A copy of a checkpoint with some JSON files edited: {"file.json": {key: value or None to delete}}."""
    copy = tmp_path / f"{folder.name}-variant"
    shutil.copytree(folder, copy)
    for file, edits in json_edits.items():
        path = copy / file.replace("__", ".")
        data = json.loads(path.read_text()) if path.exists() else {}
        for key, value in edits.items():
            data.pop(key, None) if value is None else data.__setitem__(key, value)
        path.write_text(json.dumps(data))
    return copy


# --- every architecture through the folder's three scripts ---------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_inference_and_left_padding(arch, checkpoints, inference, cli, capsys):
    assert cli(inference, "--model_path", checkpoints[arch], "--prompt", "Question: 2", "--max_new_tokens", "3") == 0
    assert capsys.readouterr().out.startswith("Question: 2")
    lm = inference.CausalLM(str(checkpoints[arch]), device="cpu")
    assert type(lm.model).__name__ == ARCHS[arch]
    assert lm.generate(PROMPTS, max_new_tokens=5) == [lm.generate(p, max_new_tokens=5)[0] for p in PROMPTS]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_eval_accuracy_passes_fp32(arch, checkpoints, cli, tmp_path):
    output = tmp_path / "parity.json"
    assert cli(load_script(FOLDER, "eval_accuracy"), "--model_path", checkpoints[arch], "--device", "cpu",
               "--dtype", "fp32", "--max_new_tokens", "6", "--output", output) == 0
    result = json.loads(output.read_text())
    assert result["passed"] is True and result["weights"] == "test checkpoint"
    assert result["parts"]["generation"]["exact_match_rate"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_benchmark_static_path(arch, checkpoints, cli, tmp_path):
    output = tmp_path / "bench.json"
    assert cli(load_script(FOLDER, "benchmark"), "--model_path", checkpoints[arch], "--input_tokens", "8",
               "--output_tokens", "6", "--num_requests", "2", "--batch_size", "2", "--no_compile", "--warmup", "0",
               "--no_plot", "--output", output) == 0
    result = json.loads(output.read_text())
    assert result["greedy_identical"] is True and result["headline"]["ratio"] > 0


@pytest.mark.slow
def test_benchmark_compiled_with_tied_embeddings(checkpoints, cli, tmp_path):
    """The compiled step with inductor freezing on a model whose output projection is its input embedding."""
    output = tmp_path / "bench.json"
    assert cli(load_script(FOLDER, "benchmark"), "--model_path", checkpoints["qwen2-tied"], "--input_tokens", "8",
               "--output_tokens", "4", "--num_requests", "1", "--warmup", "1", "--no_plot", "--output", output) == 0
    result = json.loads(output.read_text())
    assert result["settings"]["compiled"] is True and result["greedy_identical"] is True
    assert result["headline"]["metric"] == "decode tokens/s, static cache + compile"


def test_padded_rows_equal_rows_alone_with_learned_positions(checkpoints):
    """GPT-2 adds a learned table row per position: a left-padded row is only right if positions start at its
    first real token (a plain forward counts them from the padding)."""
    evaluator = load_script(FOLDER, "eval_accuracy")
    lm = evaluator.CausalLM(str(checkpoints["gpt2"]), "cpu", "fp32")
    seqs = [lm.tokenizer(p)["input_ids"] for p in PROMPTS]
    batched = evaluator.logits_of(lm, seqs)
    alone = [evaluator.logits_of(lm, [s])[0] for s in seqs]
    assert len({len(s) for s in seqs}) == 3
    assert max(float(np.abs(a - b).max()) for a, b in zip(alone, batched)) < 1e-4


# --- checkpoint and tokenizer variants that broke the folder ------------------------------------------------------

@pytest.mark.slow
def test_generation_config_processors_do_not_reach_the_benchmark(checkpoints, tmp_path, cli):
    """Qwen2.5 ships sampling and repetition_penalty 1.05 in generation_config.json; generate() applied them and the
    static path does not, so the benchmark's greedy comparison parted for reasons that are not numerics."""
    folder = variant(checkpoints["llama-gqa"], tmp_path, generation_config__json={
        "do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.5})
    output = tmp_path / "bench.json"
    assert cli(load_script(FOLDER, "benchmark"), "--model_path", folder, "--input_tokens", "6", "--output_tokens",
               "12", "--num_requests", "2", "--batch_size", "2", "--no_compile", "--warmup", "0", "--no_plot",
               "--output", output) == 0
    result = json.loads(output.read_text())
    assert result["greedy_identical"] is True, result["greedy_divergences"]


def test_checkpoint_end_of_sequence_list_is_kept(checkpoints, tmp_path, inference):
    """Qwen2.5 and Llama 3 stop on several ids (generation_config.json); the tokenizer names one. Generation must
    stop on every one of them, not only on the tokenizer's."""
    lm = inference.CausalLM(str(checkpoints["llama-gqa"]), device="cpu")
    batch = lm.encode([PROMPTS[0]])
    ids = lm.model.generate(**batch, max_new_tokens=8, do_sample=False)[0, batch["input_ids"].shape[1]:].tolist()
    k = next(k for k in range(1, len(ids)) if ids[k] not in ids[:k])  # a token seen first at step k
    eos = [lm.tokenizer.eos_token_id, ids[k]]
    folder = variant(checkpoints["llama-gqa"], tmp_path, generation_config__json={"eos_token_id": eos})
    stopped = inference.CausalLM(str(folder), device="cpu").generate(PROMPTS[0], max_new_tokens=8)
    assert stopped == [lm.tokenizer.decode(ids[: k + 1], skip_special_tokens=True)]


def test_tokenizer_returning_token_type_ids(checkpoints, tmp_path, inference):
    """Falcon's tokenizer returns token_type_ids, which generate() refuses for most causal LMs."""
    folder = variant(checkpoints["llama-gqa"], tmp_path, tokenizer_config__json={
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]})
    lm = inference.CausalLM(str(folder), device="cpu")
    assert "token_type_ids" in lm.tokenizer(PROMPTS[:1])
    plain = inference.CausalLM(str(checkpoints["llama-gqa"]), device="cpu")
    assert lm.generate(PROMPTS, max_new_tokens=4) == plain.generate(PROMPTS, max_new_tokens=4)


def test_tokenizer_without_pad_or_eos_token(checkpoints, tmp_path, inference):
    folder = variant(checkpoints["llama-gqa"], tmp_path, tokenizer_config__json={"pad_token": None, "eos_token": None})
    lm = inference.CausalLM(str(folder), device="cpu")
    assert lm.tokenizer.eos_token is None and lm.tokenizer.pad_token == "<unk>"
    assert lm.generate(PROMPTS, max_new_tokens=3) == [lm.generate(p, max_new_tokens=3)[0] for p in PROMPTS]


def test_longer_than_the_position_table_is_one_line(checkpoints, cli, capsys, tmp_path):
    assert cli(load_script(FOLDER, "benchmark"), "--model_path", checkpoints["gpt2"], "--input_tokens", "1010",
               "--output_tokens", "20", "--num_requests", "1", "--output", tmp_path / "bench.json") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more than the model's 1024" in err[0], err
