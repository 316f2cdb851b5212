"""Name the first module where a port diverges from its CPU float32 reference (msprobe's idea, at module level).

    from common.diagnostics.locate import format_locate, locate
    with torch.inference_mode():
        report = locate(test.model, reference.model, lambda: test.model(**batch_on_device),
                        lambda: reference.model(**batch_on_cpu), "bf16")
    print(format_locate(report))            # `python eval_accuracy.py --locate` in every folder does this

A parity FAIL says that the output is wrong, not where it went wrong. Forward hooks on every named module of both
models (same architecture, so the same names) record each module call; the reference runs first, then the model
under test, and each call of the model under test is compared with the reference's call of the same module and
index (a module can run several times: several batches, decoder steps, a shared embedding). Records follow the
target's forward-hook completion order, so the innermost module that breaks comes first. Per record, in float64 on
the CPU: rel_l2 = ||a-b||/||b|| over all floating tensors of the output together, the worst row's cosine (rows =
last dim), max |a-b|, `nonfinite` (NaN/inf in the target where the reference is finite), the same rel_l2 on the
module's first floating input (`input_rel_l2`) and `growth` = rel_l2 / max(input_rel_l2, unit roundoff of the dtype):
how much error the module adds itself. A module whose input error is below one rounding of the dtype is charged one
rounding's worth, so an exact input does not make growth infinite and a module that merely rounds scores about 1.

NaN/inf is never scored (as in common.parity.parity): a record with `nonfinite` > 0 has rel_l2, cosine_min, max_abs
and growth None, and `input_nonfinite` says whether the module received them or made them. Left out of the sums
(`excluded`): elements where the reference is NaN/inf, or where both sides hold an attention-mask fill (at or below
half their dtype's lowest value: -65504 in fp16 and -3.4e38 in fp32 are the same mask, not an error).

The first divergent module is the first record whose rel_l2 passes the dtype's bound in common.parity.THRESHOLDS
(the same bound the parity verdict applies to the final output: fp32 1e-4, fp16 1e-2, bf16 2e-2) or that holds
NaN/inf. A container's output holds its children's errors, so the module to fix is the first one named (inner
modules finish first); `largest_growth` is the leaf module that adds the most error itself.

Memory: the reference's (input, outputs) per call are spilled to a temporary folder (one torch.save file per call;
removed at the end); during the target run one file is loaded, compared in row chunks and deleted, so at most one
reference record is in memory at a time. The spill needs disk about the size of all the reference's module inputs
and outputs (GBs for an 8B model with long inputs): pass spill_dir, or set TMPDIR, where /tmp is small or tmpfs.
A torch.compile'd model is hooked on its eager modules (`_orig_mod`) and run with torch.compiler's force_eager stance.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from common.device import DTYPES
from common.parity import THRESHOLDS

ROOT_NAME = "(model)"  # the record name of the whole model's own call (its final output)
# Growth floor per dtype: its unit roundoff (half an ulp at 1), the error one rounding to that dtype adds.
UNIT_ROUNDOFF = {name: torch.finfo(dtype).eps / 2 for name, dtype in DTYPES.items()}  # 2^-24, 2^-11, 2^-8
CHUNK_ELEMENTS = 1 << 22  # float64 work is done this many elements at a time (32 MiB), so logits of 8B stay small
CACHE_KEYS = ("past_key_value", "cache")  # output keys holding KV caches: state, not this call's result
INPUT_KWARGS = ("hidden_states", "input", "x", "inputs_embeds")  # kwargs tried first when no arg is a float tensor
MASK_LEVEL = 0.5  # a value at or below MASK_LEVEL * finfo(dtype).min is an attention-mask fill, not an activation
TINY_NORM = 1e-30  # rel_l2's denominator floor when the reference is all zeros (keeps the JSON finite)
CONTEXT = 1  # format_locate: records shown before the first divergent one
GROWTH_HINT = 3.0  # format_locate: below this growth, the first divergent module mostly passed its input's error on


# --- what a module call produced -------------------------------------------------------------------------------

def floating_tensors(obj) -> list[torch.Tensor]:
    """Every floating tensor in a module output (tensor, tuple/list, dict/ModelOutput), in order; caches and
    non-tensors are skipped."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, dict):  # ModelOutput is an OrderedDict holding only its set fields
        return [t for key, value in obj.items() if not any(c in str(key).lower() for c in CACHE_KEYS)
                for t in floating_tensors(value)]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in floating_tensors(item)]
    return []


