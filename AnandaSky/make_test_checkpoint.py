"""Build a random-weight AnandaSky checkpoint (the full architecture, ~41M parameters) for tests and CI.

    python make_test_checkpoint.py --output test_checkpoint     # then: inference.py --model_path test_checkpoint
    python make_test_checkpoint.py --output upstream_checkpoint --upstream_code   # for inference.py --remote_code

The real weights are not public. This folder has everything a real one has, loaded through the same code paths:
config.json (with auto_map, so `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` works),
model.safetensors, generation_config.json (eos = <|im_end|>), preprocessor_config.json, a byte-level BPE
tokenizer with Qwen's chat and vision special tokens, and a copy of modeling_anandasky_patched.py.
The vision encoder and the bridge's input have the real sizes (768 wide, 4 layers, 12 heads, patch 14); the Qwen3
decoder is shrunk (3 layers, hidden 512) but keeps head_dim 128, grouped-query attention (4 query / 2 KV heads)
and the tied embedding. Random weights (the embedding scaled so that predictions are peaked, see EMBED_STD): the
text is gibberish, the code path is real. Seeded: the same bytes on every build. A few seconds on a laptop CPU.
The folder is marked as a test checkpoint (test_checkpoint.json), so results measured on it never say "real".
`--upstream_code` swaps the modeling file for the upstream-style fixture (tests/fixtures/anandasky_upstream/: the
same weights' code written the way the real remote code is, flash_attn imports included) and points config.json's
auto_map at it: the folder to try `inference.py --remote_code` on.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from common.cli import ArgumentParser, UserError, run_main
from common.results import check_output_folder
from common.results import mark_test_checkpoint
from modeling_anandasky_patched import AnandaSkyConfig, AnandaSkyForConditionalGeneration
from processor import AnandaSkyProcessor

SEED = 0  # fixed weights: every build gives the same checkpoint
VOCAB_TARGET = 3072  # BPE vocabulary to learn (special tokens and the 256 bytes included)
VOCAB_MULTIPLE = 64  # the embedding is padded to a multiple, as Qwen3's 151,936 rows hold a 151,669-token vocab
# The embedding (tied to the lm_head). A trained LM's logits are peaked; from Qwen3's 0.02-std random embedding they
# are near flat, and bf16 rounding flips top-1 between near-tied tokens at ~3% of positions, failing the bf16
# top-1 criterion by chance. At std 0.1 a token's own row dominates its position's logits: a peaked (if trivial,
# "repeat the token") prediction, robust to rounding. The special and whitespace-only tokens keep 0.02, so after
# "<|im_start|>assistant\n" the context, not the newline, picks the first generated token.
EMBED_STD, QUIET_EMBED_STD = 0.1, 0.02
# The upstream-style remote code fixture (flash_attn imports, CUDA autocast) that --upstream_code drops in.
UPSTREAM_FIXTURE = (Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "anandasky_upstream"
                    / "modeling_anandasky.py")
UPSTREAM_CLASSES = {"AutoConfig": "AnandaSkyConfig", "AutoModel": "AnandaSkyForConditionalGeneration",
                    "AutoModelForCausalLM": "AnandaSkyForConditionalGeneration"}  # auto_map entries, class names
PARAM_RANGE = (38e6, 44e6)  # the checkpoint must stay ~41M parameters: real vision tower + shrunk decoder
TEXT_CONFIG = dict(  # Qwen3-0.6B: hidden 1024, 28 layers, 16/8 heads x 128, MLP 3072, vocab 151936; shrunk
    hidden_size=512, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=128,
    intermediate_size=1792, hidden_act="silu", rope_theta=1000000.0, rms_norm_eps=1e-6,
    max_position_embeddings=40960, tie_word_embeddings=True, initializer_range=0.02,
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>"]
CORPUS = [  # what the tokenizer learns from: English prose, OCR-style lines, numbers and punctuation
    "Recognize the text in this image. Transcribe the handwriting exactly, line by line.",
    "performance analysis of parallel computers and the design of shared memory multiprocessors",
    "The results of the experiment are summarized in Table 3 and discussed in Section 4.2 below.",
    "together. Features include a conduct- ing surface, magnetic and quadrupole moments of the nucleus.",
    "In this paper we describe a method for the automatic recognition of printed and handwritten text.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!",
    "Dear Sir or Madam, thank you for your letter of 12 March 2024; we will reply within two weeks.",
    "Invoice No. 4471-B, total amount due: $1,284.50 (including VAT at 20%). Payment by 30/06/2025.",
    "Chapter One. It was a bright cold day in April, and the clocks were striking thirteen.",
    "Name: Jane Doe  Address: 221B Baker Street, London NW1 6XE  Phone: +44 20 7946 0958",
    "Abstract -- We present a new algorithm whose running time is O(n log n) for all inputs.",
    "Figure 7: Error rate versus the number of training samples, for three different models.",
    "Meeting notes: discuss the budget, review the schedule, assign the remaining tasks to the team.",
    "The University of Washington English Document Image Database contains scanned journal pages.",
    "Encore GigaMax and Stanford DASH are examples of scalable cache-coherent architectures.",
    "shopping list: milk, eggs, bread, butter, apples, coffee, rice, tomatoes, onions and cheese",
    "References [1] A. Smith and B. Jones, Journal of Applied Physics, vol. 12, pp. 345-367, 1991.",
    "Please sign here and return one copy of this form to the office before Friday afternoon.",
    "Water boils at 100 degrees Celsius at sea level; at higher altitudes it boils at a lower temperature.",
    "She said, \"I'll be there at 7:30 p.m.\" -- but nobody knew whether she'd actually come.",
    "user: What does this page say? assistant: Hello World, the page says hello to the world.",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789",
    "! \" # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \\ ] ^ _ ` { | } ~ \t \n",
]


def corpus() -> list[str]:
    """The sentences above, plus number and date strings, so digits and common formats get their own merges."""
    numbers = [f"{i} {i * 37 % 1000:03d} {i / 7:.3f} {1900 + i}-{i % 12 + 1:02d}-{i % 28 + 1:02d}" for i in range(300)]
    return CORPUS * 8 + numbers


def train_tokenizer():
    """Byte-level BPE (what Qwen uses, so any text encodes) with the chat and vision special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_TARGET, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL_TOKENS[1:], model_max_length=40960)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())  # tied weights counted once


