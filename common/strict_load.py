"""Strict weight loading: a checkpoint whose tensors do not match the architecture is refused, never run.

    from common.strict_load import load_strictly
    model = load_strictly(partial(AutoModelForCausalLM.from_pretrained, folder, dtype=dtype), folder)

`from_pretrained` fills a missing tensor with random values, drops an unexpected one, and prints a loading report
that is easy to scroll past: a renamed vision tower then "works" and recognises garbage, exit 0. Here the load asks
transformers for its loading info (`output_loading_info=True`, and `ignore_mismatched_sizes=True` so that a wrongly
shaped tensor is listed instead of raised mid-report), keeps that report off the console, and raises a one-line
UserError naming how many tensors are missing, unexpected or wrongly shaped, and the first few of each. Tied
weights are not missing: transformers leaves them out of `missing_keys` as the model declares them.
"""
from __future__ import annotations

from typing import Callable

from transformers.utils import logging as hf_logging

from common.cli import UserError

SHOW = 3  # names quoted per kind of problem; the count says how many there are


def _shape(value) -> str:
    if isinstance(value, (tuple, list)) or hasattr(value, "numel"):  # a shape: tuple, list or torch.Size
        return "x".join(str(d) for d in value)
    return str(value)


def _mismatched(entry) -> str:
    """transformers lists a wrongly shaped tensor as (name, checkpoint shape, model shape) or as its name alone."""
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        name, checkpoint, model = entry
        return f"{name} (checkpoint {_shape(checkpoint)}, model {_shape(model)})"
    return str(entry)


def problems(info: dict, allow_missing: tuple[str, ...] = ()) -> list[str]:
    """'N missing (a, b, c, ...)' and the like, for each kind of mismatch in a loading-info dict; [] when it matches.
    `allow_missing`: name prefixes an architecture may lack without harm (BERT's unused pooler)."""
    kinds = {
        "missing": sorted(k for k in info.get("missing_keys") or () if not k.startswith(allow_missing)),
        "unexpected": sorted(info.get("unexpected_keys") or ()),
        "wrongly shaped": sorted(_mismatched(e) for e in info.get("mismatched_keys") or ()),
        "load errors": [str(e).splitlines()[0] for e in info.get("error_msgs") or ()],
    }
    return [f"{len(names)} {kind} ({', '.join(names[:SHOW])}{', ...' if len(names) > SHOW else ''})"
            for kind, names in kinds.items() if names]


def load_strictly(load: Callable[..., object], source, *, allow_missing: tuple[str, ...] = (), hint: str = ""):
    """`load(**kwargs)` is a from_pretrained call with everything but the loading-info flags bound. Returns the
    model, or raises UserError (what does not match, and `hint`: how to fix it) when any tensor does not match."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the loading report would repeat over many lines what the one line says
    try:
        # trust_remote_code=False unless the caller bound it: otherwise transformers asks on stdin, and a piped "y"
        # would run a folder's code without the explicit flag
        remote = {} if "trust_remote_code" in getattr(load, "keywords", {}) else {"trust_remote_code": False}
        model, info = load(output_loading_info=True, ignore_mismatched_sizes=True, **remote)
    finally:
        hf_logging.set_verbosity(verbosity)
    found = problems(info, allow_missing)
    if found:
        raise UserError(f"the weights in {str(source)!r} do not match the architecture: {'; '.join(found)}; "
                        f"refusing to run a model with random parts{'; ' + hint if hint else ''}")
    return model
