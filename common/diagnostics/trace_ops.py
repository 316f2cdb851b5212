"""Which aten operators one forward pass runs, where they run, and which of them hurt on an accelerator.

    python eval_accuracy.py --model_path models/tiny --device npu --dtype bf16 --trace_ops   # in any model folder

`trace_forward(run, device, dtype, model=model)` runs `run()` (one forward) under a TorchDispatchMode recorder, then
once more under torch.profiler, and returns a JSON-able report: every aten op with its call count, dtypes, devices
and self time, plus four kinds of flags, each with the innermost module (when `model` is given) and the first
source line outside torch (file:line):

- cpu_ops: ops that touch CPU tensors (not 0-dim scalars, which are legal and only counted in cpu_scalar_ops)
  while the target device is not the CPU: stray `torch.arange(n)` without device=, `.cpu()`, numpy round trips.
- fallbacks: ops torch_npu (or MPS) says it runs on the CPU ("The operator 'aten::isin.Tensor_Tensor_out' is not
  currently supported on the NPU backend and will fall back to run on the CPU"), read from Python warnings and
  from what C++ writes to file descriptor 2 during run(); the captured text is printed again afterwards.
  torch_npu warns once per operator per *process*: trace before any other forward, or fallbacks seen earlier are
  missing here.
- fp32_ops: in a bf16/fp16 run, ops whose primary (first floating) output is float32 (or float64): the upcasts
  themselves (`_to_copy`) and what runs in fp32 after them (softmax, LayerNorm, RMSNorm statistics).
- host_syncs: ops that make the host wait for the device: `_local_scalar_dense` (.item(), int(t), bool(t)),
  `is_nonzero`, `equal`, device->CPU copies, and data-dependent output shapes (nonzero, masked_select, unique*,
  repeat_interleave without output_size). They are flagged on every target, the CPU included, where they cost
  nothing: .item() still dispatches `_local_scalar_dense` on the CPU, and it WILL be a sync on an accelerator.

Composite operators (aten::linear, aten::item, aten::to) are decomposed into what the backend runs (addmm,
_local_scalar_dense, _to_copy) unless the target backend registers its own kernel for them, so inference_mode and
no_grad give the same op names. Trace an eager model: inside torch.compile'd regions the compiled kernels call
no aten ops and no module hooks, so they stay invisible.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import warnings
from collections import Counter
from typing import Callable

import torch
from torch.profiler import ProfilerActivity
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from common.device import dtype_name, synchronize

# Ops that copy a device value to the host (the Python side waits for every queued kernel).
SCALAR_READ_OPS = frozenset({"aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal"})
# Ops whose output shape depends on the values, so the host must read them before allocating the result.
DATA_DEPENDENT_OPS = frozenset({"aten::nonzero", "aten::masked_select", "aten::_unique", "aten::_unique2",
                                "aten::unique_dim", "aten::unique_consecutive", "aten::unique_dim_consecutive"})
# Copy ops that are a device->host transfer when their output is on the CPU and an input is not.
COPY_OPS = frozenset({"aten::_to_copy", "aten::copy_", "aten::_copy_from", "aten::_copy_from_and_resize"})
# Output dtypes that count as "ran in fp32 or wider" in a bf16/fp16 run.
WIDE_FLOATS = frozenset({torch.float32, torch.float64})
LOW_PRECISION = frozenset({torch.bfloat16, torch.float16})
# torch_npu's and MPS's CPU-fallback message (the NPU one is prefixed with "CAUTION: ").
FALLBACK_RE = re.compile(r"operator '(?P<op>[^']+)' is not currently supported on the (?P<backend>\w+) backend "
                         r"and will fall back to run on the CPU")
FLAG_KINDS = ("cpu_ops", "fallbacks", "fp32_ops", "host_syncs")
ROOT_MODULE = "<model>"  # named_modules() calls the root ""; this is what a report shows instead
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def _short_path(filename: str) -> str:
    """site-packages/transformers/x.py -> transformers/x.py; files under the cwd relative to it."""
    marker = "site-packages" + os.sep
    if marker in filename:
        return filename.split(marker, 1)[1]
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive on Windows
        return filename
    return filename if relative.startswith("..") else relative


def _is_internal(filename: str) -> bool:
    """torch's own files and this one: never the line a user wants to see."""
    return filename == __file__ or os.path.abspath(filename).startswith(_TORCH_DIR)


