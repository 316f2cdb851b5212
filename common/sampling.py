"""Sampling settings: (temperature, top_p) -> `model.generate` keyword arguments, one rule for every caller.

Temperature 0 is greedy decoding; above 0, multinomial sampling with nucleus mass top_p. Both branches name every
setting explicitly (None where unused, top_k 0 when sampling), because generate() fills whatever is left unset from
the checkpoint's generation_config, which may carry a top_k or a temperature of its own nobody asked for.
Callers: CausalLM.generate (Minitron-8B-Base/inference.py) and the OpenAI-style server (common.serving.generation).
"""
from __future__ import annotations

import math

from common.cli import UserError


def sampling_kwargs(temperature: float, top_p: float) -> dict:
    """generate() kwargs for this temperature and top_p; UserError for a temperature that is not a finite number
    >= 0 or a top_p outside (0, 1]."""
    if not (math.isfinite(temperature) and temperature >= 0):  # nan passes a plain `< 0` test
        raise UserError(f"temperature must be a finite number >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": 0}
