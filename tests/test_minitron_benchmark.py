"""Minitron benchmark: exact token counts, every latency field, greedy-identical fast path, JSON + PNG (no timing
assertions: a shared CI machine makes them flaky)."""
from __future__ import annotations

import json

from conftest import MINITRON_FOLDER, load_script


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


def test_benchmark_tiny_nemotron(tiny_minitron, tmp_path, cli):
    bench = load_script(MINITRON_FOLDER, "benchmark")
    out = tmp_path / "bench.json"
    assert cli(bench, "--model_path", tiny_minitron, "--input_tokens", "16", "--output_tokens", "6",
               "--num_requests", "4", "--batch_size", "2", "--no_compile", "--output", out) == 0
    result = json.loads(out.read_text())
    check(result, 4, 6)
    assert result["settings"]["compiled"] is False and out.with_suffix(".png").stat().st_size > 0


def test_benchmark_real_weights_compiled(smollm2, tmp_path, cli, capsys):
    bench = load_script(MINITRON_FOLDER, "benchmark")
    out = tmp_path / "bench.json"
    assert cli(bench, "--model_path", "smollm2", "--input_tokens", "12", "--output_tokens", "5",
               "--num_requests", "2", "--output", out, "--no_plot") == 0
    result = json.loads(out.read_text())
    check(result, 2, 5)
    assert result["settings"]["compiled"] is True
    assert "decode speed-up" in capsys.readouterr().out


def test_benchmark_bad_batch(cli, capsys):
    bench = load_script(MINITRON_FOLDER, "benchmark")
    assert cli(bench, "--num_requests", "3", "--batch_size", "2") == 2
    assert "multiple of --batch_size" in capsys.readouterr().err


def test_readme_tables_are_generated_from_the_result_files():
    from common import report

    from conftest import REPO_ROOT

    assert report.main([str(REPO_ROOT / MINITRON_FOLDER), "--check"]) == 0


def test_static_path_never_picks_end_of_sequence(tiny_minitron):
    """generate(min_new_tokens=out) masks EOS; the static path must too, or greedy tokens part where EOS is top-1."""
    import torch

    bench = load_script(MINITRON_FOLDER, "benchmark")
    lm = bench.CausalLM(str(tiny_minitron), device="cpu", dtype="fp32")
    decoder = bench.StaticDecoder(lm, compile=False)
    eos = lm.model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos)
    logits = torch.zeros(2, 3, lm.model.config.vocab_size)
    logits[:, -1, eos[0]] = 10.0  # EOS is the top token
    logits[:, -1, 7] = 5.0
    assert decoder._pick(logits).flatten().tolist() == [7, 7]


def test_divergence_reports_position_tokens_and_gap(smollm2):
    import torch

    bench = load_script(MINITRON_FOLDER, "benchmark")
    lm = bench.CausalLM("smollm2", device="cpu", dtype="fp32")
    prompt = bench.random_prompts(lm, 1, 8)[0]
    theirs, _, _ = bench.run_generate(lm, prompt[None], 3)
    ours = theirs[0].clone()
    ours[1] = (ours[1] + 1) % 100  # part at position 1 with a token the model does not prefer
    report = bench.divergence(lm, prompt, ours, theirs[0])
    assert report["position"] == 1 and report["tokens"] == [int(ours[1]), int(theirs[0, 1])]
    assert report["logit_gap"] > 0 and report["near_tie"] is (report["logit_gap"] <= bench.NEAR_TIE_LOGIT_GAP)