def _user_frame() -> str | None:
    """file:line of the innermost Python frame that is neither torch's nor this file's: the line that called the op.
    A frame walk, not traceback.extract_stack(), because that reads every source line (only flagged ops pay)."""
    frame = sys._getframe(1)
    while frame is not None:
        if not _is_internal(frame.f_code.co_filename):
            return f"{_short_path(frame.f_code.co_filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _dispatch_key(device: torch.device) -> str:
    """The dispatch key of the target's backend kernels: CPU, CUDA, MPS, Meta, or PrivateUse1 for torch_npu."""
    if device.type == torch._C._get_privateuse1_backend_name():
        return "PrivateUse1"
    return "Meta" if device.type == "meta" else device.type.upper()


class _ModuleStack:
    """The qualified names of the model's modules whose forward is running, innermost last (global module hooks)."""

    def __init__(self, model: torch.nn.Module | None, on_exit: Callable[[str], None]):
        self.names = {id(m): (name or ROOT_MODULE) for name, m in model.named_modules()} if model is not None else {}
        self.stack: list[str] = []
        self.on_exit = on_exit
        self.handles = []

    @property
    def current(self) -> str | None:
        return self.stack[-1] if self.stack else None

    def _enter(self, module, args):
        name = self.names.get(id(module))
        if name is not None:
            self.stack.append(name)

    def _exit(self, module, args, output):
        name = self.names.get(id(module))
        if name is not None and name in self.stack:
            self.on_exit(name)  # text a module wrote outside any aten op is its own
            del self.stack[len(self.stack) - 1 - self.stack[::-1].index(name):]

    def __enter__(self):
        if self.names:
            hooks = torch.nn.modules.module
            self.handles = [hooks.register_module_forward_pre_hook(self._enter),
                            hooks.register_module_forward_hook(self._exit, always_call=True)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.stack.clear()


class _OutputCapture:
    """Python warnings and everything written to file descriptor 2 (C++ TORCH_WARN, printf) while active.
    drain() hands out the text that arrived since the last call, so the recorder can say which op wrote it."""

    def __init__(self):
        self.records: list = []
        self.file = None
        self._saved_fd = None
        self._warnings_seen = 0
        self._offset = 0

    def __enter__(self):
        self._catch = warnings.catch_warnings(record=True)
        self.records = self._catch.__enter__()
        warnings.simplefilter("always")
        self._warn_always = torch.is_warn_always_enabled()
        torch.set_warn_always(True)  # TORCH_WARN_ONCE (the MPS fallback message) fires on every call while tracing
        try:
            sys.stderr.flush()
            self.file = tempfile.TemporaryFile()
            self._saved_fd = os.dup(2)
            os.dup2(self.file.fileno(), 2)
        except (OSError, ValueError):  # no usable fd 2 (a daemon): warnings are still captured
            self._saved_fd = None
        return self

    def changed(self) -> bool:
        """Cheap enough to ask after every op: a list length and one fstat."""
        if len(self.records) != self._warnings_seen:
            return True
        return self._saved_fd is not None and os.fstat(self.file.fileno()).st_size > self._offset

    def drain(self, final: bool = False) -> list[tuple[str, str | None]]:
        """[(text, source file:line or None)]: new warnings, then new stderr text (up to the last newline, so a
        message is never split, unless final)."""
        # A C++ TORCH_WARN raised inside an op names the innermost Python frame: this file's dispatch or torch's.
        new = [(str(w.message), None if _is_internal(w.filename) else f"{_short_path(w.filename)}:{w.lineno}")
               for w in self.records[self._warnings_seen:]]
        self._warnings_seen = len(self.records)
        if self._saved_fd is not None:
            size = os.fstat(self.file.fileno()).st_size
            data = os.pread(self.file.fileno(), size - self._offset, self._offset)
            if not final:
                data = data[:data.rfind(b"\n") + 1]
            self._offset += len(data)
            if data:
                new.append((data.decode("utf-8", errors="replace"), None))
        return new

    def __exit__(self, *exc):
        text = b""
        try:
            if self._saved_fd is not None:
                sys.stderr.flush()  # Python-level writes buffered for fd 2 belong to the captured text
        finally:
            if self._saved_fd is not None:
                os.dup2(self._saved_fd, 2)
                os.close(self._saved_fd)
                text = os.pread(self.file.fileno(), os.fstat(self.file.fileno()).st_size, 0)
            self._catch.__exit__(*exc)
            torch.set_warn_always(self._warn_always)
        self.leftover = self.drain(final=True) if self._saved_fd is not None else self.drain()
        if self.file is not None:
            self.file.close()
        if text:  # nothing is lost: the user still sees what the backend printed
            sys.stderr.write(text.decode("utf-8", errors="replace"))
            sys.stderr.flush()
        shown = set()
        for w in self.records:  # once per message and place, as the default filter would have shown them
            key = (str(w.message), w.category, w.filename, w.lineno)
            if key not in shown:
                shown.add(key)
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


class _Recorder(TorchDispatchMode):
    """Counts every aten op that reaches the backend and flags the ones listed in the module docstring."""

    def __init__(self, device: torch.device, dtype: torch.dtype, modules: _ModuleStack, capture: _OutputCapture):
        super().__init__()
        self.device, self.dtype, self.modules, self.capture = device, dtype, modules, capture
        self.backend_key = _dispatch_key(device)
        self.calls: Counter = Counter()
        self.overloads: dict[str, set] = {}
        self.dtypes: dict[str, set] = {}
        self.devices: dict[str, set] = {}
        self.flags: dict[str, Counter] = {kind: Counter() for kind in FLAG_KINDS}
        self.cpu_scalar_ops = 0

    def _has_backend_kernel(self, func) -> bool:
        try:
            return torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), self.backend_key)
        except RuntimeError:  # a dispatch key this torch does not know
            return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self._has_backend_kernel(func):
            with self:  # record what the composite runs, the same ops inference_mode and no_grad reach
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
        if self.capture.changed():  # written between ops (Python code): the module's, not this op's line
            self.note_output(self.modules.current)
        out = func(*args, **kwargs)
        self._record(func, args, kwargs, out)
        return out

    def _record(self, func, args, kwargs, out) -> None:
        name = func._schema.name
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.calls[name] += 1
        self.overloads.setdefault(name, set()).add(func._overloadname)
        self.dtypes.setdefault(name, set()).update(str(t.dtype).replace("torch.", "") for t in inputs + outputs)
        self.devices.setdefault(name, set()).update(str(t.device) for t in inputs + outputs)
        found = self._flags_for(name, kwargs, inputs, outputs)
        if found:
            source = _user_frame()
            for kind, detail in found:
                self.flags[kind][(name, self.modules.current, source, detail)] += 1
        if self.capture.changed():
            self.note_output(self.modules.current, in_op=True)

    def _flags_for(self, name, kwargs, inputs, outputs) -> list[tuple[str, str | None]]:
        found = []
        if self.device.type != "cpu":
            cpu = [t for t in inputs + outputs if t.device.type == "cpu"]
            if any(t.dim() > 0 for t in cpu):
                found.append(("cpu_ops", None))
            elif cpu:
                self.cpu_scalar_ops += 1
        floats = [t for t in outputs if t.is_floating_point()]
        # The primary (first floating) output decides: SDPA's fp32 logsumexp beside a bf16 result is not an fp32 op.
        if self.dtype in LOW_PRECISION and floats and floats[0].dtype in WIDE_FLOATS:
            found.append(("fp32_ops", None))
        reason = _host_sync_reason(name, kwargs, inputs, outputs)
        if reason:
            found.append(("host_syncs", reason))
        return found

    def note_output(self, module: str | None, in_op: bool = False, final: bool = False) -> None:
        """Parse captured warnings/stderr text for CPU-fallback messages, attributed to `module` (and the calling
        line: the warning's own, or the op's caller when the text arrived during an op)."""
        for text, source in self.capture.leftover if final else self.capture.drain():
            for match in FALLBACK_RE.finditer(text):
                where = source or (_user_frame() if in_op else None)
                self.flags["fallbacks"][(match["op"], module, where, match["backend"].upper())] += 1


