"""common.diagnostics.locate: a fault planted in one module of a tiny checkpoint is named exactly, clean models name nothing.

Three real faults: an fp16 overflow in one T5 FFN projection, a bf16-only loss of precision right before one BERT
LayerNorm, a wrong activation in one layer of the causal LM. Then the mechanics on toy models: non-tensor outputs,
shapes that differ, kwargs-only calls, mask fills, a torch.compile-style wrapper, and the spill (at most one
reference record in memory, the spill folder gone afterwards).
"""
from __future__ import annotations

import json
import weakref

import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, T5ForConditionalGeneration

import common.diagnostics.locate as locate_module
from common.diagnostics.locate import compare, format_locate, locate
from tests.support import load_script

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
T5_FFN = "encoder.block.1.layer.1.DenseReluDense"
BERT_PLANT = "encoder.layer.1.attention.output"
LM_ACT = "model.layers.1.mlp.act_fn"


def run_locate(target, reference, inputs: dict, dtype: str, **kwargs) -> dict:
    with torch.inference_mode():
        return locate(target, reference, lambda: target(**inputs), lambda: reference(**inputs), dtype, **kwargs)


def record(report: dict, module: str, call: int = 0) -> dict:
    return next(r for r in report["modules"] if (r["module"], r["call"]) == (module, call))


def encloses(name: str, inner: str) -> bool:
    """`name` is `inner` or one of the modules that contain it (their output includes its error)."""
    return name in (inner, locate_module.ROOT_NAME) or inner.startswith(name + ".")


def assert_clean_before(report: dict, module: str) -> None:
    """Every record before the first call of `module` is within the threshold and finite."""
    index = next(i for i, r in enumerate(report["modules"]) if r["module"] == module)
    assert index > 0 and not any(r["past_threshold"] for r in report["modules"][:index])


# --- 1. fp16 overflow in one T5 FFN --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def t5_pair(tiny_t5):
    reference = T5ForConditionalGeneration.from_pretrained(tiny_t5).eval()
    target = T5ForConditionalGeneration.from_pretrained(tiny_t5, dtype=torch.float16).eval()
    return target, reference


def t5_inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(3, 300, (2, 12), generator=g),
            "decoder_input_ids": torch.randint(3, 300, (2, 6), generator=g)}  # teacher-forced


@pytest.mark.slow
def test_fp16_overflow_in_one_t5_ffn_is_named_first(t5_pair):
    target, reference = t5_pair
    clean = run_locate(target, reference, t5_inputs(), "fp16")
    assert clean["first_divergent_module"] is None and clean["past_threshold"] == 0 and clean["skipped"] == []
    assert [r["call"] for r in clean["modules"] if r["module"] == "encoder.dropout"] == [0, 1]  # used twice
    # transformers keeps T5's `wo` in fp32 and clamps inf after each fp16 T5 layer, so neither can show the
    # overflow: plant it in wi_1 (fp16), whose own output passes 65504 while fp32 still holds it
    assert target.get_submodule(f"{T5_FFN}.wo").weight.dtype == torch.float32
    for model in (target, reference):
        model.get_submodule(f"{T5_FFN}.wi_1").weight.data *= 1e5
    report = run_locate(target, reference, t5_inputs(), "fp16")
    planted = f"{T5_FFN}.wi_1"
    assert report["first_divergent_module"] == report["first_nonfinite_module"] == planted
    assert_clean_before(report, planted)
    hit = record(report, planted)
    assert hit["nonfinite"] > 0 and hit["input_nonfinite"] == 0 and hit["rel_l2"] is None  # made here, not scored
    assert record(report, f"{T5_FFN}.wi_0")["past_threshold"] is False  # the sibling projection is fine
    text = format_locate(report)
    assert f"first divergent module: {planted} (call 0): {hit['nonfinite']} NaN/inf" in text
    assert "so this module made them" in text
    json.dumps(report, allow_nan=False)  # the report goes into the result JSON as it is


# --- 2. bf16 loss of precision before one BERT LayerNorm -----------------------------------------------------------

@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    return load_script("all-MiniLM-L6-v2", "make_tiny_checkpoint").build(tmp_path_factory.mktemp("minilm"))


def bert_pair(folder, dtype: str, bias_shift: float):
    models = [AutoModel.from_pretrained(folder, dtype=DTYPES[dtype]).eval(), AutoModel.from_pretrained(folder).eval()]
    for model in models:  # the same planted checkpoint on both sides
        model.get_submodule(f"{BERT_PLANT}.dense").bias.data += bias_shift
    return models


