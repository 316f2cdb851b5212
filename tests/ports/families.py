"""The family-specific half of the port contract: one tester class per MODEL_FAMILY, chosen by the folder's identity
block (inference.py's MODEL_FAMILY, read without importing it). The contract (tests/ports/test_contract*.py) runs the
same checks on every model folder and asks the folder's tester only what differs between families: the inference
CLI's input and what a correct output looks like, what the Python class does, the parity record's parts, the task
eval's data, the benchmark's arguments, the empty-input flags, the serve request, and how the test checkpoint is built.

A tester names no model folder: a folder's modules are loaded by the contract from the folder itself, and the class
is the one its MODEL_CLASS names. A new folder of a known family (what `common.porting.new_port` writes) is tested
with nothing to add; a new family needs one class here, registered in TESTERS.

Module helpers: FOLDERS (every model folder), family_tester(folder) (its tester), folder_params(applies) (the
contract's pytest parameters). The interface of a tester (each method gets what it checks; nothing is kept between
tests):
    name, checkpoint_script, builder_takes_from, task_script, parity_parts, input_file_flags   class attributes
    parity_args / locate_args               eval_accuracy.py arguments of the PASS runs / the --locate, --trace_ops runs
    parity_output(evaluator, tmp, mp, dtype) -> (argv, path of the parity JSON)
    check_parity(result, dtype, evaluator)  the family's part of the parity record
    inference_input(tmp, data) -> argv      a valid input to inference.py
    empty_input(script, tmp) -> argv|None   an empty input file for inference.py / eval_accuracy.py (None: no file flag)
    check_inference_cli(run, module, checkpoint, tmp, data, out)   inference.py on the checkpoint (run(*argv) adds
                                            --model_path and --device; out() is what it printed)
    check_class(module, checkpoint, data)   the Python class (module.MODEL_CLASS) on the checkpoint
    task_args(data) / check_task(result, output, module)           the task eval on a few real samples
    benchmark_args / prepare_benchmark(module, mp) / check_benchmark(result, output, rerun)
    check_serve(server, module, checkpoint, data)                  one request of the family's kind to serve.py
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from common.cli import UserError
from common.porting.folders import model_folders
from common.porting.new_port import read_identity
from tests.serving.client import post
from tests.support import REPO_ROOT

OCR_DATA = ("ocr", "uw3_500")  # under the shared data folder: the custom (OCR) family's scans


class FamilyTester:
    name = ""  # the MODEL_FAMILY this class tests
    checkpoint_script = "make_tiny_checkpoint"  # FOLDER/<this>.py: build(out) writes the test checkpoint
    builder_takes_from = True  # build(out, source) and --from SOURCE: a tiny copy of another model's architecture
    task_script = ""  # FOLDER/<this>.py: the task eval
    parity_parts: frozenset = frozenset()  # the parts of eval_accuracy.py's record
    parity_args: tuple = ()  # extra eval_accuracy.py arguments for the fp32/bf16 PASS runs
    locate_args: tuple = ()  # ... for the runs with a planted wrong op and with --trace_ops --locate
    default_parity_output = False  # True: the PASS runs check eval_accuracy's default output (HERE/results/...)
    input_file_flags: dict = {}  # script -> the flag that names an input file
    benchmark_args: tuple = ()

    def __init__(self, folder: str):
        self.folder = folder
        self.identity = read_identity(REPO_ROOT / folder)

    # ---- the model --------------------------------------------------------------------------------------------
    def model(self, module, checkpoint: Path, **kwargs):
        """The folder's class (the one MODEL_CLASS names) on the checkpoint, on the CPU."""
        return getattr(module, module.MODEL_CLASS)(str(checkpoint), device="cpu", **kwargs)

    # ---- eval_accuracy.py -------------------------------------------------------------------------------------
    def parity_output(self, evaluator, tmp_path: Path, monkeypatch, dtype: str) -> tuple[list, Path]:
        if not self.default_parity_output:
            return ["--output", tmp_path / "parity.json"], tmp_path / "parity.json"
        monkeypatch.setattr(evaluator, "HERE", tmp_path)  # the default output, under a folder of the test's own
        return [], tmp_path / "results" / f"parity_test_checkpoint_cpu_{dtype}.json"

    def check_parity(self, result: dict, dtype: str, evaluator) -> None:
        raise NotImplementedError

    # ---- inputs -----------------------------------------------------------------------------------------------
    def inference_input(self, tmp_path: Path, shared_data: Path) -> list:
        raise NotImplementedError

    def empty_input(self, script: str, tmp_path: Path) -> list | None:
        """Arguments naming an empty input file for `script`: no bytes for inference.py, blank lines for
        eval_accuracy.py (both are 'empty'). None where the script takes no input file."""
        if script not in self.input_file_flags:
            return None
        path = tmp_path / "empty.txt"
        path.write_text("" if script == "inference" else "\n \n", encoding="utf-8")
        return [self.input_file_flags[script], path]

    # ---- the rest, per family ---------------------------------------------------------------------------------
    def check_inference_cli(self, run, module, checkpoint: Path, tmp_path: Path, shared_data: Path, out: str):
        raise NotImplementedError

    def check_class(self, module, checkpoint: Path, shared_data: Path) -> None:
        raise NotImplementedError

    def task_args(self, shared_data: Path) -> list:
        raise NotImplementedError

    def check_task(self, result: dict, output: Path, module) -> None:
        raise NotImplementedError

    def prepare_benchmark(self, module, monkeypatch) -> None:
        """Anything a benchmark needs to stay short on a loaded CPU (nothing by default)."""

    def check_benchmark(self, result: dict, output: Path, rerun) -> None:
        """The family's part of the benchmark record; rerun(*argv) runs benchmark.py again, to the same output."""

    def check_serve(self, server, module, checkpoint: Path, shared_data: Path) -> None:
        raise NotImplementedError

    # ---- shared by the generating families --------------------------------------------------------------------
    @staticmethod
    def answer(server, path: str, body: dict) -> dict:
        """A greedy request to the server; its (200) JSON answer."""
        status, answer, _ = post(server.url, path, {"model": server.name, "temperature": 0, **body})
        assert status == 200, answer
        return answer

    @staticmethod
    def jsonl_lines(output: Path) -> list[dict]:
        return [json.loads(line) for line in output.with_suffix(".jsonl").read_text(encoding="utf-8").splitlines()]