def first_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The module's main input: the first floating tensor among the positional args; for kwargs-only calls the
    first of INPUT_KWARGS present, else the first floating kwarg (in call order)."""
    found = floating_tensors(list(args))
    if found:
        return found[0]
    for key in INPUT_KWARGS:
        if isinstance(kwargs.get(key), torch.Tensor) and kwargs[key].is_floating_point():
            return kwargs[key]
    found = floating_tensors(kwargs)
    return found[0] if found else None


def _shapes(tensors: list[torch.Tensor]) -> list[list[int]]:
    return [list(t.shape) for t in tensors]


# --- comparison, float64, chunked -------------------------------------------------------------------------------

def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]) if t.dim() > 0 and t.shape[-1] > 0 else t.reshape(1, -1)


def _chunk_stats(t: torch.Tensor, r: torch.Tensor, t_mask: float, r_mask: float) -> dict:
    """Sums for one chunk of rows (float64). Excluded: the reference is NaN/inf, or both sides are at their dtype's
    mask level (an attention mask filled with finfo.min: -65504 in fp16 vs -3.4e38 in fp32 is agreement)."""
    t, r = t.double(), r.double()
    excluded = ~torch.isfinite(r) | ((t <= t_mask) & (r <= r_mask))
    nonfinite = ~torch.isfinite(t) & ~excluded
    scored = ~(excluded | nonfinite)
    a, b = torch.where(scored, t, 0.0), torch.where(scored, r, 0.0)
    diff = a - b
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(dim=1) / torch.clamp(na * nb, min=1e-300)
    cos = torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos)
    return {"diff2": float((diff * diff).sum()), "ref2": float((b * b).sum()),
            "max_abs": float(diff.abs().max()) if diff.numel() else 0.0,
            "cosine_min": float(cos.min()) if cos.numel() else 1.0,
            "nonfinite": int(nonfinite.sum()), "excluded": int(excluded.sum())}


def compare(target: list[torch.Tensor], reference: list[torch.Tensor], target_dtypes: list[torch.dtype]) -> dict:
    """rel_l2 over all tensors together, worst row cosine, max_abs, nonfinite and excluded counts."""
    total = {"diff2": 0.0, "ref2": 0.0, "max_abs": 0.0, "cosine_min": 1.0, "nonfinite": 0, "excluded": 0}
    for t, r, t_dtype in zip(target, reference, target_dtypes):
        t_mask = MASK_LEVEL * torch.finfo(t_dtype).min
        r_mask = MASK_LEVEL * torch.finfo(r.dtype).min
        t_rows, r_rows = _rows(t), _rows(r)
        step = max(1, CHUNK_ELEMENTS // max(t_rows.shape[1], 1))
        for start in range(0, t_rows.shape[0], step):
            part = _chunk_stats(t_rows[start:start + step], r_rows[start:start + step], t_mask, r_mask)
            for key in ("diff2", "ref2", "nonfinite", "excluded"):
                total[key] += part[key]
            total["max_abs"] = max(total["max_abs"], part["max_abs"])
            total["cosine_min"] = min(total["cosine_min"], part["cosine_min"])
    diff, ref = total.pop("diff2") ** 0.5, total.pop("ref2") ** 0.5
    total["rel_l2"] = 0.0 if diff == 0 else diff / max(ref, TINY_NORM)
    if total["nonfinite"]:  # NaN/inf is never scored (as in common.parity.parity): the count says it all
        total.update(rel_l2=None, cosine_min=None, max_abs=None)
    return total


def _on_cpu(tensor: torch.Tensor) -> torch.Tensor:
    # to the CPU first, then float: no float32 copy on the device, half the transfer for 16-bit tensors
    return tensor.detach().cpu().float()


# --- the spill: one file per reference call ---------------------------------------------------------------------

class Spill:
    """The reference's records on disk. `index` keeps only shapes in memory; `take` loads one record and deletes
    its file, so memory holds one reference record at a time and disk shrinks as the target run goes."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.index: dict[tuple[str, int], dict] = {}  # (module, call) -> {"shapes": output shapes, "file"}
        self.files_written = 0
        self.bytes_written = 0

    def put(self, key: tuple[str, int], inputs: torch.Tensor | None, outputs: list[torch.Tensor]) -> None:
        # clone: a view would save its whole storage (a slice of the KV cache would save the cache)
        record = {"input": None if inputs is None else inputs.detach().cpu().clone(),
                  "outputs": [t.detach().cpu().clone() for t in outputs]}
        file = self.folder / f"{self.files_written:07d}.pt"
        torch.save(record, file)
        self.files_written += 1
        self.bytes_written += file.stat().st_size
        self.index[key] = {"shapes": _shapes(outputs), "file": file}

    def take(self, key: tuple[str, int]) -> dict:
        file = self.index.pop(key)["file"]
        record = load_record(file)
        file.unlink()
        return record


