"""Build a tiny random Flan-T5 checkpoint (same architecture as flan-t5-small, scaled down) for tests and CI.

    python make_tiny_checkpoint.py --output /tmp/tiny-flan-t5                  # then --model_path /tmp/tiny-flan-t5
    python make_tiny_checkpoint.py --output /tmp/tiny-mt5 --from google/mt5-small   # any T5-family architecture

The real weights cannot be downloaded everywhere (no model hub in CI), so the tests load this folder through the
very same `from_pretrained` path as the real checkpoint. It matches flan-t5-small's *structure*: T5 v1.1 with a
gated-GELU feed-forward, relative attention buckets, an untied lm_head (no decoder-output rescaling), pad=0, eos=1,
unk=2, decoder start = pad, and a real Unigram (SentencePiece-style) tokenizer with T5's 100 <extra_id_*> sentinels.
The weights are random: generations are gibberish, parity and speed measurements are still meaningful as plumbing.
Takes a few seconds on a laptop CPU. The folder is marked as a test checkpoint (common.results.mark_test_checkpoint),
so every result measured on it says "test checkpoint", never the real model.

--from MODEL (a local folder or a hub id) builds a tiny random checkpoint of THAT model's architecture instead, with
common.porting.tiny_checkpoint.build_tiny: its config shrunk, its tokenizer retrained to a small vocabulary; only the
source's config and tokenizer files are read.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer
from transformers.utils import logging as hf_logging

from common.cli import ArgumentParser, run_main
from common.porting.tiny_checkpoint import build_tiny
from common.results import check_output_folder
from common.results import mark_test_checkpoint

FAMILY = "seq2seq"  # how common.porting.tiny_checkpoint loads a --from model
SEED = 0  # fixed weights: every build gives the same checkpoint
VOCAB_TARGET = 400  # Unigram pieces to learn (the trainer may stop earlier on this small corpus)
SCORE_DECIMALS = 2  # piece scores are rounded to this many decimals, making ties (and so the ids) deterministic
EXTRA_IDS = 100  # T5's sentinel tokens <extra_id_0..99>, appended after the learned pieces like the real vocab
VOCAB_MULTIPLE = 64  # the embedding is padded to a multiple, as flan-t5's 32128 rows hold a 32100-token vocab
TINY_CONFIG = dict(  # flan-t5-small is d_model 512, d_ff 1024, 6 heads x 64, 8+8 layers; the same shape, shrunk
    d_model=64, d_ff=128, num_heads=4, d_kv=16, num_layers=2, num_decoder_layers=2,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    dropout_rate=0.1, layer_norm_epsilon=1e-6, initializer_factor=1.0, pad_token_id=0, eos_token_id=1,
    decoder_start_token_id=0, is_encoder_decoder=True, use_cache=True,
)
CORPUS = [  # what the tokenizer learns from: the prompt formats and the kinds of words the tests and examples use
    "summarize: The city council approved a new budget for parks, schools and public transport on Monday.",
    "translate English to French: The weather is nice today and we are going to the market.",
    "translate English to German: Where is the nearest train station? I would like a coffee, please.",
    "question: What colour is the sky? context: On a clear day the sky is blue because air scatters light.",
    "Solve the equation for x: 3x + 7 = 22. The answer is 5.",
    "Is the sentiment of this review positive or negative? The film was wonderful and the music was great.",
    "Extract the named entities: Maria Lopez flew from Madrid to Berlin to meet engineers at Siemens.",
    "What is the intent of this message? I want to book a table for two people tonight.",
    "Which topic is this article about? Options: sports, business, science, politics.",
    "Extract keywords from the text: solar panels, battery storage and wind farms cut energy costs.",
    "User: Hello, my name is Ana. Assistant: Nice to meet you, Ana. How can I help you today?",
    "The following is a conversation with a helpful assistant that remembers what the user said.",
    "Scientists discovered a new species of frog in the rain forest, a report said on Tuesday.",
    "The company reported quarterly revenue of 4.2 billion dollars, up 12 percent from last year.",
    "Answer the question: who wrote the novel? Options: yes, no, maybe. Read this and answer.",
    "A man is playing a guitar while a woman sings a song about the river and the mountains.",
    "le chat dort sur le canapé. der Hund schläft im Garten. la maison est grande et belle.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) ? ! . , ; : ' \" % $ # @ & < > [ ] { } _",
]


def train_tokenizer():
    """A Unigram model (what SentencePiece trains for T5) learned on CORPUS, wrapped as transformers' T5Tokenizer."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=VOCAB_TARGET, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", max_piece_length=8, shrinking_factor=0.75)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    if [p for p, _ in vocab[:3]] != ["<pad>", "</s>", "<unk>"]:
        raise RuntimeError(f"unexpected special token order in the trained vocab: {vocab[:3]}")
    # The trainer breaks ties between equally frequent pieces in hash order, which changes from run to run:
    # round the scores and sort, so every build gives the same ids (and the same result files).
    learned = sorted(((p, round(s, SCORE_DECIMALS)) for p, s in vocab[3:]), key=lambda item: (-item[1], item[0]))
    vocab = vocab[:3] + learned
    sentinels = [f"<extra_id_{i}>" for i in reversed(range(EXTRA_IDS))]  # as in T5: <extra_id_0> is the last id
    return T5Tokenizer(vocab=vocab, extra_ids=EXTRA_IDS, additional_special_tokens=sentinels)


