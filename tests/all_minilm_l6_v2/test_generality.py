"""The all-MiniLM-L6-v2 encoder on sentence-transformers models it was not written for: a zoo of tiny models saved
by sentence-transformers itself (every pooling mode, both config formats, Dense, Normalize or not, a default prompt,
left padding, a model without token_type_ids, a plain Hugging Face folder), each compared with
SentenceTransformer(folder).encode; and what it must refuse, through the CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from tests.support import load_script

FOLDER = "all-MiniLM-L6-v2"
TOLERANCE = 1e-5  # max abs difference to SentenceTransformer.encode (fp32 on both sides)
BATCH_SIZE = 4  # several batches over TEXTS, with texts of different lengths in each: padding is exercised
MAX_SEQ_LENGTH = 24  # short, so the long texts below are truncated
TEXTS = [
    "A man is eating food.",
    "x",
    "The quick brown fox jumps over the lazy dog while a woman sings a song about the river and the city.",
    "Le chat dort sur le canapé.",
    "Question: how many clips did Natalia sell in April and May altogether?",
    "A man is playing a guitar.",
    " ".join(["The committee reviewed the proposal in detail before the vote."] * 6),  # truncated
    "Quarterly revenue rose 12.5% to $4.31 billion.",
    "UPPER CASE Words And Mixed Case",
    "hi",
    "Sentence embeddings map text to vectors so that similar meanings land close together.",
    "def add(a, b): return a + b",
    "Der Hund schläft im Garten.",
]
CORPUS = TEXTS * 4 + ["Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation ! ? . , ; : ( )"] * 4


def wordpiece_tokenizer(folder: Path, lowercase: bool = False, input_names=None):
    """A BERT-style WordPiece tokenizer ([CLS] text [SEP], right padding) with a ~300-token vocabulary."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls),
                                                                                              ("[SEP]", sep)])
    extra = {"model_input_names": input_names} if input_names else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=MAX_SEQ_LENGTH, **extra)
    fast.save_pretrained(folder)
    return fast