def load_record(file: Path) -> dict:
    """One spilled reference record (a separate function so tests can watch how many are alive)."""
    return torch.load(file, map_location="cpu", weights_only=True)


# --- hooks -------------------------------------------------------------------------------------------------------

def _named_modules(model: nn.Module):
    """(name, module) for every module of the eager model (under a torch.compile wrapper); the root as ROOT_NAME."""
    for name, module in getattr(model, "_orig_mod", model).named_modules():
        yield name or ROOT_NAME, module


def _hook_all(model: nn.Module, on_call: Callable) -> list:
    handles, calls = [], {}

    def make(name):
        def hook(module, args, kwargs, output):
            call = calls.get(name, 0)
            calls[name] = call + 1
            on_call(name, call, args, kwargs, output)
        return hook

    for name, module in _named_modules(model):
        handles.append(module.register_forward_hook(make(name), with_kwargs=True))
    return handles


def _eager():
    """Run a torch.compile'd model eagerly, so the hooks fire on its modules (torch >= 2.6)."""
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    return set_stance("force_eager") if set_stance else contextlib.nullcontext()


def _run_hooked(model: nn.Module, run: Callable[[], object], on_call: Callable) -> None:
    handles = _hook_all(model, on_call)
    try:
        with _eager():
            run()
    finally:
        for handle in handles:
            handle.remove()


# --- locate ------------------------------------------------------------------------------------------------------

