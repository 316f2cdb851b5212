"""Minitron benchmark: exact token counts, every latency field, greedy-identical fast path, the shared near-tie rule
where paths part, JSON (a benchmark result record) + PNG (no timing assertions: a shared CI machine makes them
flaky)."""
from __future__ import annotations

import json

import pytest
import torch

from common import report
from tests.support import MINITRON_FOLDER, REPO_ROOT, load_script


def check(result, requests, out_tokens):
    for name in ("generate", "static"):
        p = result["paths"][name]
        for key in ("ttft", "tpot", "e2e"):
            assert p[key]["n"] == requests and {"mean_ms", "p50_ms", "p90_ms", "p99_ms"} <= set(p[key])
        assert p["itl"]["n"] == requests * (out_tokens - 1)
        assert p["output_tokens_per_s"] > 0 and p["total_tokens_per_s"] > p["output_tokens_per_s"]
        assert p["requests_per_s"] > 0 and p["decode_tokens_per_s"] > 0
    assert result["greedy_identical"] is True and result["speedup_decode"] > 0
    assert result["memory"]["weights_mib"] > 0 and result["memory"]["peak_mib"] > 0
    assert result["kind"] == "benchmark" and result["headline"]["peer"] == "model.generate"
    assert result["headline"]["ratio"] == result["speedup_decode"]


@pytest.mark.slow
def test_benchmark_tiny_nemotron(tiny_minitron, tmp_path, cli):
    bench = load_script(MINITRON_FOLDER, "benchmark")
    out = tmp_path / "bench.json"
    assert cli(bench, "--model_path", tiny_minitron, "--input_tokens", "16", "--output_tokens", "6",
               "--num_requests", "4", "--batch_size", "2", "--no_compile", "--output", out) == 0
    result = json.loads(out.read_text())
    check(result, 4, 6)
    assert result["settings"]["compiled"] is False and out.with_suffix(".png").stat().st_size > 0
    assert result["weights"] == "test checkpoint" and result["headline"]["metric"].endswith("(eager)")


@pytest.mark.slow
def test_benchmark_compiled(tiny_minitron, tmp_path, cli, capsys):
    """The compiled step (inductor, freezing, C++ wrapper on CPU) on the folder's own architecture; the SmolLM2
    (Llama) run of the results table and the tied-embedding Qwen2 in test_minitron_architectures cover others."""
    bench = load_script(MINITRON_FOLDER, "benchmark")
    out = tmp_path / "bench.json"
    assert cli(bench, "--model_path", tiny_minitron, "--input_tokens", "12", "--output_tokens", "5",
               "--num_requests", "2", "--output", out, "--no_plot") == 0
    result = json.loads(out.read_text())
    check(result, 2, 5)
    assert result["settings"]["compiled"] is True
    assert result["headline"]["metric"] == "decode tokens/s, static cache + compile"
    assert "decode speed-up" in capsys.readouterr().out


def test_benchmark_bad_batch(cli, capsys):
    bench = load_script(MINITRON_FOLDER, "benchmark")
    assert cli(bench, "--num_requests", "3", "--batch_size", "2") == 2
    assert "multiple of --batch_size" in capsys.readouterr().err


def test_readme_tables_are_generated_from_the_result_files():
    assert report.cli([str(REPO_ROOT / MINITRON_FOLDER), "--check"]) == 0


def test_static_path_never_picks_end_of_sequence(tiny_minitron):
    """generate(min_new_tokens=out) masks EOS; the static path must too, or greedy tokens part where EOS is top-1."""
    bench = load_script(MINITRON_FOLDER, "benchmark")
    lm = bench.CausalLM(str(tiny_minitron), device="cpu", dtype="fp32")
    decoder = bench.StaticDecoder(lm, compile=False)
    eos = lm.model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos)
    logits = torch.zeros(2, lm.model.config.vocab_size)
    logits[:, eos[0]] = 10.0  # EOS is the top token
    logits[:, 7] = 5.0
    assert decoder._pick(logits).flatten().tolist() == [7, 7]


@pytest.mark.slow
def test_divergence_is_judged_by_the_shared_near_tie_rule(tiny_minitron):
    """A parting forced onto a token the model does not prefer is reported where it happens, with both paths' logits
    teacher-forced there, and it is NOT a near-tie: the two paths agree to ~1e-6, far below its margin."""
    bench = load_script(MINITRON_FOLDER, "benchmark")
    lm = bench.CausalLM(str(tiny_minitron), device="cpu", dtype="fp32")
    fast = bench.StaticDecoder(lm, compile=False)
    prompts = bench.random_prompts(lm, 2, 8)
    theirs, _, _ = bench.run_generate(lm, prompts, 4)
    ours, _, _ = fast(prompts, 4)
    assert torch.equal(ours, theirs) and bench.divergences(lm, fast, prompts, ours, theirs, 10) == []
    ours = ours.clone()  # an inference-mode tensor cannot be edited in place
    ours[1, 2] = (ours[1, 2] + 1) % 100  # request 1 parts at position 2
    [report] = bench.divergences(lm, fast, prompts, ours, theirs, 10)
    assert report["request"] == 11 and report["position"] == 2
    assert report["tokens"] == [int(ours[1, 2]), int(theirs[1, 2])]
    assert report["reference_margin"] > 0 and report["logit_error"] < 1e-4 and report["near_tie"] is False
    assert bench.greedy_check(1, 2, [report]) == ("1/2 identical, 0/1 others part at a near-tie (margin <= 2 x "
                                                  "logit difference)")
