"""`--baseline_device cpu` in every benchmark.py: the same workload timed again on the CPU in fp32 in the same run,
recorded as a `baseline_device` block with the same points, a finite `vs_baseline_device` ratio per point and the
headline's `device_vs_cpu`; an absent device is one line and exit 2 before any model loads. Tiny checkpoints, a
few inputs each; no timing assertions (a shared CPU makes them flaky), only that the figures exist and are finite."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest

from tests.support import ANANDASKY_FOLDER, MINITRON_FOLDER, T5_FOLDER, load_script

MINILM_FOLDER = "all-MiniLM-L6-v2"


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_block(result: dict, rows: list[dict], baseline_rows: list[dict], point: str) -> None:
    block = result["baseline_device"]
    assert block["device"] == "cpu" and block["dtype"] == "fp32" and block["device_name"]
    assert [r[point] for r in baseline_rows] == [r[point] for r in rows]  # the same points, in the same order
    assert all(finite(r["vs_baseline_device"]) for r in rows), rows
    assert finite(result["headline"]["device_vs_cpu"])


@pytest.fixture(scope="module")
def tiny_minilm(folder_checkpoint):
    return folder_checkpoint(MINILM_FOLDER, "make_tiny_checkpoint")  # the port contract's build of it, shared


@pytest.mark.slow
def test_minilm(tiny_minilm, cli, tmp_path, monkeypatch):
    bench = load_script(MINILM_FOLDER, "benchmark")
    monkeypatch.setattr(bench, "GEMM_PROBE_SIZE", 256)  # the device-peak probe: seconds on a loaded CPU otherwise
    out = tmp_path / "bench.json"
    assert cli(bench, "--model_path", tiny_minilm, "--batch_sizes", "2,4", "--num_texts", 8, "--repeats", 1,
               "--device", "cpu", "--no_peer", "--baseline_device", "cpu", "--output", out) == 0
    result = json.loads(out.read_text())
    check_block(result, result["rows"], result["baseline_device"]["rows"], "batch_size")
    for row, base in zip(result["rows"], result["baseline_device"]["rows"]):
        assert row["baseline_device"]["texts_per_s"] == base["ours"]["texts_per_s"]
        assert row["vs_baseline_device"] == pytest.approx(row["ours"]["texts_per_s"] / base["ours"]["texts_per_s"])
    assert result["headline"]["device_vs_cpu"] == result["rows"][-1]["vs_baseline_device"]  # the headline batch


@pytest.mark.slow
def test_minilm_without_the_flag_keeps_the_record_shape(tiny_minilm, cli, tmp_path, monkeypatch):
    bench = load_script(MINILM_FOLDER, "benchmark")
    monkeypatch.setattr(bench, "GEMM_PROBE_SIZE", 256)
    out = tmp_path / "bench.json"
    assert cli(bench, "--model_path", tiny_minilm, "--batch_sizes", "2", "--num_texts", 4, "--repeats", 1,
               "--device", "cpu", "--no_peer", "--output", out) == 0
    result = json.loads(out.read_text())
    assert "baseline_device" not in result and "device_vs_cpu" not in result["headline"]
    assert "vs_baseline_device" not in result["rows"][0]


@pytest.mark.slow
def test_t5(tiny_t5, cli, tmp_path):
    bench = load_script(T5_FOLDER, "benchmark")
    out = tmp_path / "bench.json"
    assert cli(bench, "--model_path", tiny_t5, "--device", "cpu", "--encoder_batch_sizes", "1,2", "--input_tokens",
               8, "--requests", 2, "--gen_batch_size", 2, "--max_new_tokens", 3, "--num_beams", 2, "--repeats", 1,
               "--no_peer", "--baseline_device", "cpu", "--output", out) == 0
    result = json.loads(out.read_text())
    block = result["baseline_device"]
    check_block(result, result["encoder"], block["encoder"], "batch_size")
    check_block(result, result["generation"], block["generation"], "mode")
    assert [r["input_tokens"] for r in block["encoder"]] == [8, 8]
    greedy = result["generation"][0]
    assert result["headline"]["device_vs_cpu"] == greedy["vs_baseline_device"]
    assert greedy["baseline_device"]["requests_per_s"] == block["generation"][0]["ours"]["requests_per_s"]


@pytest.mark.slow
def test_minitron(tiny_minitron, cli, tmp_path):
    bench = load_script(MINITRON_FOLDER, "benchmark")
    out = tmp_path / "bench.json"
    assert cli(bench, "--model_path", tiny_minitron, "--input_tokens", 8, "--output_tokens", 3, "--num_requests", 2,
               "--no_compile", "--device", "cpu", "--baseline_device", "cpu", "--output", out, "--no_plot") == 0
    result = json.loads(out.read_text())
    block = result["baseline_device"]
    check_block(result, result["paths_list"], block["paths_list"], "path")
    assert block["greedy_check"] == "2/2 identical" and block["compiled"] is False
    assert result["paths"]["static"]["vs_baseline_device"] == result["headline"]["device_vs_cpu"]
    assert result["paths_list"][1]["vs_baseline_device"] == result["paths"]["static"]["vs_baseline_device"]


@pytest.mark.slow
def test_anandasky(anandasky_checkpoint, cli, tmp_path):
    bench = load_script(ANANDASKY_FOLDER, "benchmark")
    out = tmp_path / "bench.json"
    assert cli(bench, "--model_path", anandasky_checkpoint, "--device", "cpu",
               "--sizes", "28x112", "--images", 2, "--new_tokens", 2, "--warmup", 0, "--baseline_device", "cpu",
               "--output", out, "--no_plot") == 0
    result = json.loads(out.read_text())
    check_block(result, result["sizes"], result["baseline_device"]["sizes"], "size")
    row = result["sizes"][0]
    assert finite(row["vs_baseline_device_packed"]) and result["headline"]["device_vs_cpu"] == row[
        "vs_baseline_device_packed"]
    assert result["baseline_device"]["seconds"] > 0


@pytest.mark.parametrize("folder", [MINILM_FOLDER, T5_FOLDER, MINITRON_FOLDER, ANANDASKY_FOLDER])
@pytest.mark.parametrize("device, message", [("npu", "--baseline_device npu: device 'npu' needs torch_npu"),
                                             ("gpu", "--baseline_device gpu: unknown device 'gpu'"),
                                             ("auto", "--baseline_device takes a device, e.g. cpu, not auto")])
def test_absent_device_is_one_line_before_the_model_loads(folder, device, message, cli, capsys, tmp_path):
    """The model path does not exist: the device error must come first, so it is found before anything loads."""
    if device == "npu" and importlib.util.find_spec("torch_npu") is not None:
        pytest.skip("an NPU machine: npu is not an absent device there")
    bench = load_script(folder, "benchmark")
    assert cli(bench, "--model_path", tmp_path / "absent", "--baseline_device", device,
               "--output", tmp_path / "bench.json") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert list(tmp_path.iterdir()) == []