class _Comparer:
    """The target side's hook: each call against the reference's same (module, call), one record at a time."""

    def __init__(self, spill: Spill, threshold: float, floor: float):
        self.spill, self.threshold, self.floor = spill, threshold, floor
        self.records: list[dict] = []
        self.skipped: list[dict] = []

    def __call__(self, name: str, call: int, args: tuple, kwargs: dict, output) -> None:
        outputs = floating_tensors(output)
        key = (name, call)
        entry = self.spill.index.get(key)
        if entry is None:
            if outputs:
                self.skipped.append({"module": name, "call": call, "why": "no reference call to compare with "
                                     "(module missing, ran fewer times, or had no floating output there)"})
            return
        why = self._structure_differs(entry, outputs)
        reference = self.spill.take(key)
        if why:
            self.skipped.append({"module": name, "call": call, "why": why})
            return
        self.records.append(self._record(name, call, first_input(args, kwargs), outputs, reference))

    @staticmethod
    def _structure_differs(entry: dict, outputs: list[torch.Tensor]) -> str | None:
        shapes = _shapes(outputs)
        if not outputs:
            return "no floating tensor in the target's output"
        if shapes != entry["shapes"]:
            return f"output shapes differ: target {shapes} vs reference {entry['shapes']}"
        return None

    def _record(self, name: str, call: int, inputs, outputs: list[torch.Tensor], reference: dict) -> dict:
        stats = compare([_on_cpu(t) for t in outputs], reference["outputs"], [t.dtype for t in outputs])
        ref_input = reference["input"]
        source = {"rel_l2": None, "nonfinite": 0}
        if inputs is not None and ref_input is not None and list(inputs.shape) == list(ref_input.shape):
            source = compare([_on_cpu(inputs)], [ref_input], [inputs.dtype])
        rel_l2 = stats["rel_l2"]
        growth = None if rel_l2 is None else rel_l2 / max(source["rel_l2"] or 0.0, self.floor)
        past = stats["nonfinite"] > 0 or rel_l2 > self.threshold
        return {"module": name, "call": call, "shape": list(outputs[0].shape), "tensors": len(outputs),
                "rel_l2": rel_l2, "cosine_min": stats["cosine_min"], "max_abs": stats["max_abs"],
                "nonfinite": stats["nonfinite"], "excluded": stats["excluded"], "input_rel_l2": source["rel_l2"],
                "input_nonfinite": source["nonfinite"], "growth": growth, "past_threshold": past}


def _leftovers(spill: Spill) -> list[dict]:
    """Reference calls the target never made, one entry per module."""
    counts: dict[str, list[int]] = {}
    for name, call in spill.index:
        counts.setdefault(name, []).append(call)
    return [{"module": name, "call": min(calls), "why": f"{len(calls)} call(s) on the reference side only"}
            for name, calls in counts.items()]


def locate(target: nn.Module, reference: nn.Module, run_target: Callable[[], object],
           run_reference: Callable[[], object], dtype: str, *, show: int = 5,
           spill_dir: str | os.PathLike | None = None) -> dict:
    """Run the reference, then the target, with hooks on every module; compare each module call (see the module
    docstring). `dtype` is the target's ("fp32", "fp16", "bf16"), which picks the threshold. `show` is
    format_locate's count and changes nothing here (every record is kept). `spill_dir`: where the temporary spill
    folder goes (default: TMPDIR, else /tmp). Returns the JSON-ready report (every float finite, None for "not
    measured")."""
    if dtype not in THRESHOLDS:
        raise ValueError(f"no thresholds for dtype {dtype!r}; known: {sorted(THRESHOLDS)}")
    threshold, floor = THRESHOLDS[dtype]["rel_l2"][1], UNIT_ROUNDOFF[dtype]
    with tempfile.TemporaryDirectory(prefix="locate-", dir=spill_dir) as folder:
        spill = Spill(folder)

        def keep(name, call, args, kwargs, output):
            outputs = floating_tensors(output)
            if outputs:  # a call with no floating output has nothing to compare
                spill.put((name, call), first_input(args, kwargs), outputs)

        _run_hooked(reference, run_reference, keep)
        comparer = _Comparer(spill, threshold, floor)
        _run_hooked(target, run_target, comparer)
        skipped = comparer.skipped + _leftovers(spill)
    records = comparer.records
    first = next((r for r in records if r["past_threshold"]), None)
    first_nonfinite = next((r for r in records if r["nonfinite"] > 0), None)
    # the module that adds the most error itself: among leaves (a container's growth includes its children's, so
    # the root or a whole layer would always win) with a compared floating input (an embedding has none)
    leaves = {name for name, module in _named_modules(target) if next(module.children(), None) is None}
    grown = max((r for r in records if r["module"] in leaves and r["growth"] is not None
                 and r["input_rel_l2"] is not None), key=lambda r: r["growth"], default=None)
    return {"dtype": dtype, "threshold": {"rel_l2": threshold}, "growth_floor": floor,
            "first_divergent_module": first and first["module"],
            "first_divergent_call": first and first["call"],
            "first_nonfinite_module": first_nonfinite and first_nonfinite["module"],
            "largest_growth": grown and {key: grown[key] for key in ("module", "call", "growth")},
            "modules": records, "compared": len(records), "past_threshold": sum(r["past_threshold"] for r in records),
            "skipped": skipped, "spill": {"records": spill.files_written, "bytes": spill.bytes_written}}


