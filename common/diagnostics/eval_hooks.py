"""`--trace_ops` and `--locate` for every folder's eval_accuracy.py: what ran where, and where a FAIL starts.

    python eval_accuracy.py --device npu --dtype bf16 --trace_ops     # op inventory: fallbacks, CPU ops, syncs
    python eval_accuracy.py --device npu --dtype bf16 --locate        # module-by-module error against CPU fp32

A folder describes one forward pass of its model on fixed probe inputs, for the model under test and for the CPU
float32 reference (a `Probe`); this module runs the diagnoses the flags ask for on it and returns what goes into the
parity result JSON ("trace_ops", "locate"). `--locate` also runs by itself after a parity FAIL, because a FAIL with no
location sends the user to msprobe; `--no_locate` skips that (one more forward on both sides, and the reference's
activations spilled to a temporary folder, which matters for an 8B model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from common.device import dtype_name
from common.diagnostics.locate import format_locate, locate
from common.diagnostics.trace_ops import format_trace, trace_forward


@dataclass
class Probe:
    """One forward pass on the same inputs, on both sides. `run_*` call the model with inputs already on its device
    (built once, outside the timed or traced part); the models are the plain nn.Modules (never a torch.compile
    wrapper: hooks and the dispatch recorder see the eager modules)."""
    test_model: torch.nn.Module
    reference_model: torch.nn.Module
    run_test: Callable[[], object]
    run_reference: Callable[[], object]
    device: torch.device
    dtype: torch.dtype
    inputs: str  # what the forward pass reads, for the console and the JSON


def eager(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a torch.compile wrapper (or the module itself)."""
    return getattr(model, "_orig_mod", model)


def add_diagnosis_args(parser) -> None:
    parser.add_argument("--trace_ops", action="store_true",
                        help="record every aten op of one forward on the device (calls, dtypes, devices, self time) "
                             "and flag CPU fallbacks, CPU-side tensors, fp32 ops in a bf16/fp16 run and host syncs")
    parser.add_argument("--locate", action="store_true",
                        help="compare every module's output with the CPU fp32 reference and name the first that "
                             "diverges (also runs by itself after a FAIL)")
    parser.add_argument("--no_locate", action="store_true", help="do not run --locate after a FAIL")


def wants_locate(args, passed: bool) -> bool:
    return bool(getattr(args, "locate", False) or (not passed and not getattr(args, "no_locate", False)))


def trace_if_asked(args, probe_factory: Callable[[], Probe]) -> dict:
    """--trace_ops: {"trace_ops": report}, printed; {} when not asked. Call it BEFORE the model under test runs
    anything else: torch_npu reports each CPU fallback once per process, so a trace taken after the parity pass would
    miss the fallbacks that pass already hit."""
    if not getattr(args, "trace_ops", False):  # also a parser without add_diagnosis_args (inference.py --eval)
        return {}
    probe = probe_factory()
    with torch.inference_mode():
        report = trace_forward(probe.run_test, probe.device, probe.dtype, model=probe.test_model)
    print(f"op trace, one forward on {probe.device} {dtype_name(probe.dtype)} ({probe.inputs}):\n"
          f"{format_trace(report)}\n")
    return {"trace_ops": {"inputs": probe.inputs, **report}}


def locate_if_needed(args, passed: bool, probe_factory: Callable[[], Probe]) -> dict:
    """--locate, or a FAIL without --no_locate: {"locate": report}, printed; {} otherwise."""
    if not wants_locate(args, passed):
        return {}
    reason = "asked for (--locate)" if getattr(args, "locate", False) else "after the FAIL (skip with --no_locate)"
    probe = probe_factory()
    with torch.inference_mode():
        report = locate(probe.test_model, probe.reference_model, probe.run_test, probe.run_reference,
                        dtype_name(probe.dtype))
    spill = report.get("spill", {})
    print(f"\nlocate, {reason}: every module against the CPU fp32 reference ({probe.inputs}; the reference's "
          f"{spill.get('records', 0)} module records took {spill.get('bytes', 0) / 2**20:.0f} MiB of temporary disk "
          f"(TMPDIR), freed):\n{format_locate(report)}")
    return {"locate": {"inputs": probe.inputs, "reason": reason, **report}}