def _host_sync_reason(name: str, kwargs: dict, inputs: list, outputs: list) -> str | None:
    if name in SCALAR_READ_OPS:
        return "reads a tensor value on the host"
    if name in DATA_DEPENDENT_OPS:
        return "output shape depends on the data"
    if name == "aten::repeat_interleave" and kwargs.get("output_size") is None and inputs:
        return "output shape depends on the data (pass output_size=)"
    if name in COPY_OPS and any(t.device.type == "cpu" for t in outputs) \
            and any(t.device.type not in ("cpu", "meta") for t in inputs):
        return "device->CPU copy"
    return None


def _profile_self_times(run: Callable[[], object], device: torch.device) -> tuple[dict[str, tuple[float, int]], str]:
    """{op name: (self time in us, calls the profiler saw)} from one profiled run(), and what the time measures."""
    accelerator = device.type not in ("cpu", "meta")
    # ProfilerActivity names its kernel tracers after the device type (CUDA, XPU); NPU and MPS have none here.
    kernel_activity = getattr(ProfilerActivity, device.type.upper(), None) if accelerator else None
    activities = [ProfilerActivity.CPU] + ([kernel_activity] if kernel_activity is not None else [])
    with torch.profiler.profile(activities=activities) as prof:
        run()
    times = {}
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:  # torch < 2.4 calls it self_cuda_time_total
            device_us = getattr(event, "self_cuda_time_total", None)
        value = device_us if kernel_activity is not None and device_us is not None else event.self_cpu_time_total
        times[event.key] = (round(float(value), 3), int(event.count))
    if kernel_activity is not None:
        what = f"self {device.type} kernel time per op (torch.profiler, ProfilerActivity.{kernel_activity.name})"
    elif accelerator:
        what = (f"CPU-side self time only (dispatch and launch, not kernel time): {device.type} kernel times need "
                "the backend's own profiler (torch_npu.profiler on Ascend)")
    else:
        what = "self CPU time per op (torch.profiler)" + (" - meta tensors compute nothing" if device.type == "meta"
                                                         else "")
    note = "; second run() (the recorded run was the warm-up); summed over every call the profiler saw by op name"
    return times, what + note