class SentenceTransformersTester(FamilyTester):
    name = "sentence-transformers"
    task_script = "eval_stsb"
    parity_parts = frozenset({"embeddings", "token_states"})
    input_file_flags = {"inference": "--batch_file", "eval_accuracy": "--file"}
    benchmark_args = ("--batch_sizes", "2,4", "--num_texts", 12, "--repeats", 1)
    TEXTS = ["A man is playing a guitar.", "x", "Le chat dort sur le canapé pendant que la pluie tombe.",
             "Quarterly revenue rose 12.5% to $4.31 billion.", "Sentence embeddings map text to vectors."]

    def check_parity(self, result, dtype, evaluator):
        for part in result["parts"].values():
            assert part["dtype_under_test"] == dtype
            assert part["thresholds"]["rel_l2"] == {"max": 1e-4 if dtype == "fp32" else 2e-2}

    def inference_input(self, tmp_path, shared_data):
        return ["--text", "hi"]

    def check_inference_cli(self, run, module, checkpoint, tmp_path, shared_data, out):
        texts = tmp_path / "texts.txt"
        texts.write_text("\n".join(self.TEXTS) + "\n", encoding="utf-8")
        vectors_file = tmp_path / "emb.npy"
        assert run("--batch_file", texts, "--output", vectors_file) == 0
        vectors = np.load(vectors_file)
        width = self.model(module, checkpoint).embedding_dim
        assert vectors.shape == (len(self.TEXTS), width) and np.isfinite(vectors).all()
        assert f"({len(self.TEXTS)}, {width})" in out()

    def check_class(self, module, checkpoint, shared_data):
        encoder = self.model(module, checkpoint, dtype="fp32")
        peer = SentenceTransformer(str(checkpoint), device="cpu")
        got, want = encoder.encode(self.TEXTS, batch_size=2), peer.encode(self.TEXTS, batch_size=2)
        assert got.shape == want.shape == (len(self.TEXTS), peer.get_embedding_dimension())
        assert float(np.abs(got - want).max()) <= 1e-5
        assert encoder.encode([]).shape == (0, encoder.embedding_dim)
        assert encoder.encode("one text").shape == (1, encoder.embedding_dim)
        assert encoder.last_stats["texts"] == 1 and encoder.last_stats["nonfinite_rows"] == 0

    def task_args(self, shared_data):
        return ["--data", shared_data / "stsb" / "test.tsv", "--limit", 40]

    def check_task(self, result, output, module):
        assert result["pairs"] == 40 and result["headline"]["metric"] and -100 <= result["headline"]["value"] <= 100
        low, high = result["spearman_ci95"]
        assert low <= result["spearman_x100"] <= high and len(result["data_sha256"]) == 64

    def prepare_benchmark(self, module, monkeypatch):
        monkeypatch.setattr(module, "GEMM_PROBE_SIZE", 256)  # the device-peak probe: seconds on a loaded CPU otherwise

    def check_benchmark(self, result, output, rerun):
        assert [r["batch_size"] for r in result["rows"]] == [2, 4]
        head = result["headline"]
        assert head["metric"] == "texts/s at batch 4" and head["peer"]
        assert head["ratio"] == result["rows"][-1]["speedup"]
        assert all(r["vs_peer"]["max_abs_diff"] <= 1e-5 for r in result["rows"])  # the peer runs the same folder
        assert rerun("--batch_sizes", "2", "--num_texts", 4, "--repeats", 1, "--no_peer") == 0
        assert json.loads(output.read_text())["headline"]["ratio"] is None

    def check_serve(self, server, module, checkpoint, shared_data):
        answer = self.answer(server, "/v1/embeddings", {"input": self.TEXTS[:2], "encoding_format": "float"})
        got = np.array([item["embedding"] for item in answer["data"]], dtype=np.float32)
        want = self.model(module, checkpoint).encode(self.TEXTS[:2])
        assert [item["index"] for item in answer["data"]] == [0, 1] and got.shape == want.shape
        assert float(np.abs(got - want).max()) <= 1e-5


