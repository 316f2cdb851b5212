"""Find where T5 overflows in fp16: the first encoder/decoder module whose output holds NaN/inf.

T5 (and Flan-T5 in particular) was trained in bf16; in fp16 its feed-forward activations can exceed 65504, the
largest fp16 number. transformers hides part of this: it keeps the `wo` projections in fp32 when loading in fp16 and
clamps each T5Block's output to 65504 - 1000, so a run can end with finite but meaningless numbers. This watch hooks
every submodule and flags an output that is NaN/inf, or an fp16 output that reached the clamp value (which only an
overflow produces). Checks are queued on the device and read back in batches, so there is no sync per module.

    with OverflowWatch(model) as watch:
        model.generate(...)
    watch.report()  # {"detected": True, "first_module": "encoder.block.0.layer.1.DenseReluDense", ...}
"""
from __future__ import annotations

import torch

FP16_CLAMP = torch.finfo(torch.float16).max - 1000  # T5Block clamps fp16 overflow to this: reaching it = overflow
FOLD_EVERY = 4096  # queued checks read back (one sync) this often, so long generations keep memory flat
SHOW_MODULES = 10  # module names listed in the report


def first_tensor(output):
    """The hidden states of a module's output: the tensor itself, or the first item of a tuple / ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "to_tuple"):
        items = output.to_tuple()
        return items[0] if items and isinstance(items[0], torch.Tensor) else None
    return None


class OverflowWatch:
    """Context manager: forward hooks on every submodule of `model`; `report()` after the forward passes."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.handles: list = []
        self.pending: list[tuple[str, torch.Tensor]] = []
        self.bad: dict[str, int] = {}  # module name -> outputs flagged, in the order first seen
        self.checked = 0

    def __enter__(self):
        for name, module in self.model.named_modules():  # shared modules (the embedding) appear once
            if name:
                self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self._fold()
        return False

    def _hook(self, name: str):
        def hook(module, inputs, output):
            tensor = first_tensor(output)
            if tensor is None or not tensor.is_floating_point() or tensor.numel() == 0:
                return
            bad = ~torch.isfinite(tensor).all()
            if tensor.dtype == torch.float16:
                bad = bad | (tensor.detach().abs().amax() >= FP16_CLAMP)
            self.pending.append((name, bad))
            if len(self.pending) >= FOLD_EVERY:
                self._fold()
        return hook

    def _fold(self) -> None:
        """Read the queued flags back (one device sync) and keep only the offenders, in execution order."""
        if not self.pending:
            return
        flags = torch.stack([flag for _, flag in self.pending]).cpu().tolist()  # one transfer, one sync
        for (name, _), flagged in zip(self.pending, flags):
            if flagged:
                self.bad[name] = self.bad.get(name, 0) + 1
        self.checked += len(self.pending)
        self.pending.clear()

    def report(self) -> dict:
        """detected, first_module (the earliest offender), the affected modules and how many outputs were checked."""
        self._fold()
        names = list(self.bad)
        return {"detected": bool(names), "first_module": names[0] if names else None, "bad_modules": len(names),
                "modules": names[:SHOW_MODULES], "checked_outputs": self.checked}


def stack_of(module_name: str | None) -> str | None:
    """'encoder.block.0.layer.1.DenseReluDense' -> 'encoder' (or decoder, lm_head, shared)."""
    return None if not module_name else module_name.split(".", 1)[0]