def bpe_tokenizer(folder: Path):
    """A decoder-style byte-level BPE tokenizer: text <eos>, LEFT padding, no token_type_ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", padding_side="left",
                                   model_input_names=["input_ids", "attention_mask"], model_max_length=MAX_SEQ_LENGTH)
    fast.save_pretrained(folder)
    return fast


def backbone(folder: Path, arch: str, width: int = 64):
    """A tiny random Hugging Face model with its tokenizer in `folder`: 2 layers, `width` wide, seeded."""
    torch.manual_seed(0)
    if arch == "bert":
        tok = wordpiece_tokenizer(folder)
        model = tf.BertModel(tf.BertConfig(vocab_size=len(tok), hidden_size=width, num_hidden_layers=2,
                                           num_attention_heads=4, intermediate_size=2 * width,
                                           max_position_embeddings=128))
    elif arch == "distilbert":  # its tokenizer emits token_type_ids, which DistilBertModel does not take
        tok = wordpiece_tokenizer(folder, input_names=["input_ids", "token_type_ids", "attention_mask"])
        model = tf.DistilBertModel(tf.DistilBertConfig(vocab_size=len(tok), dim=width, n_layers=2, n_heads=4,
                                                       hidden_dim=2 * width, max_position_embeddings=128))
    else:  # qwen3: a decoder (causal attention, rotary positions), left padded
        tok = bpe_tokenizer(folder)
        model = tf.Qwen3Model(tf.Qwen3Config(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             head_dim=width // 4, max_position_embeddings=128,
                                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(folder)
    return folder


def save_st(folder: Path, arch: str, pooling, width: int = 64, dense: int | None = None, normalize=False,
            include_prompt=True, **st_kwargs) -> Path:
    """A sentence-transformers model saved by the installed sentence-transformers (its current format)."""
    transformer = Transformer(str(backbone(folder / "hf", arch, width)))
    transformer.max_seq_length = MAX_SEQ_LENGTH
    modules = [transformer, Pooling(width, pooling, include_prompt=include_prompt)]
    modes = 1 if isinstance(pooling, str) else len(pooling)
    if dense:
        torch.manual_seed(1)
        modules.append(Dense(width * modes, dense, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu", **st_kwargs).save(str(folder / "st"))
    return folder / "st"


def legacy_folder(folder: Path) -> Path:
    """The format sentence-transformers wrote before v5: `sentence_transformers.models.*` types, the boolean
    pooling keys (two modes on: concatenated in ST's fixed order), max_seq_length and do_lower_case in
    sentence_bert_config.json."""
    backbone(folder, "bert")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 20, "do_lower_case": True}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 64, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": True, "pooling_mode_mean_sqrt_len_tokens": True}))
    (folder / "2_Normalize").mkdir()
    return folder


ZOO = {  # name -> builder(folder) -> model folder
    "bert64_cls_normalize": lambda d: save_st(d, "bert", "cls", normalize=True),
    "distilbert32_mean_no_token_types": lambda d: save_st(d, "distilbert", "mean", width=32),
    "bert48_max": lambda d: save_st(d, "bert", "max", width=48),
    "bert64_mean_sqrt_len": lambda d: save_st(d, "bert", "mean_sqrt_len_tokens", normalize=True),
    "bert64_weightedmean_prompt_excluded": lambda d: save_st(
        d, "bert", "weightedmean", include_prompt=False, prompts={"query": "query: some words first "},
        default_prompt_name="query"),
    "qwen3_lasttoken_left_padding": lambda d: save_st(d, "qwen3", "lasttoken", normalize=True),
    "bert64_mean_then_cls": lambda d: save_st(d, "bert", ["mean", "cls"]),
    "bert64_cls_dense16_normalize": lambda d: save_st(d, "bert", "cls", dense=16, normalize=True),
    "legacy_format_max_meansqrt_lowercase": legacy_folder,
    "plain_hf_no_modules_json": lambda d: backbone(d, "bert"),
}


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> dict[str, Path]:
    hf_logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("st-zoo")
    return {name: build(root / name) for name, build in ZOO.items()}


@pytest.fixture(scope="module")
def inference():
    return load_script(FOLDER, "inference")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_matches_sentence_transformers(name, zoo, inference):
    peer = SentenceTransformer(str(zoo[name]), device="cpu")
    want = peer.encode(TEXTS, batch_size=BATCH_SIZE)
    encoder = getattr(inference, inference.MODEL_CLASS)(str(zoo[name]), device="cpu", dtype="fp32")
    got = encoder.encode(TEXTS, batch_size=BATCH_SIZE)
    assert got.shape == want.shape == (len(TEXTS), peer.get_embedding_dimension())
    assert encoder.embedding_dim == peer.get_embedding_dimension()
    assert encoder.max_seq_length == peer.max_seq_length
    assert encoder.last_stats["truncated"] >= 1  # the long text was cut, as in sentence-transformers
    diff = float(np.abs(got - want).max())
    print(f"{name}: max abs diff to SentenceTransformer.encode {diff:.2e}")
    assert diff <= TOLERANCE, f"{name}: max abs diff {diff:.2e}"


def test_zoo_covers_what_it_claims(zoo):
    """The fixtures really are what their names say (a builder that silently fell back would test nothing)."""
    read = lambda name, path: json.loads((zoo[name] / path).read_text())  # noqa: E731
    assert read("bert64_cls_normalize", "1_Pooling/config.json")["pooling_mode"] == "cls"
    assert read("bert64_mean_then_cls", "1_Pooling/config.json")["pooling_mode"] == ["mean", "cls"]
    assert "pooling_mode" not in read("legacy_format_max_meansqrt_lowercase", "1_Pooling/config.json")
    assert read("bert64_weightedmean_prompt_excluded", "config_sentence_transformers.json")["default_prompt_name"]
    assert json.loads((zoo["qwen3_lasttoken_left_padding"] / "tokenizer_config.json").read_text())[
        "padding_side"] == "left"
    assert not (zoo["plain_hf_no_modules_json"] / "modules.json").exists()

    # the tokenizer emits token_type_ids, the model's forward has no such argument: they must be left out
    assert "token_type_ids" in AutoTokenizer.from_pretrained(zoo["distilbert32_mean_no_token_types"])("hi")


def test_width_pooling_and_limit_are_read_from_the_checkpoint(zoo, inference, cli, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    assert cli(inference, "--model_path", zoo["bert64_cls_dense16_normalize"], "--text", "hello there",
               "--text", "x", "--device", "cpu", "--output", out) == 0
    printed = capsys.readouterr().out
    assert "cls pooling -> Dense 64->16 Tanh -> Normalize: 16 floats" in printed and "(2, 16)" in printed
    assert np.load(out).shape == (2, 16)
    assert cli(inference, "--model_path", zoo["plain_hf_no_modules_json"], "--text", "hi", "--device", "cpu") == 0
    assert "no modules.json" in capsys.readouterr().out


def broken_copy(zoo, tmp_path, name: str, edit) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(zoo[name], folder)
    edit(folder)
    return folder


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


REFUSED = {  # case -> (zoo model, edit, words the one-line error must contain)
    "unknown module type": ("bert64_cls_normalize", lambda d: edit_json(d / "modules.json", lambda m: m.append(
        {"idx": 3, "name": "3", "path": "3_LayerNorm", "type": "sentence_transformers.models.LayerNorm"})),
        "LayerNorm"),
    "custom module code": ("bert64_cls_normalize", lambda d: edit_json(d / "modules.json", lambda m: m[1].update(
        type="custom_st.MyPooling")), "custom_st.MyPooling"),
    "pooling dimension mismatch": ("bert64_cls_normalize", lambda d: edit_json(
        d / "1_Pooling" / "config.json", lambda c: c.update(embedding_dimension=32)), "hidden size is 64"),
    "unknown pooling mode": ("bert48_max", lambda d: edit_json(
        d / "1_Pooling" / "config.json", lambda c: c.update(pooling_mode="median")), "median"),
    "unknown activation": ("bert64_cls_dense16_normalize", lambda d: edit_json(
        d / "2_Dense" / "config.json", lambda c: c.update(activation_function="mylib.Swish")), "mylib.Swish"),
    "dense width mismatch": ("bert64_cls_dense16_normalize", lambda d: edit_json(
        d / "2_Dense" / "config.json", lambda c: c.update(in_features=128)), "takes 128 inputs"),
    "not an embedding model": ("bert48_max", lambda d: edit_json(
        d / "config_sentence_transformers.json", lambda c: c.update(model_type="SparseEncoder")), "SparseEncoder"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_checkpoints_are_refused(case, zoo, inference, cli, tmp_path, capsys):
    name, edit, words = REFUSED[case]
    folder = broken_copy(zoo, tmp_path, name, edit)
    assert cli(inference, "--model_path", folder, "--text", "hi", "--device", "cpu") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and len(err.splitlines()) == 1, err