def _flag_items(kind: str, counts: Counter) -> list[dict]:
    items = []
    for (op, module, source, detail), calls in counts.items():
        item = {"op": op, "calls": calls, "where": module or source or "?", "module": module, "source": source}
        if kind == "fallbacks":
            item["backend"] = detail
        elif kind == "host_syncs":
            item["why"] = detail
        items.append(item)
    return items  # in the order they first happened: the first place is where to start fixing


def _op_rows(recorder: _Recorder, times: dict[str, tuple[float, int]] | None) -> list[dict]:
    rows = []
    for op, calls in recorder.calls.items():
        self_us, profiler_calls = (times or {}).get(op, (None, None))
        rows.append({"op": op, "overloads": sorted(recorder.overloads[op]), "calls": calls,
                     "dtypes": sorted(recorder.dtypes[op]), "devices": sorted(recorder.devices[op]),
                     "self_time_us": self_us, "profiler_calls": profiler_calls})
    return sorted(rows, key=lambda row: (-(row["self_time_us"] or -1.0), -row["calls"], row["op"]))


def trace_forward(run: Callable[[], object], device: torch.device, dtype: torch.dtype, *,
                  model: torch.nn.Module | None = None, profile: bool = True) -> dict:
    """Run `run()` (one forward pass) under the op recorder, then once more under torch.profiler when `profile`;
    return the JSON-able report described in the module docstring. `model` names the modules in the flags.
    Call it inside the same torch.inference_mode()/no_grad() as the real forward; trace before any other forward
    on an NPU (torch_npu prints each fallback once per process)."""
    device = torch.device(device)
    capture = _OutputCapture()
    recorder = None
    modules = _ModuleStack(model, on_exit=lambda name: recorder.note_output(name) if capture.changed() else None)
    recorder = _Recorder(device, dtype, modules, capture)
    with capture:
        with modules, recorder:
            run()
    recorder.note_output(None, final=True)  # text that arrived outside every op and module
    # The recorded run doubles as the profiled run's warm-up (allocator, kernel selection, lazy init), so the self
    # times below are steady-state; wait for its queued kernels so they are not billed to the profiled run.
    synchronize(device)
    times, what = _profile_self_times(run, device) if profile else (None, "not profiled (profile=False)")
    flags = {kind: _flag_items(kind, recorder.flags[kind]) for kind in FLAG_KINDS}
    return {"device": str(device), "dtype": dtype_name(dtype), "ops": _op_rows(recorder, times), "flags": flags,
            "host_syncs": sum(item["calls"] for item in flags["host_syncs"]),
            "flag_calls": {kind: sum(item["calls"] for item in items) for kind, items in flags.items()},
            "cpu_scalar_ops": recorder.cpu_scalar_ops, "total_calls": sum(recorder.calls.values()), "profiler": what}


