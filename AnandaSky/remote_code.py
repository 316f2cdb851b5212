"""`--remote_code` for AnandaSky: run the weights folder's own modeling code, linted first, behind the flash_attn
stand-in, loaded strictly.

    python inference.py --model_path models/AnandaSky --remote_code --image line.png

The upstream AnandaSky code imports flash_attn (NVIDIA-only). This module checks that config.json's auto_map names
a modeling file inside the weights folder, lints that code with common.diagnostics.lint and says, on stderr, which findings
`common.porting.flash_attn_compat.install()` covers (a flash_attn import or use that resolves once the stand-in is
installed) and which still need attention (an autocast tied to the CUDA device type, host syncs, ...), installs the
stand-in, and loads the model with trust_remote_code, refusing any missing, unexpected or mismatched weight.
inference.AnandaSkyOCR(remote_code=True) calls it; without the flag the folder's code never runs.
"""
from __future__ import annotations

import importlib
import json
import re
import os
import sys
from functools import partial
from pathlib import Path

import torch
import transformers
from transformers.dynamic_module_utils import get_relative_import_files

from common.cli import UserError, first_line
from common.diagnostics.lint import lint_paths
from common.porting import flash_attn_compat
from common.strict_load import load_strictly

PATCHED_CODE = "modeling_anandasky_patched.py"  # the code used without --remote_code (this folder's own)
# "module.Class": a file beside config.json; no path parts, so a reference cannot reach outside the folder
AUTO_MAP_REFERENCE = re.compile(r"[A-Za-z_]\w*\.[A-Za-z_]\w*")
REMOTE_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModel")  # auto_map entries --remote_code loads, first found wins
COMPAT_RULE = "flash-attn"  # common.diagnostics.lint's rule for flash_attn use: the only one the compatibility layer covers
COMPAT_NAME = "flash_attn_compat.install()"  # what covers it, as the summary and the findings' covered_by say


def remote_code_files(folder: Path) -> tuple[str, list[Path]]:
    """(the auto class to load, the folder's code files that run: the model's module, the config's, and what they
    import relatively). UserError when config.json does not declare code of the folder's own, or the file is absent."""
    auto_map = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("auto_map") or {}
    auto_class = next((name for name in REMOTE_AUTO_CLASSES if name in auto_map), None)
    if auto_class is None:
        raise UserError(f"{str(folder)!r} carries no modeling code of its own (config.json has no auto_map entry for "
                        f"{' or '.join(REMOTE_AUTO_CLASSES)}); drop --remote_code to use {PATCHED_CODE}")
    files = []
    for key in (auto_class, "AutoConfig"):
        reference = auto_map.get(key)
        if reference is None:
            continue
        if isinstance(reference, str) and "--" in reference:  # "other/repo--module.Class": another hub repository
            raise UserError(f"{str(folder)!r}: auto_map {key} points at another repository ({reference}); only code "
                            f"inside the weights folder is run; drop --remote_code to use {PATCHED_CODE}")
        if not isinstance(reference, str) or not AUTO_MAP_REFERENCE.fullmatch(reference):
            raise UserError(f"{str(folder)!r}: config.json's auto_map {key} is {reference!r}, not 'module.ClassName' "
                            f"of a file in the folder; fix config.json, or drop --remote_code to use {PATCHED_CODE}")
        file = folder / f"{reference.rsplit('.', 1)[0]}.py"
        if not file.is_file():
            raise UserError(f"{str(folder)!r}: config.json's auto_map names {reference} but {file.name} is not in the "
                            f"folder; copy the model's code there, or drop --remote_code to use {PATCHED_CODE}")
        files += [file] + [Path(f) for f in get_relative_import_files(file)]
    return auto_class, list(dict.fromkeys(files))


def _resolves(dotted: str) -> bool:
    """Whether `dotted` (module path, then attributes) exists now, i.e. with the flash_attn stand-in installed."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except Exception:  # noqa: BLE001 - a missing module, or a real flash_attn that cannot load here
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def lint_remote_code(folder: Path, files: list[Path], covered_by: str) -> list[dict]:
    """common.diagnostics.lint findings in the folder's code, as dicts with the path relative to the folder, the flagged
    source line (`code`) and `covered_by`: set for a flash_attn import or use that resolves now (the stand-in
    installed), None for everything that still needs attention."""
    sources, out = {}, []
    for finding in lint_paths(files):
        path = Path(finding.path)
        if path not in sources:
            sources[path] = path.read_text(encoding="utf-8").splitlines()
        lines = sources[path]
        # a flash_attn import is covered when everything it imports resolves with the stand-in installed
        covered = finding.rule == COMPAT_RULE and bool(finding.imports) and all(map(_resolves, finding.imports))
        out.append({**finding.to_dict(), "path": Path(os.path.relpath(path.absolute(), folder.absolute())).as_posix(),
                    "code": lines[finding.line - 1].strip() if finding.line <= len(lines) else "",
                    "covered_by": covered_by if covered else None})
    return out


def format_remote_code(folder: Path, code_source: str, findings: list[dict]) -> str:
    """The stderr summary: what runs, which lint findings the compatibility layer covers (with the source line),
    which need attention (file:line:col, rule, what breaks -> the fix)."""
    covered = [f for f in findings if f["covered_by"]]
    todo = [f for f in findings if not f["covered_by"]]
    counts = f"{len(findings)} finding(s): {len(covered)} covered, {len(todo)} need attention" if findings else "clean"
    out = [f"--remote_code: running {code_source.split(': ', 1)[-1]} from {folder} (the weights folder's own code); "
           f"common.diagnostics.lint: {counts}"]
    if covered:
        out.append(f"  covered by {covered[0]['covered_by']}:")
        out += [f"    {f['path']}:{f['line']}: {f['code']}" for f in covered]
    if todo:
        out.append("  needs attention (the compatibility layer does not cover these; a port fixes them):")
        out += [f"    {f['path']}:{f['line']}:{f['col']}: {f['rule']} {f['message']} -> {f['fix']}" for f in todo]
    return "\n".join(out)


def prepare_remote_code(folder: Path) -> tuple[str, str, list[dict]]:
    """Before the folder's code is imported: (auto class, code_source, lint findings); the flash_attn stand-in
    installed, the summary written to stderr."""
    auto_class, files = remote_code_files(folder)
    # install() leaves a real, importable flash_attn alone: then that package is what the imports get
    covered_by = COMPAT_NAME if flash_attn_compat.install() else "the installed flash_attn package"
    try:
        findings = lint_remote_code(folder, files, covered_by)
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the folder's modeling code {files[0].name}: {first_line(exc)}") from None
    code_source = f"remote: {files[0].name}"
    sys.stderr.write(format_remote_code(folder, code_source, findings) + "\n")
    return auto_class, code_source, findings


def load_remote_model(folder: Path, auto_class: str, dtype: torch.dtype):
    """The folder's own model class through trust_remote_code, strictly (common.strict_load): every weight in the
    checkpoint loaded and every parameter of the model found there, or UserError (never a model with random parts)."""
    load = partial(getattr(transformers, auto_class).from_pretrained, folder, trust_remote_code=True, dtype=dtype)
    try:
        return load_strictly(load, folder, hint=f"check the checkpoint, or drop --remote_code to use {PATCHED_CODE}")
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the folder's own code can raise anything while it imports or builds
        raise UserError(f"the folder's own code could not load {str(folder)!r} ({type(exc).__name__}: "
                        f"{first_line(exc)}); drop --remote_code to use {PATCHED_CODE}") from None