class Seq2SeqTester(FamilyTester):
    name = "seq2seq"
    task_script = "eval_stsb"
    parity_parts = frozenset({"encoder", "decoder_logits", "generation", "overflow"})
    parity_args = ("--max_new_tokens", 8)
    locate_args = ("--max_new_tokens", 4)
    input_file_flags = {"inference": "--batch_file", "eval_accuracy": "--file"}
    benchmark_args = ("--encoder_batch_sizes", "1,2", "--input_tokens", 8, "--requests", 4, "--gen_batch_size", 2,
                      "--max_new_tokens", 3, "--num_beams", 2, "--repeats", 1)
    PROMPTS = ["summarize: The council met.", "Hi"]

    def check_parity(self, result, dtype, evaluator):
        rel_l2_max = 1e-4 if dtype == "fp32" else 2e-2
        encoder = result["parts"]["encoder"]
        assert encoder["thresholds"]["rel_l2"] == {"max": rel_l2_max} and encoder["rel_l2"] <= rel_l2_max
        assert result["prompts"] == len(evaluator.PROBE_PROMPTS) + len(evaluator.read_examples())
        assert result["truncated"] == 1
        generation = result["parts"]["generation"]
        assert generation["unexplained_divergences"] == 0 and generation["sequences"] == result["prompts"]
        if dtype == "fp32":
            assert generation["exact_match_rate"] == 1.0 and result["parts"]["decoder_logits"]["top1_agreement"] == 1.0

    def inference_input(self, tmp_path, shared_data):
        return ["--text", "Hi"]

    def check_inference_cli(self, run, module, checkpoint, tmp_path, shared_data, out):
        rows_file = tmp_path / "out.jsonl"
        assert run("--text", self.PROMPTS[0], "--text", self.PROMPTS[1], "--max_new_tokens", 4,
                   "--output", rows_file) == 0
        rows = [json.loads(line) for line in rows_file.read_text(encoding="utf-8").splitlines()]
        assert [r["prompt"] for r in rows] == self.PROMPTS
        assert all(isinstance(r["generated_text"], str) for r in rows)
        assert f"wrote {rows_file}" in out()

    def check_class(self, module, checkpoint, shared_data):
        model = self.model(module, checkpoint, dtype="fp32")
        texts = model.summarize(self.PROMPTS, max_new_tokens=4)
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
        assert model(["Hi"], max_new_tokens=4) == [{"generated_text": texts[1]}]

    def task_args(self, shared_data):
        return ["--data", shared_data / "stsb" / "test.tsv", "--limit", 8]

    def check_task(self, result, output, module):
        assert result["headline"]["metric"] == module.METRIC and result["headline"]["value"] == result["spearman_x100"]
        assert result["pairs"] == 8 and 0 <= result["unparsed"] <= 8
        log = self.jsonl_lines(output)
        assert log[0]["type"] == "config" and [r["id"] for r in log[1:]] == list(range(8))

    def check_benchmark(self, result, output, rerun):
        greedy = next(row for row in result["generation"] if row["mode"] == "greedy")
        assert result["headline"]["ratio"] == greedy["ratio"]

    def check_serve(self, server, module, checkpoint, shared_data):
        answer = self.answer(server, "/v1/completions", {"prompt": self.PROMPTS[0], "max_tokens": 4})
        assert [c["text"] for c in answer["choices"]] == self.model(module, checkpoint).summarize(
            self.PROMPTS[:1], max_new_tokens=4)


