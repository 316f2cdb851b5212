"""common/diagnostics/trace_ops.py: planted faults in toy models are flagged with the right op, module and file:line; clean
models give no flags; fallback messages are read from Python warnings and from fd 2; a real (tiny) BERT traces."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModel

from common.diagnostics.trace_ops import FLAG_KINDS, ROOT_MODULE, format_trace, trace_forward
from tests.support import load_script

THIS_FILE = Path(__file__).resolve()
NPU_FALLBACK = ("CAUTION: The operator 'aten::isin.Tensor_Tensor_out' is not currently supported on the NPU backend "
                "and will fall back to run on the CPU. This may have performance implications.")
CPU, META = torch.device("cpu"), torch.device("meta")


def line_of(marker: str) -> int:
    """The line of this file whose comment ends with `(marker)` (so the tests survive edits above it)."""
    lines = THIS_FILE.read_text(encoding="utf-8").splitlines()
    hits = [number for number, text in enumerate(lines, 1) if text.rstrip().endswith(f"({marker})")]
    assert len(hits) == 1, marker
    return hits[0]


def source_is(source: str, marker: str) -> bool:
    path, line = source.rsplit(":", 1)
    return Path(path).resolve() == THIS_FILE and int(line) == line_of(marker)


# --- toy models -----------------------------------------------------------------------------------------------

class Layer(nn.Module):
    def __init__(self, fault: str | None = None, width: int = 8):
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.fault = fault

    def forward(self, x):
        y = self.proj(x)
        if self.fault == "item":
            y = y - y.sum().item()  # lint-port: allow host-sync-in-forward -- planted (PLANTED_ITEM)
        if self.fault == "cpu_tensor":
            y = y + torch.arange(y.shape[-1]).to(y.device)  # planted fault (PLANTED_CPU)
        if self.fault == "upcast":
            return torch.softmax(y.float(), dim=-1).to(y.dtype)  # planted fault (PLANTED_UPCAST)
        if self.fault == "warn":
            warnings.warn(NPU_FALLBACK)  # planted fault (PLANTED_WARN)
        if self.fault == "stderr":
            os.write(2, f"[W VariableFallbackKernel.cpp:250] Warning: {NPU_FALLBACK}\n".encode())
        if self.fault == "scalar":
            y = y * torch.tensor(0.5)  # lint-port: allow cpu-tensor-in-forward -- planted 0-dim scalar
        return torch.softmax(y, dim=-1)


class Encoder(nn.Module):
    """Three layers under `encoder.0..2`; the fault is planted in encoder.1."""

    def __init__(self, fault: str | None = None):
        super().__init__()
        self.encoder = nn.ModuleList([Layer(), Layer(fault), Layer()])

    def forward(self, x):
        for layer in self.encoder:
            x = layer(x)
        return x


def trace(fault=None, device=CPU, dtype=torch.float32, **kwargs):
    model = Encoder(fault).to(device=device, dtype=dtype)
    x = torch.randn(2, 8, device=device, dtype=dtype)
    with torch.inference_mode():
        return trace_forward(lambda: model(x), device, dtype, model=model, **kwargs)


def calls(report) -> dict[str, int]:
    return {row["op"]: row["calls"] for row in report["ops"]}


# --- flags ----------------------------------------------------------------------------------------------------

def test_planted_item_is_a_host_sync_with_module_and_line():
    report = trace("item", profile=False)
    assert report["host_syncs"] == 1
    [item] = report["flags"]["host_syncs"]
    assert item["op"] == "aten::_local_scalar_dense" and item["calls"] == 1
    assert item["module"] == "encoder.1" and item["where"] == "encoder.1"
    assert source_is(item["source"], "PLANTED_ITEM")
    assert report["flags"]["cpu_ops"] == [] and report["flags"]["fp32_ops"] == []
    line = format_trace(report).splitlines()[-1]
    assert line.startswith("host_syncs: 1 host sync: aten::_local_scalar_dense x1 at ")
    assert line.endswith(f"test_trace_ops.py:{line_of('PLANTED_ITEM')} (encoder.1)")


def test_planted_cpu_tensor_is_a_cpu_op_on_a_device_target():
    report = trace("cpu_tensor", device=META, profile=False)
    items = report["flags"]["cpu_ops"]
    assert [item["op"] for item in items] == ["aten::arange", "aten::_to_copy"]
    for item in items:
        assert item["module"] == "encoder.1" and item["calls"] == 1
        assert source_is(item["source"], "PLANTED_CPU")
    assert report["host_syncs"] == 0  # a host->device copy is not a sync
    assert "cpu" in next(row for row in report["ops"] if row["op"] == "aten::arange")["devices"]


def test_zero_dim_cpu_scalars_are_counted_not_flagged():
    report = trace("scalar", device=META, profile=False)
    assert report["flags"]["cpu_ops"] == []
    assert report["cpu_scalar_ops"] >= 1  # torch.tensor(0.5) times a meta tensor
    assert "0-dim CPU scalars" in format_trace(report)


@pytest.mark.parametrize("device", [CPU, META], ids=["cpu", "meta"])
def test_clean_model_has_no_flags(device):
    report = trace(None, device=device, profile=False)
    assert all(report["flags"][kind] == [] for kind in FLAG_KINDS)
    assert report["host_syncs"] == 0 and report["cpu_scalar_ops"] == 0
    assert report["device"] == str(device) and report["dtype"] == "fp32"
    text = format_trace(report)
    assert "host_syncs: no host syncs" in text and "fp32_ops: none (fp32 run)" in text
    assert ("cpu_ops: none (the target is the CPU)" if device == CPU else "cpu_ops: no CPU-side ops") in text


def test_bf16_upcast_lists_fp32_ops_and_the_plain_model_none():
    report = trace("upcast", dtype=torch.bfloat16, profile=False)
    items = report["flags"]["fp32_ops"]
    assert {item["op"] for item in items} == {"aten::_to_copy", "aten::_softmax"}
    assert all(item["module"] == "encoder.1" and source_is(item["source"], "PLANTED_UPCAST") for item in items)
    assert report["dtype"] == "bf16"
    assert trace(None, dtype=torch.bfloat16, profile=False)["flags"]["fp32_ops"] == []


def test_fallback_warning_is_parsed_and_still_shown():
    with pytest.warns(UserWarning, match="isin.Tensor_Tensor_out"):  # re-emitted after the trace
        report = trace("warn", profile=False)
    [item] = report["flags"]["fallbacks"]
    assert (item["op"], item["backend"], item["module"]) == ("aten::isin.Tensor_Tensor_out", "NPU", "encoder.1")
    assert source_is(item["source"], "PLANTED_WARN")


def test_fallback_written_to_fd2_is_parsed_and_still_printed(capfd):
    report = trace("stderr", profile=False)
    [item] = report["flags"]["fallbacks"]
    assert (item["op"], item["backend"], item["module"]) == ("aten::isin.Tensor_Tensor_out", "NPU", "encoder.1")
    assert "fallbacks: 1 CPU fallback: aten::isin.Tensor_Tensor_out [NPU] x1 (encoder.1)" in format_trace(report)
    assert "VariableFallbackKernel.cpp:250] Warning: CAUTION" in capfd.readouterr().err


@torch.library.custom_op("trace_ops_test::unsupported_op", mutates_args=())
def unsupported_op(x: torch.Tensor) -> torch.Tensor:
    """Stands in for a torch_npu fallback: the C++ warning is raised inside the op, so Python attributes it to the
    innermost Python frame, which is torch's (stacklevel=2 reproduces that), not the model's."""
    warnings.warn(NPU_FALLBACK, stacklevel=2)
    return x.clone()


class CallsUnsupported(nn.Module):
    def forward(self, x):
        for _ in range(2):
            x = unsupported_op(x)  # planted fault (PLANTED_OP)
        return x


def test_fallback_raised_inside_an_op_names_the_calling_line():
    model = nn.Sequential(nn.Linear(4, 4), CallsUnsupported())
    with torch.inference_mode(), pytest.warns(UserWarning, match="isin"):
        report = trace_forward(lambda: model(torch.ones(1, 4)), CPU, torch.float32, model=model, profile=False)
    [item] = report["flags"]["fallbacks"]
    assert (item["op"], item["calls"], item["module"]) == ("aten::isin.Tensor_Tensor_out", 2, "1")
    assert source_is(item["source"], "PLANTED_OP")
    assert calls(report)["trace_ops_test::unsupported_op"] == 2


def test_mps_wording_and_ops_without_a_model():
    def run():
        warnings.warn(NPU_FALLBACK.replace("CAUTION: ", "").replace("NPU", "MPS"))
        return torch.ones(3).nonzero()

    with pytest.warns(UserWarning):
        report = trace_forward(run, CPU, torch.float32, profile=False)
    [fallback] = report["flags"]["fallbacks"]
    assert fallback["backend"] == "MPS" and fallback["module"] is None and fallback["where"] == fallback["source"]
    [sync] = report["flags"]["host_syncs"]
    assert sync["op"] == "aten::nonzero" and sync["why"] == "output shape depends on the data"


def test_repeat_interleave_is_a_sync_only_without_output_size():
    x, repeats = torch.ones(2, 3), torch.tensor([1, 2])
    loose = trace_forward(lambda: x.repeat_interleave(repeats, dim=0), CPU, torch.float32, profile=False)
    sized = trace_forward(lambda: x.repeat_interleave(repeats, dim=0, output_size=3), CPU, torch.float32,
                          profile=False)
    assert [item["op"] for item in loose["flags"]["host_syncs"]] == ["aten::repeat_interleave"]
    assert sized["flags"]["host_syncs"] == []


def test_failing_forward_restores_hooks_stderr_and_warnings(capfd):
    model = Encoder()

    def run():
        model(torch.randn(2, 8))
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        trace_forward(run, CPU, torch.float32, model=model)
    assert not torch.nn.modules.module._global_forward_pre_hooks
    assert not torch.nn.modules.module._global_forward_hooks
    os.write(2, b"after the trace\n")
    assert "after the trace" in capfd.readouterr().err


# --- op table and profiler ------------------------------------------------------------------------------------

def test_three_linear_layers_count_three_matmuls_in_both_grad_modes():
    model, x = Encoder(), torch.randn(2, 8)
    reports = []
    for mode in (torch.inference_mode, torch.no_grad):
        with mode():
            reports.append(trace_forward(lambda: model(x), CPU, torch.float32, model=model, profile=False))
    counted = calls(reports[0])
    assert sum(counted.get(op, 0) for op in ("aten::addmm", "aten::mm", "aten::linear")) == 3
    assert counted["aten::_softmax"] == 3
    assert reports[0]["total_calls"] == sum(counted.values())
    assert calls(reports[1]) == counted  # composite ops are decomposed the same way in either mode


def test_profile_joins_cpu_self_time_by_op_name():
    report = trace(None)
    row = next(row for row in report["ops"] if row["op"] in ("aten::addmm", "aten::mm"))
    assert isinstance(row["self_time_us"], float) and row["self_time_us"] >= 0
    assert row["profiler_calls"] >= 3
    assert report["profiler"].startswith("self CPU time")
    assert all(row["self_time_us"] is None for row in trace(None, profile=False)["ops"])
    table = format_trace(report, top=2).splitlines()
    assert table[2].split() == ["op", "calls", "self", "us", "dtypes", "devices"]
    assert len([line for line in table if line.startswith("  aten::")]) == 2


def test_report_is_json_serialisable():
    report = trace("item", dtype=torch.bfloat16)
    assert json.loads(json.dumps(report)) == report
    assert set(report) == {"device", "dtype", "ops", "flags", "host_syncs", "flag_calls", "cpu_scalar_ops",
                           "total_calls", "profiler"}
    assert report["flag_calls"] == {kind: sum(i["calls"] for i in report["flags"][kind]) for kind in FLAG_KINDS}
    assert report["flag_calls"]["host_syncs"] == report["host_syncs"] == 1
    assert ROOT_MODULE not in {item["module"] for kind in FLAG_KINDS for item in report["flags"][kind]}


def test_tiny_minilm_traces_on_cpu(tmp_path):
    folder = load_script("all-MiniLM-L6-v2", "make_tiny_checkpoint").build(tmp_path / "m")
    model = AutoModel.from_pretrained(folder).eval()
    batch = {"input_ids": torch.tensor([[2, 7, 11, 5, 3], [2, 9, 3, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    with torch.inference_mode():
        report = trace_forward(lambda: model(**batch), CPU, torch.float32, model=model)
    assert json.loads(json.dumps(report)) == report
    ops = calls(report)
    assert ops and report["total_calls"] == sum(ops.values())
    assert sum(ops.get(op, 0) for op in ("aten::addmm", "aten::mm", "aten::bmm")) > 0
    assert report["flags"]["cpu_ops"] == [] and report["flags"]["fp32_ops"] == []
    names = {name or ROOT_MODULE for name, _ in model.named_modules()}
    assert all(item["module"] in names for kind in FLAG_KINDS for item in report["flags"][kind] if item["module"])
    print(format_trace(report))