def bert_inputs() -> dict:
    ids = torch.randint(5, 500, (2, 10), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.slow
def test_bf16_precision_loss_before_bert_layernorm_is_named(minilm):
    # +512 on the dense's bias: fp32's LayerNorm removes it exactly, but in bf16 (ulp 4 at 512) the residual sum
    # feeding the LayerNorm keeps 512 and loses the signal: the dense itself is still within the threshold
    report = run_locate(*bert_pair(minilm, "bf16", 512.0), bert_inputs(), "bf16")
    planted = f"{BERT_PLANT}.LayerNorm"
    assert report["first_divergent_module"] == planted and report["first_nonfinite_module"] is None
    assert_clean_before(report, planted)
    dense = record(report, f"{BERT_PLANT}.dense")
    assert not dense["past_threshold"] and dense["rel_l2"] < 0.01
    hit = record(report, planted)
    assert hit["rel_l2"] > 0.1 and hit["input_rel_l2"] < 0.01 and hit["growth"] > 20
    assert report["largest_growth"]["module"] == planted
    others = [r for r in report["modules"] if not encloses(r["module"], planted)]
    assert len(others) > 30 and max(r["growth"] for r in others) < 5
    assert f"first divergent module: {planted} (call 0): rel_l2 {hit['rel_l2']:.3g}" in format_locate(report)
    same = run_locate(*bert_pair(minilm, "fp32", 512.0), bert_inputs(), "fp32")  # the plant alone is harmless
    assert same["first_divergent_module"] is None and same["past_threshold"] == 0
    assert same["compared"] == report["compared"]


# --- 3. a wrong op in one layer of the causal LM -------------------------------------------------------------------

def lm_pair(folder, dtype: str):
    return (AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype]).eval(),
            AutoModelForCausalLM.from_pretrained(folder).eval())


def lm_inputs(seed: int = 0) -> dict:
    return {"input_ids": torch.randint(4, 500, (2, 9), generator=torch.Generator().manual_seed(seed))}


def test_wrong_activation_in_one_layer_is_named_exactly(tiny_minitron):
    target, reference = lm_pair(tiny_minitron, "fp32")
    target.get_submodule("model.layers.1.mlp").act_fn = nn.GELU()  # Nemotron's is relu2 (squared ReLU)
    report = run_locate(target, reference, lm_inputs(), "fp32")
    assert report["first_divergent_module"] == LM_ACT and report["first_nonfinite_module"] is None
    index = next(i for i, r in enumerate(report["modules"]) if r["module"] == LM_ACT)
    assert all(r["rel_l2"] == 0.0 for r in report["modules"][:index])  # same kernels, same CPU: bit-identical
    hit = report["modules"][index]
    assert hit["input_rel_l2"] == 0.0 and hit["rel_l2"] > 0.1 and hit["growth"] > 1e5
    others = [r for r in report["modules"] if not encloses(r["module"], LM_ACT)]
    assert max(r["growth"] for r in others) < 5
    assert record(report, "model.layers.1.mlp.down_proj")["past_threshold"]  # the error flows on ...
    assert record(report, "model.layers.1.mlp.down_proj")["growth"] < 5  # ... but is not made there
    text = format_locate(report)
    assert f"first divergent module: {LM_ACT} (call 0): rel_l2" in text and f">    22  {LM_ACT}" in text


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_clean_causal_lm_names_no_module(tiny_minitron, dtype):
    report = run_locate(*lm_pair(tiny_minitron, dtype), lm_inputs(), dtype)
    assert report["first_divergent_module"] is None and report["past_threshold"] == 0
    assert report["compared"] == 30 and report["skipped"] == []
    worst = max(r["rel_l2"] for r in report["modules"])
    assert worst == 0.0 if dtype == "fp32" else 1e-3 < worst < report["threshold"]["rel_l2"]  # bf16 rounds, stays in
    assert "no module diverges" in format_locate(report)


def test_records_follow_execution_order_with_call_indexes(tiny_minitron):
    target, reference = lm_pair(tiny_minitron, "fp32")
    first, second = lm_inputs(0), lm_inputs(1)
    with torch.inference_mode():  # two batches: every module runs twice
        report = locate(target, reference, lambda: (target(**first), target(**second)),
                        lambda: (reference(**first), reference(**second)), "fp32")
    keys = [(r["module"], r["call"]) for r in report["modules"]]
    assert len(keys) == 60 and len(set(keys)) == 60
    assert [call for _, call in keys] == [0] * 30 + [1] * 30
    names = [name for name, call in keys if call == 0]
    order = ["model.embed_tokens", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.act_fn",
             "model.layers.0.mlp.down_proj", "model.layers.0.mlp", "model.layers.0", "model.layers.1.input_layernorm",
             "model.norm", "model", "lm_head", "(model)"]  # inner modules complete before the ones holding them
    assert [names.index(name) for name in order] == sorted(names.index(name) for name in order)
    assert names[-1] == "(model)" and record(report, "(model)")["shape"] == [2, 9, 512]


