"""Build a tiny random causal-LM checkpoint for tests and CI: Minitron-8B-Base's architecture, or any other model's.

    python make_tiny_checkpoint.py --output models/tiny-minitron           # then --model_path models/tiny-minitron
    python make_tiny_checkpoint.py --output models/tiny-qwen3 --from models/Qwen3-0.6B   # any causal LM (folder/hub id)

Minitron-8B-Base is NemotronForCausalLM: 32 layers, hidden 4096, 48 query heads and 8 KV heads (grouped-query)
of head_dim 128, squared-ReLU MLP of 16384, LayerNorm1P, partial rotary (half of each head), untied embeddings,
vocab 256,000. Without --from this builds the same structure shrunk (2 layers, hidden 64, 4 heads / 2 KV heads)
with a small byte-level BPE tokenizer, so the tests load it through the very same `from_pretrained` path. With
--from it shrinks THAT model's config and retrains its tokenizer small (common.porting.tiny_checkpoint.build_tiny; only the
config and tokenizer files are read). Random weights: the output is gibberish, the code path is real. Either way
the folder is marked as a test checkpoint, so nothing measured on it is reported as the real model. Deterministic,
a few seconds.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import NemotronConfig, NemotronForCausalLM, PreTrainedTokenizerFast

from common.cli import ArgumentParser, run_main
from common.results import check_output_folder
from common.results import mark_test_checkpoint
from common.porting.tiny_checkpoint import build_tiny

FAMILY = "causal-lm"  # how common.porting.tiny_checkpoint loads a --from model
SEED = 0  # the weights: every build gives the same checkpoint
VOCAB_SIZE = 512  # the tiny tokenizer's vocabulary
TINY_CONFIG = dict(  # Minitron-8B: hidden 4096, 48 heads x 128, 8 KV heads, 32 layers, MLP 16384, vocab 256000
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, hidden_act="relu2", partial_rotary_factor=0.5, rope_theta=10000.0, norm_eps=1e-5,
    max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=2, eos_token_id=3,
    initializer_range=0.02, use_cache=True,
)
CORPUS = [
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Answer: Natalia sold 48/2 = <<48/2=24>>24 clips in May. She sold 48+24 = <<48+24=72>>72 clips. #### 72",
    "The three most important inventions of the twentieth century are the transistor and the computer.",
    "How many dollars did she earn? $12 an hour, 50 minutes, 0.2 per minute, 10, 1,000 and -5.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) ? ! . , ; : ' \" % $ # @ & < > [ ] { } _ \n",
]


def train_tokenizer():
    """A byte-level BPE tokenizer (any text encodes) with <unk> <pad> <s> </s>, learned from CORPUS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<unk>", "<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")


def build_own(folder: Path) -> Path:
    """The tiny NemotronForCausalLM (config, safetensors weights, tokenizer) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    config = NemotronConfig(vocab_size=VOCAB_SIZE, pad_token_id=tokenizer.pad_token_id, **TINY_CONFIG)
    torch.manual_seed(SEED)
    model = NemotronForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    mark_test_checkpoint(folder, seed=SEED, architecture=type(model).__name__, built_by=Path(__file__).name)
    return folder


def build(output, source=None) -> Path:
    """Write a tiny random checkpoint to `output`: this folder's architecture, or `source`'s (a model folder or hub
    id) when given. Returns the folder."""
    output = Path(output)
    if source is None:
        return build_own(output)
    return build_tiny(source, output, FAMILY, seed=SEED)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="folder to write (created if needed)")
    parser.add_argument("--from", dest="source", default=None,
                        help="model folder or hub id whose architecture to shrink (default: this folder's model)")
    return parser


def main(args) -> int:
    check_output_folder(args.output)
    print(build(args.output, args.source))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
