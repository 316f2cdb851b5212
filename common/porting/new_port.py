"""Scaffold a port of a new model by copying the closest model folder.

    python -m common.porting.new_port --from all-MiniLM-L6-v2 --name bge-small-en-v1.5 --model BAAI/bge-small-en-v1.5
    python -m common.porting.new_port --from Minitron-8B-Base --name Qwen3-0.6B --model models/Qwen3-0.6B

Run at the repository root. It:
  1. reads the model's config and tokenizer (a hub id downloads only those files; a local folder is read as is) and
     writes NAME/tiny_model/: that config shrunk and that tokenizer retrained small, from which
     NAME/make_tiny_checkpoint.py builds a tiny random checkpoint of the model's own architecture;
  2. copies FOLDER to NAME without its results, and rewrites the port's identity (the block at the top of
     inference.py: MODEL_NAME, DEFAULT_MODEL, MODEL_CLASS), the class name, the folder name and the headings
     everywhere in the folder;
  3. puts the porting checklist (PORTING.md) at the top of NAME/readme.md, and renders its (empty) result tables.
It writes no test file: the shared port contract (tests/ports/) runs on every model folder that
common.porting.folders.model_folders() finds, with the tester of the folder's MODEL_FAMILY (tests/ports/families.py),
so the new folder is covered at once (`python -m pytest tests/ports -k NAME`) and passes it, as its eval_accuracy.py
passes; what is left to do is the checklist. Bad arguments (unknown folder, existing name, unreadable model) are one
line and exit 2, and leave nothing behind.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from common.cli import ArgumentParser, UserError, run_main
from common.diagnostics.lint import format_findings, lint_paths
from common.porting.folders import REPO_ROOT, model_folders
from common.porting.tiny_checkpoint import FAMILIES, build_tiny
from common.report import render_readme

IDENTITY = ("MODEL_NAME", "DEFAULT_MODEL", "MODEL_FAMILY", "MODEL_CLASS")  # inference.py constants a port rewrites
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "tiny_model", "test_checkpoint", "*.tmp")
TEXT_SUFFIXES = (".py", ".md", ".txt", ".json", ".jsonl")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TINY_SPEC = "tiny_model"  # in the new folder: the shrunk config and small tokenizer of the new model

MAKE_TINY_TEMPLATE = '''"""Build a tiny random checkpoint of {name}'s architecture, for tests and for trying the scripts without weights.

    python make_tiny_checkpoint.py --output models/tiny                       # from tiny_model/ (below)
    python make_tiny_checkpoint.py --output models/tiny --from OTHER_MODEL    # any other model of the family