class CausalLMTester(FamilyTester):
    name = "causal-lm"
    task_script = "eval_gsm8k"
    parity_parts = frozenset({"prefill_logits", "generation"})
    parity_args = ("--max_new_tokens", 8)
    locate_args = ("--max_new_tokens", 4)
    default_parity_output = True
    input_file_flags = {"eval_accuracy": "--file"}  # inference.py takes --prompt only
    benchmark_args = ("--input_tokens", 8, "--output_tokens", 4, "--num_requests", 2, "--no_compile")
    PROMPTS = ["Question: 2 + 3 =", "x"]

    def check_parity(self, result, dtype, evaluator):
        for part in result["parts"].values():
            assert part["dtype_under_test"] == dtype
        logits = result["parts"]["prefill_logits"]
        assert logits["shape"][0] == sum(result["prompt_tokens"]) and logits["thresholds"]["top1_agreement"]
        assert (logits["rel_l2"] > 0) is (dtype == "bf16")  # fp32 on the CPU is the reference's own computation

    def inference_input(self, tmp_path, shared_data):
        return []  # no --prompt: inference.py's default prompt is a valid input

    def check_inference_cli(self, run, module, checkpoint, tmp_path, shared_data, out):
        assert run("--prompt", self.PROMPTS[0], "--max_new_tokens", 4) == 0
        assert out().startswith(self.PROMPTS[0])

    def check_class(self, module, checkpoint, shared_data):
        lm = self.model(module, checkpoint)
        texts = lm.generate(self.PROMPTS, max_new_tokens=4)
        assert len(texts) == 2 and texts == [lm.generate(p, max_new_tokens=4)[0] for p in self.PROMPTS]

    def task_args(self, shared_data):
        return ["--data", shared_data / "gsm8k", "--limit", 2, "--max_new_tokens", 8]

    def check_task(self, result, output, module):
        assert result["num_questions"] == 2 and 0 <= result["headline"]["value"] <= 1
        assert len(self.jsonl_lines(output)) == 3  # the config line and two samples

    def check_serve(self, server, module, checkpoint, shared_data):
        answer = self.answer(server, "/v1/completions", {"prompt": self.PROMPTS[0], "max_tokens": 4})
        assert [c["text"] for c in answer["choices"]] == self.model(module, checkpoint).generate(
            self.PROMPTS[0], max_new_tokens=4)


