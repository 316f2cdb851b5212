"""Tiny random checkpoints of ANY model's architecture, for tests and for porting a model before its weights arrive.

    accel-ports tiny-checkpoint --from BAAI/bge-small-en-v1.5 --family sentence-transformers --output tiny/
    accel-ports tiny-checkpoint --from models/Qwen3-0.6B --family causal-lm --output tiny-qwen3/

What is kept from the source model: its architecture class and config format (model_type, activation, norm,
rotary settings, attention layout such as grouped-query heads, tied or untied embeddings), its tokenizer's kind and
pipeline (normalizer, pre-tokenizer, special tokens, chat template), and for sentence-transformers models the module
stack (modules.json, pooling mode, Dense, Normalize). What is shrunk: width, depth, heads, feed-forward size and the
vocabulary (the tokenizer is retrained with `train_new_from_iterator` on a small built-in corpus). The weights are
random, seeded, so every build of the same source is the same model. Only the source's config and tokenizer files are
read (a hub id downloads those, never the weights). The output is marked as a test checkpoint
(common.results.mark_test_checkpoint), so nothing measured on it is ever reported as the real model.

A source that is already tiny (dimensions at or below the targets, small vocabulary) is kept as it is, so a spec
folder written with `weights=False` (config and tokenizer only, as `common.porting.new_port` stores in a new port's
`tiny_model/`) builds the same checkpoint every time.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from common.cli import ArgumentParser, UserError, first_line, run_main
from common.results import check_output_folder, mark_test_checkpoint, write_json

FAMILIES = ("sentence-transformers", "seq2seq", "causal-lm")
SEED = 0  # default weight seed: the same source always gives the same checkpoint
WIDTH = 64  # hidden size of the tiny model
HEADS = 4  # attention heads (head size WIDTH // HEADS = 16)
LAYERS = 2  # transformer blocks (each of encoder and decoder for seq2seq)
FEED_FORWARD = 128  # MLP inner size
EXPERTS = 4  # mixture-of-experts models keep their routing, with this many experts
VOCAB = 1000  # tokenizer size after retraining: every special token survives, the rest is learned from CORPUS
VOCAB_MULTIPLE = 64  # the embedding rows are padded to a multiple, as most real checkpoints do
DENSE_WIDTH = 32  # output size of a shrunk sentence-transformers Dense module
INIT_STD = 0.2  # weight std: larger than the usual 0.02 so a random model's logits are peaked enough that greedy
#                 decoding and top-1 parity are not decided by near-ties everywhere
# Read from the source: config, tokenizer and sentence-transformers module configs; never the weights.
SOURCE_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "merges.txt", "vocab.*", "*/config.json",
                   "*.jinja", "chat_template*"]
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
CORPUS = [  # what the small tokenizers learn from: prose, questions, numbers, code, several scripts
    "The quick brown fox jumps over the lazy dog. A man is playing a guitar while a woman sings.",
    "Question: Natalia sold clips to 48 of her friends in April, and then half as many in May. How many in total?",
    "Answer: 48 / 2 = 24 clips in May; 48 + 24 = 72 clips altogether. #### 72",
    "summarize: The city council approved a new budget for parks, schools and public transport on Monday.",
    "translate English to German: Where is the nearest train station? I would like a coffee, please.",
    "def add(a, b):\n    return a + b  # adds two numbers\nSELECT name, COUNT(*) FROM users GROUP BY name;",
    "Le chat dort sur le canapé pendant que la pluie tombe. Der Hund schläft im Garten.",
    "今天天气很好，我们去公园散步吧。机器学习是人工智能的一个分支。北京是中国的首都。",
    "¿Dónde está la estación de tren más cercana? Quarterly revenue rose 12.5% to $4.31 billion.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1,000 3.14 -5 + - * / = ( ) [ ] { } < > ? ! . , ; : ' \" % $ # @ & _",
    "Sentence embeddings map text to vectors so that similar meanings land close together in the space.",
    "User: Hello, my name is Ana.\nAssistant: Nice to meet you, Ana. How can I help you today?",
]

# Config keys by what they size, across the architectures transformers ships (BERT, MPNet, DistilBERT, XLM-R, T5,
# mT5, BART, GPT-2, GPT-NeoX, Llama, Qwen, Mistral, Gemma, Phi, Nemotron, ...). A key absent from a config is skipped.
WIDTH_KEYS = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim")
FEED_FORWARD_KEYS = ("intermediate_size", "d_ff", "n_inner", "hidden_dim", "ffn_dim", "encoder_ffn_dim",
                     "decoder_ffn_dim", "moe_intermediate_size", "shared_expert_intermediate_size")
LAYER_KEYS = ("num_hidden_layers", "num_layers", "num_decoder_layers", "n_layer", "n_layers", "encoder_layers",
              "decoder_layers")
HEAD_KEYS = ("num_attention_heads", "num_heads", "n_head", "n_heads", "encoder_attention_heads",
             "decoder_attention_heads")
HEAD_SIZE_KEYS = ("head_dim", "d_kv", "attention_head_size")
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


def _shrunk(value, target: int):
    """min(value, target) for a positive int; anything else (None, a list) unchanged."""
    return min(value, target) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else value


def shrink_config_dict(d: dict) -> dict:
    """The config as a dict with its sizes reduced to the tiny targets; every other setting is kept."""
    d = dict(d)
    old_layers = next((d[k] for k in LAYER_KEYS if isinstance(d.get(k), int)), None)
    old_heads = next((d[k] for k in HEAD_KEYS if isinstance(d.get(k), int)), None)
    for keys, target in ((WIDTH_KEYS, WIDTH), (FEED_FORWARD_KEYS, FEED_FORWARD), (LAYER_KEYS, LAYERS),
                         (HEAD_KEYS, HEADS), (EXPERT_KEYS, EXPERTS)):
        for key in keys:
            if key in d:
                d[key] = _shrunk(d[key], target)
    heads = next((d[k] for k in HEAD_KEYS if isinstance(d.get(k), int)), HEADS)
    width = next((d[k] for k in WIDTH_KEYS if isinstance(d.get(k), int)), WIDTH)
    for key in HEAD_SIZE_KEYS:
        if isinstance(d.get(key), int):
            d[key] = max(width // heads, 2)
    kv = d.get("num_key_value_heads")
    if isinstance(kv, int) and old_heads:
        # keep the attention layout: multi-head stays multi-head, grouped-query stays grouped, one KV head stays one
        d["num_key_value_heads"] = heads if kv >= old_heads else max(1, min(kv, heads // 2))
    if isinstance(d.get("num_experts_per_tok"), int):
        d["num_experts_per_tok"] = min(d["num_experts_per_tok"], 2)
    if old_layers:  # per-layer lists (Qwen3's layer_types, Gemma's sliding pattern, ...) follow the depth
        new_layers = next((d[k] for k in LAYER_KEYS if isinstance(d.get(k), int)), LAYERS)
        for key, value in list(d.items()):
            if isinstance(value, list) and len(value) == old_layers and old_layers != new_layers:
                d[key] = value[:new_layers]
    if "initializer_range" in d:
        d["initializer_range"] = INIT_STD
    if "initializer_factor" in d:  # T5's init scales with this instead
        d["initializer_factor"] = 1.0
    for key in ("torch_dtype", "dtype"):
        if key in d:
            d[key] = "float32"
    d.pop("quantization_config", None)
    return d


def _source_folder(source: str) -> Path:
    """A local folder, or the config/tokenizer files of a hub id (the cache first, then a download)."""
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"{source!r} has no config.json; pass a model folder or a hub id (org/name)")
        return local
    if local.exists() or source.startswith((".", "/", "~")):
        raise UserError(f"model {source!r} is not a model folder; pass a folder with config.json or a hub id")
    try:
        return Path(snapshot_download(source, allow_patterns=SOURCE_PATTERNS))
    except Exception as exc:  # offline, unknown repo, gated: all end the same way
        raise UserError(f"cannot read the config and tokenizer of {source!r} ({type(exc).__name__}: "
                        f"{first_line(exc)}); pass a local model folder instead") from None


def load_source(source: str | Path):
    """(folder, config, tokenizer) of the source model; only small files are read."""
    folder = _source_folder(str(source))
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read the model at {str(folder)!r}: {first_line(exc)}") from None
    return folder, config, tokenizer


def small_tokenizer(tokenizer):
    """The same kind of tokenizer with a small vocabulary; one that is already small (ByT5's bytes, a tiny spec) is
    returned unchanged."""
    if len(tokenizer) <= VOCAB:
        return tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"the tokenizer {type(tokenizer).__name__} has no fast (tokenizers) version to retrain; "
                        "convert it with `AutoTokenizer.from_pretrained(..., use_fast=True)` and save it first")
    specials = len(tokenizer.all_special_tokens)
    return tokenizer.train_new_from_iterator(CORPUS * 8, vocab_size=max(VOCAB, specials + 300))


def _special_ids(config, tokenizer) -> dict:
    """Special-token ids of the new tokenizer, for the config keys the source config sets (ids move on retraining)."""
    ids = {}
    for key, token in (("pad_token_id", tokenizer.pad_token), ("eos_token_id", tokenizer.eos_token),
                       ("bos_token_id", tokenizer.bos_token), ("sep_token_id", tokenizer.sep_token),
                       ("cls_token_id", getattr(tokenizer, "cls_token", None))):
        if getattr(config, key, None) is not None:
            ids[key] = tokenizer.convert_tokens_to_ids(token) if token is not None else None
    if getattr(config, "decoder_start_token_id", None) is not None:  # T5/BART start decoding from pad / eos
        old = config.decoder_start_token_id
        same_as = next((k for k in ("pad_token_id", "eos_token_id", "bos_token_id") if getattr(config, k, None) == old),
                       None)
        ids["decoder_start_token_id"] = ids.get(same_as, 0) if same_as else 0
    return ids


def tiny_config(config, tokenizer):
    """The source config shrunk, its vocabulary and special ids matched to the small tokenizer."""
    d = shrink_config_dict(config.to_dict())
    needed = math.ceil(len(tokenizer) / VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    current = d.get("vocab_size")  # kept when it already fits (a tiny spec rebuilt gives the same model)
    d["vocab_size"] = current if isinstance(current, int) and len(tokenizer) <= current <= needed else needed
    d.update(_special_ids(config, tokenizer))
    return type(config).from_dict(d)


def _model_class(family: str):
    return {"sentence-transformers": AutoModel, "seq2seq": AutoModelForSeq2SeqLM,
            "causal-lm": AutoModelForCausalLM}[family]


def random_model(config, family: str, seed: int):
    """Seeded random weights of the config's architecture, in float32."""
    torch.manual_seed(seed)
    try:
        model = _model_class(family).from_config(config).eval()
    except ValueError as exc:
        raise UserError(f"a {config.model_type!r} model is not a {family} model: {first_line(exc)}") from None
    untie_output_embeddings(model)
    return model


def untie_output_embeddings(model) -> None:
    """Give the output projection its own weights when the config says untied (Flan-T5, mT5, Minitron): some
    architectures build it tied to the input embedding whatever the config says, and a tiny model must have the
    source's layout, or its parity and memory figures describe another model."""
    config = model.config
    # T5 in transformers 5 always says tie_word_embeddings=True; scale_decoder_outputs=False marks v1.1 (untied)
    if config.tie_word_embeddings is not False and getattr(config, "scale_decoder_outputs", None) is not False:
        return
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if outputs is None or inputs is None or outputs.weight.data_ptr() != inputs.weight.data_ptr():
        return
    std = getattr(model.config, "initializer_factor", None) or getattr(model.config, "initializer_range", INIT_STD)
    outputs.weight = torch.nn.Parameter(torch.empty_like(inputs.weight).normal_(0.0, std))


def copy_sentence_transformers(source: Path, output: Path, width: int, seed: int, weights: bool) -> None:
    """modules.json and the module configs, with the widths rewritten; random Dense weights when `weights`."""
    for name in ST_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, output / name)
    if not (source / "modules.json").is_file():
        return
    generator = torch.Generator().manual_seed(seed + 1)
    features = width
    for module in json.loads((source / "modules.json").read_text(encoding="utf-8")):
        if not module.get("path"):
            continue
        config_file = source / module["path"] / "config.json"
        if not config_file.is_file():
            continue
        config = json.loads(config_file.read_text(encoding="utf-8"))
        for key in ("embedding_dimension", "word_embedding_dimension"):
            if key in config:
                modes = config.get("pooling_mode", "mean")
                count = len(modes) if isinstance(modes, list) else 1
                if "pooling_mode" not in config:  # the legacy format: one boolean per mode
                    count = max(1, sum(bool(v) for k, v in config.items() if k.startswith("pooling_mode_")))
                config[key] = width
                features = width * count
        if "in_features" in config:
            config["in_features"], config["out_features"] = features, min(config["out_features"], DENSE_WIDTH)
            if weights:
                _write_dense(output / module["path"], config, generator)
            features = config["out_features"]
        (output / module["path"]).mkdir(parents=True, exist_ok=True)
        (output / module["path"] / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _write_dense(folder: Path, config: dict, generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"linear.weight": torch.randn(config["out_features"], config["in_features"], generator=generator)
               * config["in_features"] ** -0.5}
    if config.get("bias", True):
        tensors["linear.bias"] = torch.zeros(config["out_features"])
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def build_tiny(source: str | Path, output: str | Path, family: str, seed: int = SEED, weights: bool = True) -> Path:
    """Write a tiny random checkpoint of `source`'s architecture to `output` (a folder, created); returns it.
    weights=False writes only the config, tokenizer and module configs (a spec that later builds are made from)."""
    if family not in FAMILIES:
        raise UserError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    hf_logging.disable_progress_bar()
    folder, config, tokenizer = load_source(source)
    tokenizer = small_tokenizer(tokenizer)
    config = tiny_config(config, tokenizer)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    width = next(getattr(config, k) for k in WIDTH_KEYS if isinstance(getattr(config, k, None), int))
    if weights:
        model = random_model(config, family, seed)
        model.save_pretrained(output)
    else:
        config.save_pretrained(output)
    tokenizer.save_pretrained(output)
    if family == "sentence-transformers":
        copy_sentence_transformers(folder, output, width, seed, weights)
    if weights:
        mark_test_checkpoint(output, seed=seed, source=str(source), family=family)
    else:
        write_json(output / "tiny_spec.json", {"source": str(source), "family": family,
                                               "note": "config and tokenizer of a tiny test model; no weights"})
    return output


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Build a tiny random checkpoint of any model's architecture.")
    p.add_argument("--from", dest="source", required=True, help="model folder or hub id whose architecture to copy")
    p.add_argument("--family", required=True, choices=FAMILIES, help="how the model is loaded and used")
    p.add_argument("--output", required=True, help="folder to write (created)")
    p.add_argument("--seed", type=int, default=SEED, help="weight seed")
    return p


def main(args) -> int:
    output = Path(args.output)
    check_output_folder(output)
    if output.exists() and any(output.iterdir()):
        raise UserError(f"--output {args.output!r} exists and is not empty; pass a new folder")
    build_tiny(args.source, output, args.family, args.seed)
    print(f"wrote a tiny random {args.family} checkpoint of {args.source} to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
