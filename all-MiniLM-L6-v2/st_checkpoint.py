"""What a sentence-transformers folder asks for, read the way sentence-transformers 6.2 reads it, or refused.

A sentence-transformers checkpoint is a pipeline listed in modules.json: a Transformer (the Hugging Face model and
tokenizer, settings in sentence_bert_config.json), a Pooling (1_Pooling/config.json), then optional Dense layers
and a Normalize. Both formats sentence-transformers has written are read:

    modules.json types   old `sentence_transformers.models.Pooling`, new `sentence_transformers.sentence_transformer.
                         modules.pooling.Pooling`, `sentence_transformers.base.modules.dense.Dense`, ...
    pooling config       legacy booleans {"word_embedding_dimension", "pooling_mode_cls_token": true, ...} and v5.2+
                         {"embedding_dimension", "pooling_mode": "cls" | [...], "include_prompt"}
    max sequence length  sentence_bert_config.json "max_seq_length" (before v6), else the tokenizer's
                         model_max_length (where v6 saves it), capped by the model's positions

A folder without modules.json is a plain Hugging Face encoder: mean pooling, no normalisation, which is what
SentenceTransformer(folder) builds. Another kind of model (a causal LM or an encoder-decoder without modules.json,
a checkpoint that ships its own code) is refused from its config.json, naming its architecture. Anything this port does not implement (another
module type, a Dense activation outside torch.nn, chat-template or processing settings, another model type) is
refused with one line, never skipped: a skipped module would give silently different vectors.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import CONFIG_MAPPING

from common.cli import UserError, first_line
from common.pooling import LEGACY_MODE_KEYS, pooling_modes

SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")  # the class names this port implements
# sentence_bert_config.json and the per-architecture names sentence-transformers wrote before it (still read)
TRANSFORMER_CONFIG_FILES = ("sentence_bert_config.json", "sentence_roberta_config.json",
                            "sentence_distilbert_config.json", "sentence_camembert_config.json",
                            "sentence_albert_config.json", "sentence_xlm-roberta_config.json",
                            "sentence_xlnet_config.json")
POOLING_KEYS = {"embedding_dimension", "word_embedding_dimension", "pooling_mode", "include_prompt",
                *LEGACY_MODE_KEYS}
DENSE_KEYS = {"in_features", "out_features", "bias", "activation_function", "use_residual", "module_input_name",
              "module_output_name"}
SENTENCE_EMBEDDING = "sentence_embedding"  # the feature Pooling writes and Dense/Normalize must read
TEXT_MODALITY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
DEFAULT_ACTIVATION = "torch.nn.modules.activation.Tanh"  # sentence-transformers' Dense default
# config.json architectures that generate text: without modules.json naming a pooling, such a folder is a generator
# given by mistake (its lm_head would also be refused as unexpected weights), not an embedding model
GENERATOR_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForSeq2SeqLM")


@dataclass
class DenseLayer:
    folder: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str
    use_residual: bool


@dataclass
class Checkpoint:
    """Everything the encoder needs from a folder besides the weights; `notes` says where each piece came from."""
    transformer_dir: Path
    settings: dict  # sentence_bert_config.json ({} for a plain Hugging Face folder)
    pooling: list[str]
    pooling_dim: int | None  # the token width the Pooling config declares (None: not declared)
    include_prompt: bool = True
    head: list = field(default_factory=list)  # DenseLayer or "normalize", in modules.json order
    prompt: str | None = None  # the default prompt prepended to every text
    truncate_dim: int | None = None
    notes: list[str] = field(default_factory=list)


def read_json(path: Path, what: str) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {what} {str(path)!r} ({type(exc).__name__}); the checkpoint is damaged") from None


def module_kind(entry: dict) -> str:
    """'Transformer' | 'Pooling' | 'Dense' | 'Normalize' from a modules.json entry, old or new class path."""
    type_name = str(entry.get("type", ""))
    name = type_name.rsplit(".", 1)[-1]
    if not type_name.startswith("sentence_transformers.") or name not in SUPPORTED_MODULES:
        raise UserError(f"modules.json lists module type {type_name!r}, which this port does not implement "
                        f"(it runs {', '.join(SUPPORTED_MODULES)}); use SentenceTransformer for this model")
    return name


def read_checkpoint(model_dir: Path) -> Checkpoint:
    """The pipeline of a sentence-transformers folder (or of a plain Hugging Face one), checked, weights unread."""
    modules_file = model_dir / "modules.json"
    if not modules_file.exists():
        return plain_checkpoint(model_dir)
    entries = read_json(modules_file, "modules.json")
    kinds = [module_kind(entry) for entry in entries]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds.count("Transformer") != 1 or kinds.count("Pooling") != 1:
        raise UserError(f"modules.json runs {' -> '.join(kinds)}; this port needs Transformer -> Pooling, then "
                        "optional Dense and Normalize modules")
    folders = [model_dir / entry.get("path", "") for entry in entries]
    check_architecture(folders[0], plain=False)
    checkpoint = Checkpoint(folders[0], read_transformer_settings(folders[0]), *read_pooling(folders[1]))
    for kind, folder in zip(kinds[2:], folders[2:]):
        checkpoint.head.append(read_dense(folder) if kind == "Dense" else read_normalize(folder))
    read_model_settings(model_dir, checkpoint)
    checkpoint.notes.insert(0, f"modules.json: {' -> '.join(kinds)}")
    return checkpoint


def plain_checkpoint(model_dir: Path) -> Checkpoint:
    """No modules.json: SentenceTransformer(folder) adds mean pooling to a plain encoder. A text generator (causal
    LM, encoder-decoder) is refused by check_architecture: its pooled states are no sentence embedding."""
    check_architecture(model_dir, plain=True)
    return Checkpoint(model_dir, {}, ["mean"], None, notes=[
        "no modules.json: a plain Hugging Face model, so mean pooling and no normalisation, as "
        "sentence-transformers does"])


def check_architecture(folder: Path, plain: bool) -> None:
    """Refuse, from config.json alone (before any weight loads), a folder that holds another kind of model than an
    encoder this port runs: code shipped with the checkpoint, an encoder-decoder, or (without modules.json to say
    how to pool it) a text generator. The message names the architecture found."""
    if not (folder / "config.json").is_file():
        what = "neither modules.json nor config.json" if plain else "no config.json"
        raise UserError(f"{str(folder)!r} has {what}: it is not a sentence-transformers or Hugging Face model "
                        "folder; pass one to --model_path")
    config = read_json(folder / "config.json", "config.json")
    model_type = config.get("model_type") or "no model_type"
    arch = f"{(config.get('architectures') or ['an unnamed architecture'])[0]} ({model_type})"
    if config.get("auto_map") or model_type not in CONFIG_MAPPING:
        reason = "a model whose code ships with the checkpoint, which this port does not run"
    elif config.get("is_encoder_decoder"):
        reason = "an encoder-decoder text generator"
    elif plain and arch.split(" ")[0].endswith(GENERATOR_HEADS):
        reason = "a text generator whose pooled states are no sentence embedding"
    else:
        return
    raise UserError(f"{str(folder)!r} is not a BERT-like sentence-transformers encoder checkpoint: it holds {arch}, "
                    f"{reason}; pass a sentence-transformers folder (modules.json) or a plain encoder such as "
                    "BertModel")


def read_transformer_settings(folder: Path) -> dict:
    """sentence_bert_config.json (or a legacy name), with the settings this port cannot honour refused."""
    file = next((folder / name for name in TRANSFORMER_CONFIG_FILES if (folder / name).exists()), None)
    settings = read_json(file, "Transformer config") if file else {}
    task = settings.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise UserError(f"{file.name} sets transformer_task {task!r}; this port runs feature-extraction models only")
    if settings.get("modality_config", TEXT_MODALITY) != TEXT_MODALITY:
        raise UserError(f"{file.name} sets modality_config {settings['modality_config']!r}; this port runs text "
                        "through the model's forward (last_hidden_state) only")
    if settings.get("module_output_name", "token_embeddings") != "token_embeddings":
        raise UserError(f"{file.name} sets module_output_name {settings['module_output_name']!r}; this port "
                        "pools token_embeddings only")
    if settings.get("processing_kwargs"):
        raise UserError(f"{file.name} sets processing_kwargs {settings['processing_kwargs']!r}, which this port "
                        "does not apply; use SentenceTransformer for this model")
    for key in ("model_kwargs", "model_args", "config_kwargs", "config_args"):
        extra = {k: v for k, v in (settings.get(key) or {}).items() if k not in ("trust_remote_code", "dtype",
                                                                                  "torch_dtype")}
        if extra:
            raise UserError(f"{file.name} passes {key} {extra!r} to the model, which this port does not apply")
    return settings


def read_pooling(folder: Path) -> tuple[list[str], int, bool]:
    """(modes, declared token width, include_prompt) from 1_Pooling/config.json, legacy or current format."""
    config = read_json(folder / "config.json", "Pooling config")
    unknown = sorted(set(config) - POOLING_KEYS)
    if unknown:
        raise UserError(f"{folder / 'config.json'} has keys this port does not know: {', '.join(unknown)}")
    try:
        modes = pooling_modes(config)
    except ValueError as exc:
        raise UserError(f"{folder / 'config.json'}: {exc}") from None
    width = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    if not isinstance(width, int):
        raise UserError(f"{folder / 'config.json'} declares no embedding_dimension; the checkpoint is damaged")
    return modes, width, bool(config.get("include_prompt", True))


def read_dense(folder: Path) -> DenseLayer:
    config = read_json(folder / "config.json", "Dense config")
    unknown = sorted(set(config) - DENSE_KEYS)
    if unknown:
        raise UserError(f"{folder / 'config.json'} has keys this port does not know: {', '.join(unknown)}")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, SENTENCE_EMBEDDING) not in (None, SENTENCE_EMBEDDING):
            raise UserError(f"{folder / 'config.json'} sets {key} {config[key]!r}; this port applies Dense "
                            "layers to the sentence embedding only")
    layer = DenseLayer(folder, int(config["in_features"]), int(config["out_features"]), bool(config.get("bias", True)),
                       config.get("activation_function") or DEFAULT_ACTIVATION, bool(config.get("use_residual")))
    activation_class(layer.activation, folder)  # refuse an unknown activation before any weight loads
    return layer


def read_normalize(folder: Path) -> str:
    config = read_json(folder / "config.json", "Normalize config") if (folder / "config.json").exists() else {}
    if config.get("module_input_name", SENTENCE_EMBEDDING) != SENTENCE_EMBEDDING:
        raise UserError(f"{folder / 'config.json'} normalises {config['module_input_name']!r}; this port "
                        "normalises the sentence embedding only")
    return "normalize"


def read_model_settings(model_dir: Path, checkpoint: Checkpoint) -> None:
    """config_sentence_transformers.json: the model type, the default prompt and truncate_dim."""
    file = model_dir / "config_sentence_transformers.json"
    settings = read_json(file, "config_sentence_transformers.json") if file.exists() else {}
    model_type = settings.get("model_type", "SentenceTransformer")
    if model_type != "SentenceTransformer":
        raise UserError(f"{file.name} says this is a {model_type}, not a SentenceTransformer embedding model")
    name = settings.get("default_prompt_name")
    if name is not None:
        prompts = settings.get("prompts") or {}
        if name not in prompts:
            raise UserError(f"{file.name} names default prompt {name!r}, which its prompts ({list(prompts)}) lack")
        checkpoint.prompt = prompts[name] or None
        checkpoint.notes.append(f"default prompt {name!r} = {prompts[name]!r} is prepended to every text"
                                + ("" if checkpoint.include_prompt else ", and left out of the pooling"))
    checkpoint.truncate_dim = settings.get("truncate_dim")


def activation_class(path: str, folder: Path) -> type:
    """A torch.nn activation class from its dotted path, as sentence-transformers loads it without remote code."""
    module_name, _, class_name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name) if path.startswith("torch.") else None
    except (ImportError, AttributeError, ValueError):
        found = None
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        raise UserError(f"{folder / 'config.json'} asks for activation {path!r}, which is not a torch.nn module "
                        "class; this port runs torch.nn activations only")
    return found


class DenseModule(torch.nn.Module):
    """sentence-transformers' Dense: activation(linear(x)) [+ x or a projection of x]; same parameter names."""

    def __init__(self, layer: DenseLayer):
        super().__init__()
        self.linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
        self.activation = activation_class(layer.activation, layer.folder)()
        self.use_residual = layer.use_residual
        if layer.use_residual and layer.in_features != layer.out_features:
            self.residual = torch.nn.Linear(layer.in_features, layer.out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        return out


def load_dense(layer: DenseLayer) -> DenseModule:
    """A Dense layer with its weights (model.safetensors or pytorch_model.bin), loaded strictly."""
    module = DenseModule(layer)
    safetensors, pickle = layer.folder / "model.safetensors", layer.folder / "pytorch_model.bin"
    if not (safetensors.exists() or pickle.exists()):
        raise UserError(f"Dense folder {str(layer.folder)!r} has no model.safetensors or pytorch_model.bin")
    try:
        if safetensors.exists():
            weights = load_file(str(safetensors))
        else:
            weights = torch.load(pickle, map_location="cpu", weights_only=True)
        module.load_state_dict(weights, strict=True)
    except Exception as exc:  # safetensors and torch.load raise their own types; all mean a bad file
        raise UserError(f"Dense weights in {str(layer.folder)!r} cannot be loaded into its config "
                        f"({layer.in_features} -> {layer.out_features}): {first_line(exc)}") from None
    return module.eval()