class CustomTester(FamilyTester):
    """The custom family: a model with its own modeling code. Its one shape so far is an image-to-text (OCR) model:
    scans in, text out, a random test checkpoint built by make_test_checkpoint.py (no --from: the architecture is
    the folder's own)."""
    name = "custom"
    checkpoint_script = "make_test_checkpoint"
    builder_takes_from = False
    task_script = "eval_ocr"
    parity_parts = frozenset({"vision", "logits"})
    default_parity_output = True
    input_file_flags = {"inference": "--image", "eval_accuracy": "--image"}
    benchmark_args = ("--sizes", "28x112", "--images", 2, "--new_tokens", 2, "--warmup", 0)

    @staticmethod
    def scans(shared_data: Path) -> list[Path]:
        return sorted(shared_data.joinpath(*OCR_DATA, "images").glob("*.png"))[:2]

    def check_parity(self, result, dtype, evaluator):
        for part in result["parts"].values():
            assert part["dtype_under_test"] == dtype
            assert (part["rel_l2"] > 0) is (dtype == "bf16")  # fp32 on the CPU is the reference's own computation
        assert result["parts"]["logits"]["thresholds"]["top1_agreement"]["min"] > 0.9

    def inference_input(self, tmp_path, shared_data):
        return ["--image", self.scans(shared_data)[0]]

    def empty_input(self, script, tmp_path):
        if script not in self.input_file_flags:
            return None
        (tmp_path / "empty.png").write_bytes(b"")
        return [self.input_file_flags[script], tmp_path / "empty.png"]

    def check_inference_cli(self, run, module, checkpoint, tmp_path, shared_data, out):
        scans = self.scans(shared_data)
        assert run("--image", *scans, "--max_new_tokens", 4) == 0
        assert [line.split("\t")[0] for line in out().splitlines()] == [str(s) for s in scans]

    def check_class(self, module, checkpoint, shared_data):
        scans = self.scans(shared_data)
        model = self.model(module, checkpoint)
        texts = model.recognize(scans, max_new_tokens=4)
        assert len(texts) == 2 and texts == [model.recognize(s, max_new_tokens=4)[0] for s in scans]

    def task_args(self, shared_data):
        return ["--data", shared_data.joinpath(*OCR_DATA), "--limit", 2, "--max_new_tokens", 4]

    def check_task(self, result, output, module):
        assert result["headline"]["value"] >= 0
        assert len(self.jsonl_lines(output)) == 3  # the config line and two samples

    def check_serve(self, server, module, checkpoint, shared_data):
        scan = self.scans(shared_data)[0]
        url = "data:image/png;base64," + base64.b64encode(scan.read_bytes()).decode()
        content = [{"type": "image_url", "image_url": {"url": url}}]  # no text part: the default prompt
        answer = self.answer(server, "/v1/chat/completions",
                             {"messages": [{"role": "user", "content": content}], "max_tokens": 4})
        assert [c["message"]["content"] for c in answer["choices"]] == self.model(module, checkpoint).recognize(
            [scan], max_new_tokens=4)


TESTERS = {tester.name: tester for tester in (SentenceTransformersTester, Seq2SeqTester, CausalLMTester, CustomTester)}


def family_tester(folder: str) -> FamilyTester:
    """The tester of FOLDER's MODEL_FAMILY (read from its inference.py)."""
    family = read_identity(REPO_ROOT / folder)["MODEL_FAMILY"]
    if family not in TESTERS:
        raise LookupError(f"{folder}: no port-contract tester for MODEL_FAMILY {family!r} in tests/ports/families.py "
                          f"(known: {', '.join(TESTERS)})")
    return TESTERS[family](folder)


FOLDERS = [folder.name for folder in model_folders()]


def folder_params(applies=lambda tester: True) -> list:
    """pytest params (id: the folder's name) for every model folder whose tester `applies`. A folder without a
    tester for its MODEL_FAMILY is not among them: tests/ports/test_contract.py's template check fails for it."""
    params = []
    for folder in FOLDERS:
        try:
            tester = family_tester(folder)
        except (LookupError, UserError):
            continue
        if applies(tester):
            params.append(pytest.param(folder, id=folder))
    return params