tiny_model/ was written by `python -m common.porting.new_port` from {model}: its config with the sizes shrunk and its
tokenizer retrained to a small vocabulary, no weights. The weights are random and seeded (common/porting/tiny_checkpoint.py),
and the folder is marked as a test checkpoint, so nothing measured on it reads as the real model's results.
"""
from __future__ import annotations

import sys
from pathlib import Path

from common.cli import ArgumentParser, run_main
from common.porting.tiny_checkpoint import build_tiny

HERE = Path(__file__).resolve().parent
TINY_SPEC = HERE / "tiny_model"  # the shrunk config and small tokenizer of this port's model
FAMILY = "{family}"  # how the model is loaded and used (common/porting/tiny_checkpoint.py FAMILIES)


def build(output, source=None) -> Path:
    """Write the tiny random checkpoint to `output` (from `source`'s architecture when given); returns the folder."""
    return build_tiny(source or TINY_SPEC, output, FAMILY)


def main(args) -> int:
    folder = build(args.output, args.source)
    print(f"wrote a tiny random checkpoint to {{folder}}; pass --model_path {{folder}}")
    return 0


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Build a tiny random checkpoint of this port's model architecture.")
    p.add_argument("--output", required=True, help="folder to write (created)")
    p.add_argument("--from", dest="source", default=None, help="model folder or hub id (default: tiny_model/)")
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
'''

CHECKLIST = """> **Port checklist** (written by `python -m common.porting.new_port --from {source} --name {name} --model {model}`;
> the method is in [PORTING.md](../PORTING.md); delete this block when every box is ticked)
> - [x] Tiny random weights: the shared port contract, `python -m pytest tests/ports -k {name}`, passes (it did when
>       the folder was made; the folder is found and tested by its MODEL_FAMILY, with no test file to write).
> - [ ] No CUDA-only code: `python -m common.diagnostics.lint {name} WEIGHTS_FOLDER` is clean (the weights folder's remote
>       code included), or every finding is fixed or allowed with a reason.
> - [ ] Real weights run: `python inference.py --model_path {model}` gives sensible output on CPU and on the device.
> - [ ] Parity per dtype on the device: `python eval_accuracy.py --device npu --dtype bf16 --trace_ops` (then fp16,
>       fp32); PASS, and the op trace shows no CPU fallbacks or stray CPU ops. On a FAIL, the `locate` table it
>       prints names the first module that diverges.
> - [ ] Task eval on real data, set beside a published figure for this model (same split, same metric).
> - [ ] Benchmark against the library a user would otherwise call: `python benchmark.py --device npu`.
> - [ ] Serve it: `python serve.py --model_path {model} --device npu` answers the openai client (its backend
>       class follows the model's own tokenizing and generate call), and `python -m common.serving.load_test` under load.
> - [ ] This readme: rewrite the description and the notes below for {name} (they still describe {source_name}),
>       then `python -m common.report {name}` and `python -m common.report --overview`.
"""


def read_identity(folder: Path) -> dict:
    """The identity block of FOLDER/inference.py (module-level string constants), read without importing it."""
    tree = ast.parse((folder / "inference.py").read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in IDENTITY and isinstance(node.value, ast.Constant):
                found[node.targets[0].id] = node.value.value
    missing = [key for key in IDENTITY if key not in found]
    if missing:
        raise UserError(f"{folder.name}/inference.py has no {', '.join(missing)}; a folder to copy from declares its "
                        "identity block at the top of inference.py (see PORTING.md)")
    return found


def class_name_for(name: str, template_class: str) -> str:
    """'bge-small-en-v1.5' + 'MiniLMEncoder' -> 'BgeSmallEnV15Encoder'; a generic class ('CausalLM') is kept."""
    role = re.search(r"[A-Z][a-z]+$", template_class)
    if not role:
        return template_class
    camel = "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part)
    return ("M" + camel if camel[:1].isdigit() else camel) + role.group(0)


def check_arguments(root: Path, source: str, name: str) -> tuple[Path, dict]:
    folders = {f.name: f for f in model_folders(root)}
    if source not in folders:
        raise UserError(f"unknown folder {source!r}; copy from one of: {', '.join(sorted(folders))}")
    if not NAME_RE.match(name):
        raise UserError(f"--name {name!r} is not a folder name; use letters, digits, '.', '-' and '_'")
    if (root / name).exists():
        raise UserError(f"{name!r} already exists in {root}; choose another --name or remove that folder")
    identity = read_identity(folders[source])
    if identity["MODEL_FAMILY"] not in FAMILIES:
        raise UserError(f"{source} carries its own modeling code (family {identity['MODEL_FAMILY']!r}), so a copy "
                        f"cannot be made for another model automatically; copy from a folder of family "
                        f"{', '.join(FAMILIES)}, or copy {source} by hand (PORTING.md)")
    return folders[source], identity


def rewrite_text(text: str, replacements: list[tuple[str, str]]) -> str:
    for old, new in replacements:
        if old and old != new:
            pattern = rf"\b{re.escape(old)}\b" if old.isidentifier() else re.escape(old)
            text = re.sub(pattern, lambda _: new, text)
    return text


def rewrite_identity(inference: Path, values: dict) -> None:
    text = inference.read_text(encoding="utf-8")
    for key, value in values.items():
        text, count = re.subn(rf'^{key} = .*?(  #.*)?$', lambda m: f"{key} = {value!r}{m.group(1) or ''}",
                              text, count=1, flags=re.M)
        if count != 1:
            raise UserError(f"{inference}: cannot find the {key} line to rewrite")
    inference.write_text(text, encoding="utf-8")


def scaffold_folder(staging: Path, template: Path, identity: dict, args, new_class: str, model: str) -> None:
    shutil.copytree(template, staging, ignore=SKIP)
    (staging / "results").mkdir()
    (staging / "results" / ".gitkeep").write_text("")
    # the default model first: its id may contain the folder name ("embedded:all-MiniLM-L6-v2")
    replacements = [(identity["DEFAULT_MODEL"], model), (identity["MODEL_CLASS"], new_class),
                    (template.name, args.name), (identity["MODEL_NAME"], args.name)]
    for file in staging.rglob("*"):
        if file.is_file() and file.suffix in TEXT_SUFFIXES:
            file.write_text(rewrite_text(file.read_text(encoding="utf-8"), replacements), encoding="utf-8")
    rewrite_identity(staging / "inference.py", {"MODEL_NAME": args.name, "DEFAULT_MODEL": model,
                                                "MODEL_CLASS": new_class})
    (staging / "make_tiny_checkpoint.py").write_text(
        MAKE_TINY_TEMPLATE.format(name=args.name, model=model, family=identity["MODEL_FAMILY"]), encoding="utf-8")


def add_checklist(readme: Path, args, identity: dict, model: str) -> None:
    lines = readme.read_text(encoding="utf-8").splitlines(keepends=True)
    title = f"# {args.name} on NPU / CUDA / MPS / CPU\n"
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    checklist = CHECKLIST.format(source=args.source, name=args.name, model=model, source_name=identity["MODEL_NAME"])
    readme.write_text(title + "\n" + checklist + "".join(lines), encoding="utf-8")


def main(args) -> int:
    root = Path(args.root).resolve()
    template, identity = check_arguments(root, args.source, args.name)
    new_class = args.class_name or class_name_for(args.name, identity["MODEL_CLASS"])
    local = Path(args.model).expanduser()
    model = str(local.resolve()) if local.exists() else args.model
    work = Path(tempfile.mkdtemp(prefix=".new_port-", dir=root))
    try:
        staging = work / args.name
        scaffold_folder(staging, template, identity, args, new_class, model)
        print(f"reading the config and tokenizer of {args.model} ...")
        build_tiny(args.model, staging / TINY_SPEC, identity["MODEL_FAMILY"], weights=False)
        build_tiny(staging / TINY_SPEC, work / "check", identity["MODEL_FAMILY"])  # the contract's checkpoint builds
        add_checklist(staging / "readme.md", args, identity, model)
        (staging / "readme.md").write_text(render_readme(staging), encoding="utf-8")
        os.replace(staging, root / args.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"created {args.name}/ from {args.source} (class {new_class}, default model {model}); no test file to "
          f"write: the shared port contract (tests/ports/) covers it as a {identity['MODEL_FAMILY']} port\n"
          f"next: python -m pytest tests/ports -k {args.name}, then the checklist at the top of "
          f"{args.name}/readme.md")
    lint_model_code(local)
    return 0


def lint_model_code(model_folder: Path) -> None:
    """A local model folder that carries its own modeling code (remote code) is linted at once: CUDA-only imports
    and calls there are the first thing that breaks on another device."""
    if model_folder.is_dir() and any(model_folder.glob("*.py")):
        findings = lint_paths([model_folder])
        print(f"the model folder carries its own code; `python -m common.diagnostics.lint {model_folder}` says:\n"
              f"{format_findings(findings, root=model_folder)}")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Scaffold a port of a new model by copying the closest model folder.")
    p.add_argument("--from", dest="source", required=True, help="the model folder to copy (e.g. all-MiniLM-L6-v2)")
    p.add_argument("--name", required=True, help="the new folder's name (e.g. bge-small-en-v1.5)")
    p.add_argument("--model", required=True, help="hub id or local folder: the new folder's default model")
    p.add_argument("--class", dest="class_name", default=None, help="the new class name (default: from --name)")
    p.add_argument("--root", default=str(REPO_ROOT), help="repository root (default: this checkout)")
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