def parameter_counts(model) -> dict:
    return {"vision": count(model.vision_model), "bridge": count(model.bridge),
            "decoder": count(model.language_model), "total": count(model)}


def portable_tokenizer_class(folder: Path) -> None:
    """transformers 5 writes its own class name (TokenizersBackend), which 4.x cannot load; both know this one."""
    file = folder / "tokenizer_config.json"
    settings = json.loads(file.read_text(encoding="utf-8"))
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    file.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def quiet_token_ids(tokenizer) -> list[int]:
    """The special tokens and the tokens that decode to whitespace only (newline, spaces, tabs)."""
    return [i for i in range(len(tokenizer)) if i in tokenizer.all_special_ids or not tokenizer.decode([i]).strip()]


def build_model(vocab_size: int, special_ids: dict, quiet_ids: list[int]):
    """The seeded random model: real vision tower and bridge input, shrunk Qwen3 decoder."""
    text = dict(TEXT_CONFIG, vocab_size=vocab_size, bos_token_id=special_ids["<|endoftext|>"],
                eos_token_id=special_ids["<|im_end|>"], pad_token_id=special_ids["<|endoftext|>"])
    config = AnandaSkyConfig(text_config=text, image_token_id=special_ids["<|image_pad|>"],
                             vision_start_token_id=special_ids["<|vision_start|>"],
                             vision_end_token_id=special_ids["<|vision_end|>"])
    torch.manual_seed(SEED)
    model = AnandaSkyForConditionalGeneration(config).eval()
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        embedding.normal_(0.0, EMBED_STD)
        embedding[quiet_ids] *= QUIET_EMBED_STD / EMBED_STD
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = text["eos_token_id"], text["pad_token_id"], None
    gen.do_sample, gen.max_new_tokens = False, 128
    return model


def build(out_dir) -> Path:
    """Write the test checkpoint to `out_dir` (created if needed); returns the folder."""
    hf_logging.disable_progress_bar()
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    special_ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    model = build_model(vocab_size, special_ids, quiet_token_ids(tokenizer))
    counts = parameter_counts(model)
    if not PARAM_RANGE[0] <= counts["total"] <= PARAM_RANGE[1]:
        raise RuntimeError(f"test checkpoint has {counts['total']:,} parameters, outside {PARAM_RANGE}")
    model.save_pretrained(folder)  # config.json with auto_map, weights, generation_config, modeling file
    AnandaSkyProcessor(tokenizer).save_pretrained(folder)  # preprocessor_config.json and the tokenizer files
    portable_tokenizer_class(folder)
    (folder / "parameter_counts.json").write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    mark_test_checkpoint(folder, seed=SEED, parameters=counts["total"], built_by=Path(__file__).name)
    return folder


def check_modeling_file(modeling_file) -> Path:
    """The modeling file to drop in, checked before any work (UserError naming the path)."""
    source = Path(modeling_file)
    if not source.is_file():
        raise UserError(f"upstream-style modeling file {str(source)!r} not found (it lives in the repository's "
                        "tests/fixtures/); run from a full checkout")
    return source


def use_upstream_code(folder, modeling_file=UPSTREAM_FIXTURE) -> Path:
    """Make a built checkpoint folder carry `modeling_file` as its only modeling code, as a real download does:
    the file copied in, config.json's auto_map pointing at it, the patched copy removed. Returns the folder."""
    folder, source = Path(folder), check_modeling_file(modeling_file)
    (folder / source.name).write_bytes(source.read_bytes())
    (folder / "modeling_anandasky_patched.py").unlink(missing_ok=True)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["auto_map"] = {auto: f"{source.stem}.{name}" for auto, name in UPSTREAM_CLASSES.items()}
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, type=Path, help="folder to write (created if needed)")
    parser.add_argument("--upstream_code", action="store_true",
                        help="carry the upstream-style modeling file (flash_attn imports) instead of the patched one, "
                             "for inference.py --remote_code")
    return parser


def main(args) -> int:
    check_output_folder(args.output)
    if args.upstream_code:
        check_modeling_file(UPSTREAM_FIXTURE)  # before the build, not after it
    folder = build(args.output)
    if args.upstream_code:
        use_upstream_code(folder)
    counts = json.loads((folder / "parameter_counts.json").read_text(encoding="utf-8"))
    print(", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()) + " parameters")
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