def untie_lm_head(model, std: float) -> None:
    """flan-t5 has a separate lm_head; transformers 5.x builds T5 with it tied to the embedding, so give it its own."""
    weight = torch.empty_like(model.shared.weight).normal_(0.0, std)
    weight[model.config.pad_token_id] = 0.0  # logit 0 for <pad>: never the best token, as in a trained model
    model.lm_head.weight = torch.nn.Parameter(weight)


def write_real_style_config(path: Path) -> None:
    """config.json as flan-t5-small's: `tie_word_embeddings: false` (transformers reads it as "untied lm_head, no
    decoder-output rescaling"); drop the derived flag so it is recomputed from that on load."""
    file = path / "config.json"
    config = json.loads(file.read_text(encoding="utf-8"))
    config["tie_word_embeddings"] = False
    config.pop("scale_decoder_outputs", None)
    file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def build_own(path: Path) -> Path:
    """The folder's own tiny checkpoint: flan-t5-small's structure, scaled down."""
    hf_logging.disable_progress_bar()
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    tokenizer.save_pretrained(path)
    vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    config = T5Config(vocab_size=vocab_size, tie_word_embeddings=False, architectures=["T5ForConditionalGeneration"],
                      **TINY_CONFIG)
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(config).eval()
    untie_lm_head(model, std=config.initializer_factor)
    model.save_pretrained(path)
    write_real_style_config(path)
    mark_test_checkpoint(path, seed=SEED, source="make_tiny_checkpoint.py (flan-t5-small's architecture)",
                         family=FAMILY)
    return path


def build(output, source: str | None = None) -> Path:
    """Write tokenizer, config and random weights to `output` (created if needed); returns the folder. Without
    `source`, the folder's own Flan-T5 layout; with it, a tiny copy of that model's architecture."""
    output = Path(output)
    if source is None:
        return build_own(output)
    return build_tiny(source, output, FAMILY, seed=SEED)


def main(args) -> int:
    output = Path(args.output)
    check_output_folder(output)
    folder = build(output, args.source)
    what = f"checkpoint of {args.source}'s architecture" if args.source else "Flan-T5 checkpoint"
    print(f"wrote a tiny random {what} to {folder}; pass --model_path {folder}")
    return 0


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Build a tiny random test checkpoint (random weights, marked as such).")
    p.add_argument("--output", required=True, help="folder to write (created)")
    p.add_argument("--from", dest="source", default=None,
                   help="a T5-family model folder or hub id whose architecture to copy (default: flan-t5-small's)")
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