# --- console -----------------------------------------------------------------------------------------------------

HEADER = (f"  {'#':>5}  {'module':<48} {'call':>4}  {'shape':<16} {'rel_l2':>9} {'cos_min':>9} {'max_abs':>9} "
          f"{'nonfin':>6} {'in_rel_l2':>9} {'growth':>9}")


def _num(value) -> str:
    return f"{'-':>9}" if value is None else f"{value:9.3g}"


def _row(index: int, r: dict, marker: str) -> str:
    name = r["module"] if len(r["module"]) <= 48 else "..." + r["module"][-45:]
    shape = "x".join(map(str, r["shape"])) + (f" +{r['tensors'] - 1}" if r["tensors"] > 1 else "")
    return (f"{marker} {index:>5}  {name:<48} {r['call']:>4}  {shape:<16} {_num(r['rel_l2'])} "
            f"{_num(r['cosine_min'])} {_num(r['max_abs'])} {r['nonfinite']:>6} {_num(r['input_rel_l2']):>9} "
            f"{_num(r['growth'])}")


def _verdict(r: dict) -> str:
    if r["nonfinite"]:
        return (f"{r['nonfinite']} NaN/inf where the reference is finite (its input: {r['input_nonfinite']}"
                + (", so this module made them)" if not r["input_nonfinite"] else ")"))
    return (f"rel_l2 {r['rel_l2']:.3g} from input rel_l2 {_num(r['input_rel_l2']).strip()} "
            f"(growth {r['growth']:.3g}: its output error over its input error)")


def format_locate(report: dict, show: int = 5) -> str:
    """A one-line summary, the first divergent module with its numbers, then the record before it (context) and
    the first `show` records past the threshold ('>' marks those)."""
    records, bound = report["modules"], report["threshold"]["rel_l2"]
    summary = (f"locate {report['dtype']} (rel_l2 > {bound:g} or NaN/inf = divergent; growth = rel_l2 / "
               f"max(input rel_l2, {report['growth_floor']:.3g})): {report['compared']} module calls compared, "
               f"{report['past_threshold']} past the threshold, {len(report['skipped'])} skipped")
    lines = [summary]
    first_index = next((i for i, r in enumerate(records) if r["past_threshold"]), None)
    if first_index is None:
        lines.append("  no module diverges: every module call is within the threshold")
    else:
        r = records[first_index]
        lines.append(f"  first divergent module: {r['module']} (call {r['call']}): " + _verdict(r))
        lines.append(f"  first non-finite module: {report['first_nonfinite_module'] or 'none'}")
        grown = report.get("largest_growth")
        if r["growth"] is not None and r["growth"] < GROWTH_HINT and grown:
            lines.append(f"  its growth is small: the error came in with its input (rounding accumulated over many "
                         f"modules?); the largest growth of a leaf module is at {grown['module']} (call "
                         f"{grown['call']}, {grown['growth']:.3g})")
        lines.append(HEADER)
        for i in range(max(0, first_index - CONTEXT), first_index):
            lines.append(_row(i, records[i], " "))
        past = [i for i in range(first_index, len(records)) if records[i]["past_threshold"]][:show]
        lines += [_row(i, records[i], ">") for i in past]
        if report["past_threshold"] > len(past):
            lines.append(f"  ... {report['past_threshold'] - len(past)} more past the threshold (all in the JSON)")
    for item in report["skipped"][:show]:
        lines.append(f"  skipped {item['module']} (call {item['call']}): {item['why']}")
    if len(report["skipped"]) > show:
        lines.append(f"  ... {len(report['skipped']) - show} more skipped (all in the JSON)")
    return "\n".join(lines)