_FLAG_TITLES = {"cpu_ops": ("CPU-side op", "no CPU-side ops"),
                "fallbacks": ("CPU fallback", "no CPU fallbacks reported"),
                "fp32_ops": ("fp32 op", "no fp32 ops"),
                "host_syncs": ("host sync", "no host syncs")}


def _flag_line(kind: str, items: list[dict], report: dict, show: int = 4) -> str:
    """'host_syncs: 2 host syncs: aten::_local_scalar_dense x2 at model.py:41 (encoder.layer.0) +1 more place'."""
    noun, clean = _FLAG_TITLES[kind]
    if not items:
        if kind == "cpu_ops" and report["device"].startswith("cpu"):
            return f"{kind}: none (the target is the CPU)"
        if kind == "fp32_ops" and report["dtype"] not in ("bf16", "fp16"):
            return f"{kind}: none ({report['dtype']} run)"
        return f"{kind}: {clean}"
    by_op: dict[str, list[dict]] = {}
    for item in items:
        by_op.setdefault(item["op"] + (f" [{item['backend']}]" if item.get("backend") else ""), []).append(item)
    parts = []
    for label, group in list(by_op.items())[:show]:
        first = group[0]
        place = " ".join(p for p in (first["source"] and f"at {first['source']}",
                                     first["module"] and f"({first['module']})") if p) or "(no location)"
        more = f" +{len(group) - 1} more place{'s' if len(group) > 2 else ''}" if len(group) > 1 else ""
        parts.append(f"{label} x{sum(item['calls'] for item in group)} {place}{more}")
    total = sum(item["calls"] for item in items)
    rest = f"; +{len(by_op) - show} more op{'s' if len(by_op) - show > 1 else ''}" if len(by_op) > show else ""
    return f"{kind}: {total} {noun}{'s' if total != 1 else ''}: " + "; ".join(parts) + rest


def format_trace(report: dict, top: int = 12) -> str:
    """The console summary: a table of the top ops by self time, then one line per flag kind."""
    ops = report["ops"]
    width = max([len("op")] + [len(row["op"]) for row in ops[:top]])
    lines = [f"trace_ops: {report['total_calls']} aten calls, {len(ops)} distinct ops on {report['device']} "
             f"({report['dtype']})", f"  self time: {report['profiler']}",
             f"  {'op':<{width}}  {'calls':>6}  {'self us':>10}  {'dtypes':<24}  devices"]
    for row in ops[:top]:
        self_us = "-" if row["self_time_us"] is None else f"{row['self_time_us']:.1f}"
        lines.append(f"  {row['op']:<{width}}  {row['calls']:>6}  {self_us:>10}  {','.join(row['dtypes']):<24}  "
                     f"{','.join(row['devices'])}")
    if len(ops) > top:
        lines.append(f"  ... {len(ops) - top} more op{'s' if len(ops) - top > 1 else ''}")
    lines += [_flag_line(kind, report["flags"][kind], report) for kind in FLAG_KINDS]
    if report.get("cpu_scalar_ops"):
        lines.append(f"info: {report['cpu_scalar_ops']} ops mixed 0-dim CPU scalars into device tensors (legal)")
    return "\n".join(lines)