def test_spill_keeps_one_reference_record_in_memory_and_is_removed(tiny_minitron, tmp_path, monkeypatch):
    live, peak, files_at_start = set(), [0], []
    load = locate_module.load_record

    def watched(file):
        if not files_at_start:  # the reference run is over: every record is on disk
            files_at_start.append(len(list(file.parent.glob("*.pt"))))
        rec = load(file)
        live.add(file.name)
        weakref.finalize(rec["outputs"][0], live.discard, file.name)  # fires when the record's tensor is freed
        peak[0] = max(peak[0], len(live))
        return rec

    monkeypatch.setattr(locate_module, "load_record", watched)
    report = run_locate(*lm_pair(tiny_minitron, "fp32"), lm_inputs(), "fp32", spill_dir=tmp_path)
    assert report["spill"]["records"] == files_at_start[0] == report["compared"] == 30
    assert report["spill"]["bytes"] > 0
    assert peak[0] == 1 and not live  # one loaded at a time, none kept
    assert list(tmp_path.iterdir()) == []  # the spill folder is gone


# --- mechanics on toy models -------------------------------------------------------------------------------------

class Odd(nn.Module):
    """Returns a tensor, None, a string and a dict holding a cache object and a second tensor."""

    def forward(self, x):
        return x * 2, None, "text", {"past_key_values": object(), "scores": x.sum(-1)}


class Nothing(nn.Module):
    def forward(self, x):
        return None


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, mask=None, hidden_states=None):
        return self.proj(hidden_states) + mask


class Toy(nn.Module):
    def __init__(self, head_width: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.pre, self.odd, self.nothing, self.block = nn.Linear(8, 8), Odd(), Nothing(), Block()
        self.head = nn.Linear(8, head_width)

    def forward(self, x):
        h = self.pre(x)
        self.nothing(h)
        h = self.odd(h)[0]
        mask = torch.zeros(x.shape[:-1] + (8,), device=x.device)
        return self.head(self.block(mask=mask, hidden_states=h))  # kwargs only, the mask first


def test_non_tensor_outputs_kwargs_and_different_shapes_are_handled():
    reference, target = Toy(), Toy(head_width=6)
    target.pre.load_state_dict(reference.pre.state_dict())
    target.block.load_state_dict(reference.block.state_dict())
    target.pre.bias.data += 0.01  # a small, known error entering everything after `pre`
    report = run_locate(target, reference, {"x": torch.randn(3, 4, 8)}, "fp32")
    names = [r["module"] for r in report["modules"]]
    assert names == ["pre", "odd", "block.proj", "block"]  # `nothing` (no tensor) has no record
    assert record(report, "odd")["tensors"] == 2  # x*2 and the scores; None, the text and the cache ignored
    pre, block = record(report, "pre"), record(report, "block")
    assert block["input_rel_l2"] == pytest.approx(pre["rel_l2"])  # hidden_states, not the kwarg before it
    assert {(s["module"], s["call"]) for s in report["skipped"]} == {("head", 0), ("(model)", 0)}
    assert "output shapes differ: target [[3, 4, 6]] vs reference [[3, 4, 8]]" in report["skipped"][0]["why"]
    assert report["first_divergent_module"] == "pre"
    assert "skipped head (call 0): output shapes differ" in format_locate(report)


def test_torch_compile_wrapper_is_unwrapped():
    class Compiled(nn.Module):  # what torch.compile returns: the eager model under _orig_mod
        def __init__(self, model):
            super().__init__()
            self._orig_mod = model

        def forward(self, x):
            return self._orig_mod(x)

    model = Toy()
    report = run_locate(Compiled(model), Toy(), {"x": torch.randn(2, 8)}, "fp32")
    assert [r["module"] for r in report["modules"]] == ["pre", "odd", "block.proj", "block", "head", "(model)"]
    assert report["first_divergent_module"] is None and report["skipped"] == []


def test_mask_fills_agree_and_real_overflow_counts():
    reference = torch.tensor([[0.5, -2.0, torch.finfo(torch.float32).min, -7e4]])
    target = torch.tensor([[0.5, -2.0, torch.finfo(torch.float16).min, float("-inf")]], dtype=torch.float16)
    stats = compare([target.float()], [reference], [torch.float16])
    assert stats["nonfinite"] == 1 and stats["excluded"] == 1 and stats["rel_l2"] is None  # -7e4 is no mask
    masked = compare([target[:, :3].float()], [reference[:, :3]], [torch.float16])
    assert masked["rel_l2"] == 0.0 and masked["excluded"] == 1 and masked["cosine_min"] == 1.0


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="no thresholds for dtype 'int8'"):
        locate(Toy(), Toy(), lambda: None, lambda: None, "int8")
