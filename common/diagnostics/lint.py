"""Find CUDA-only code before a port fails on Ascend NPU, MPS or CPU: an AST scan of Python files, not a grep.

    accel-ports lint all-MiniLM-L6-v2 google_flan-t5-small Minitron-8B-Base AnandaSky common
    accel-ports lint /path/to/weights_folder --json lint.json   # the model's own remote code too

Every `.py` under the given files and folders is parsed (.venv, __pycache__, .git and site-packages are skipped),
remote code in a weights folder included (modeling_*.py beside config.json). Names are resolved through the file's
imports, so `import torch as th; th.cuda.synchronize()`, `from torch.cuda.amp import autocast` and
`import flash_attn.bert_padding as bp` are all seen. Each finding says what breaks, where, and the replacement
this repository offers:

    AnandaSky/modeling_x.py:12:1: flash-attn flash_attn is NVIDIA-only: the import fails on ... -> call common...

A finding that is intended is silenced on its line with `# lint-port: allow RULE -- reason` (the reason is
required). Imports inside `try: ... except ImportError` and code under `if ... == "cuda":` are not findings: they
cannot break elsewhere. Exit status: 1 with findings, 0 when clean, 2 on bad input (one `error:` line).
"""
from __future__ import annotations

import ast
import io
import os
import sys
import tokenize
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from common.cli import ArgumentParser, UserError, run_main
from common.diagnostics.lint_rules import (AUTOCASTS, BACKEND_FIXES, CUDA_API_FIXES, CUDA_ENV, CUDA_GUARDED, DIST_BACKEND_POSITION,
                         ELSEWHERE, FACTORIES, FIXES, HOST_SYNCS, IMPORT_CALLS, IMPORTS, RULES)
from common.results import check_writable, write_json

SKIP_DIRS = {".venv", "__pycache__", ".git", "site-packages"}  # environments and caches, never the port's code
SUPPRESS_TAG = "lint-port:"  # the comment marker that starts a suppression (written in full in the docstring)


@dataclass(frozen=True)
class Finding:
    """One finding; line and col are 1-based, like flake8 and ruff."""
    path: str
    line: int
    col: int
    rule: str
    message: str
    fix: str
    imports: tuple[str, ...] = ()  # for an import statement: the qualified names it imports ("flash_attn.x.f")

    def to_dict(self) -> dict:
        """The reported fields (`imports` is for callers that check what an import needs, not for the report)."""
        return {k: v for k, v in asdict(self).items() if k != "imports"}


def is_cuda_string(node) -> bool:
    """'cuda' or 'cuda:N' as a string literal."""
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return False
    kind, colon, index = node.value.partition(":")
    return kind == "cuda" and (not colon or index.isdigit())


def cuda_strings(node) -> list[ast.Constant]:
    """The 'cuda' literals an expression can evaluate to: itself, or either branch of `a if c else b` / `a or b`."""
    if isinstance(node, ast.IfExp):
        return cuda_strings(node.body) + cuda_strings(node.orelse)
    if isinstance(node, ast.BoolOp):
        return [c for value in node.values for c in cuda_strings(value)]
    return [node] if is_cuda_string(node) else []


def device_named(node) -> bool:
    """A variable, attribute or keyword named like a device: `device`, `args.device`, `self.target_device`."""
    name = node if isinstance(node, str) else getattr(node, "id", None) or getattr(node, "attr", None)
    return isinstance(name, str) and ("device" in name.lower() or name == "map_location")


def cuda_branch(test) -> str | None:
    """The branch of `if <test>:` that runs only on CUDA, where CUDA-only code is on purpose: 'body' for
    `device.type == "cuda"`, 'orelse' for `device.type != "cuda"`, None for any other test."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and any(is_cuda_string(n) for n in (test.left, *test.comparators))):
        return None
    return {ast.Eq: "body", ast.Is: "body", ast.NotEq: "orelse", ast.IsNot: "orelse"}.get(type(test.ops[0]))


def catches_import_error(node: ast.Try) -> bool:
    names = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
    for handler in node.handlers:
        caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if handler.type is None or any(getattr(c, "id", None) in names for c in caught):
            return True
    return False


def longest_prefix(name: str, table: dict, sep: str = ".") -> str | None:
    matches = [key for key in table if name == key or name.startswith(key + sep)]
    return table[max(matches, key=len)] if matches else None


class PortVisitor(ast.NodeVisitor):
    """Walks one module, resolving names through its imports, and collects raw findings (before suppression)."""

    def __init__(self, path: str, remote_code: bool):
        self.path, self.remote_code = path, remote_code
        self.aliases: dict[str, str] = {"__import__": "__import__"}  # local name -> qualified ("th" -> "torch")
        self.findings: list[Finding] = []
        self.guarded_imports = self.cuda_guards = self.forward_depth = self.raise_depth = 0
        self.moved: set[int] = set()  # ids of factory calls followed directly by .to(...)

    def add(self, node, rule: str, message: str, fix: str | None = None, line=None, col=None, imports=()) -> None:
        if self.cuda_guards and rule in CUDA_GUARDED:
            return  # under `if device.type == "cuda":` CUDA-only code is what the branch is for
        if self.remote_code:
            message += " (remote code in a weights folder)"
        self.findings.append(Finding(self.path, line or node.lineno, (node.col_offset if col is None else col) + 1,
                                     rule, message, fix or FIXES[rule], tuple(imports)))

    def qualname(self, node) -> str | None:
        """`th.cuda.synchronize` -> 'torch.cuda.synchronize' through the alias map; None for anything else."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    # --- imports and aliases ----------------------------------------------------------------------------------

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:  # `import torch.cuda` binds `torch`
                top = alias.name.split(".")[0]
                self.aliases[top] = top
            self.check_import(node, alias.name, [alias.name])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = "." * node.level + (node.module or "")  # relative names never match a library's
        prefix = f"{module}." if node.module else module  # `from . import x` -> '.x'
        for alias in node.names:
            if alias.name != "*":
                self.aliases[alias.asname or alias.name] = prefix + alias.name
        if node.level == 0 and node.module:
            self.check_import(node, node.module, [f"{node.module}.{alias.name}" for alias in node.names])

    def check_import(self, node, module: str, imports=()) -> None:
        top = module.split(".")[0]
        known = IMPORTS.get("flash_attn" if top.startswith("flash_attn") else top)  # flash_attn_2_cuda too
        if known and not self.guarded_imports:
            self.add(node, *known, imports=imports)

    def visit_Try(self, node: ast.Try) -> None:
        self.visit_inside("guarded_imports", catches_import_error(node), node.body)
        self.visit_inside("guarded_imports", False, [*node.handlers, *node.orelse, *node.finalbody])

    def visit_Assign(self, node: ast.Assign) -> None:
        source = self.qualname(node.value)
        for target in node.targets:
            if source and isinstance(target, ast.Name):  # `cuda = torch.cuda` makes `cuda` an alias
                self.aliases[target.id] = source
            self.check_device_value(target, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.check_device_value(node.target, node.value)
        self.generic_visit(node)

    # --- scopes: forward, cuda guards, raise --------------------------------------------------------------------

    def visit_inside(self, counter: str, active: bool, nodes) -> None:
        """Visit nodes with the scope counter `counter` raised by one when active."""
        setattr(self, counter, getattr(self, counter) + active)
        for child in nodes:
            self.visit(child)
        setattr(self, counter, getattr(self, counter) - active)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for child in node.body:  # lexically inside `def forward` of a class: the module's per-call path
            forward = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and child.name == "forward"
            self.visit_inside("forward_depth", forward, [child])
        self.visit_inside("forward_depth", False, [*node.bases, *node.keywords, *node.decorator_list])

    def visit_FunctionDef(self, node) -> None:
        args = node.args
        positional = [*args.posonlyargs, *args.args]
        pairs = [*zip(positional[len(positional) - len(args.defaults):], args.defaults),
                 *zip(args.kwonlyargs, args.kw_defaults)]
        for arg, default in pairs:  # `def load(device="cuda")`
            if default is not None and device_named(arg.arg):
                self.flag_device_strings(default)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        branch = cuda_branch(node.test)
        self.visit_inside("cuda_guards", branch == "body", node.body)
        self.visit_inside("cuda_guards", branch == "orelse", node.orelse)

    def visit_Raise(self, node: ast.Raise) -> None:  # an error message's .tolist() runs on the failure path only
        self.visit_inside("raise_depth", True, [n for n in (node.exc, node.cause) if n is not None])

    # --- names and attributes ----------------------------------------------------------------------------------

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = self.qualname(node)
        if name is None:
            self.generic_visit(node)
        else:  # a resolved chain holds only names: report it once, not each prefix
            self.check_module_use(node, name)

    def visit_Name(self, node: ast.Name) -> None:
        name = self.aliases.get(node.id)
        if name and isinstance(node.ctx, ast.Load):
            self.check_module_use(node, name)

    def check_module_use(self, node, name: str) -> None:
        if name.startswith(("torch.backends.cudnn", "torch.backends.cuda")):
            self.add(node, "cudnn", f"{name} configures NVIDIA's cuDNN/CUDA backend: it has no effect {ELSEWHERE} "
                                    "(the setting silently does nothing)", longest_prefix(name, BACKEND_FIXES))
        elif name == "torch.cuda" or name.startswith("torch.cuda."):
            member = name[len("torch.cuda."):]
            fix = longest_prefix(member, CUDA_API_FIXES) or FIXES["torch-cuda-api"].format(name=member or "<name>")
            self.add(node, "torch-cuda-api", f"{name} talks to NVIDIA GPUs only: {ELSEWHERE} it raises or answers "
                                             "for a device that is not the one in use", fix)

    # --- calls -------------------------------------------------------------------------------------------------

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = self.qualname(func)
        if isinstance(func, ast.Attribute):
            self.check_method_call(node, func, name)
        if name:
            self.check_library_call(node, name)
        for keyword in node.keywords:  # device="cuda", map_location="cuda" (autocast's device_type: its own rule)
            if keyword.arg and device_named(keyword.arg) and name not in AUTOCASTS:
                self.flag_device_strings(keyword.value)
        self.generic_visit(node)

    def check_method_call(self, node: ast.Call, func: ast.Attribute, name: str | None) -> None:
        line, col = func.end_lineno, func.end_col_offset - len(func.attr)  # where `.attr` is, for the allow comment
        if func.attr == "cuda" and name != "torch.cuda":  # the module itself is torch-cuda-api's
            self.add(func, "cuda-call", f".cuda() moves to an NVIDIA GPU: it raises {ELSEWHERE}", line=line, col=col)
        elif func.attr == "to":
            if node.args:
                self.flag_device_strings(node.args[0])
            if isinstance(func.value, ast.Call):
                self.moved.add(id(func.value))
        elif func.attr in HOST_SYNCS and self.forward_depth and not self.raise_depth:
            self.add(func, "host-sync-in-forward", f".{func.attr}() inside forward copies to the host: the call waits "
                     "for every queued kernel (a host sync per call on Ascend NPU, MPS and CUDA) and breaks graph "
                     "capture", line=line, col=col)
        elif func.attr == "add_argument" and node.args and isinstance(node.args[0], ast.Constant) \
                and device_named(str(node.args[0].value)):
            for keyword in node.keywords:  # parser.add_argument("--device", default="cuda")
                if keyword.arg == "default":
                    self.flag_device_strings(keyword.value)

    def check_library_call(self, node: ast.Call, name: str) -> None:
        if name == "torch.device":
            for arg in node.args:
                self.flag_device_strings(arg)
        elif name in AUTOCASTS:
            kind = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "device_type"),
                                                       None)
            if is_cuda_string(kind):
                self.add(kind, "cuda-autocast", f"autocast({kind.value!r}) only covers CUDA tensors: {ELSEWHERE} the "
                                                "region runs without mixed precision (a warning at most)")
        elif name in DIST_BACKEND_POSITION:
            self.check_dist_backend(node, DIST_BACKEND_POSITION[name])
        elif name in IMPORT_CALLS and node.args and isinstance(node.args[0], ast.Constant):
            if isinstance(node.args[0].value, str) and not self.guarded_imports:
                self.check_import(node, node.args[0].value)
        elif name.startswith("torch.") and name[len("torch."):] in FACTORIES and self.forward_depth:
            if id(node) not in self.moved and not any(k.arg == "device" for k in node.keywords):
                self.add(node, "cpu-tensor-in-forward", f"{name}() without device= inside forward builds the "
                         "tensor on the CPU: on Ascend NPU, MPS and CUDA it is copied every call, or ops mix devices "
                         "and fail")

    def check_dist_backend(self, node: ast.Call, position: int) -> None:
        backend = node.args[position] if len(node.args) > position else \
            next((k.value for k in node.keywords if k.arg == "backend"), None)
        if isinstance(backend, ast.Constant) and backend.value == "nccl":
            self.add(backend, "nccl", f"'nccl' is NVIDIA's collective library: process-group init fails {ELSEWHERE}")

    # --- strings ------------------------------------------------------------------------------------------------

    def flag_device_strings(self, node) -> None:
        for constant in cuda_strings(node):
            self.add(constant, "cuda-device-string", f"{constant.value!r} as a device: it raises {ELSEWHERE}, or "
                                                     "hard-codes the CUDA branch")

    def check_device_value(self, target, value) -> None:
        if device_named(target):  # device = "cuda", self.device = "cuda"
            self.flag_device_strings(value)

    def visit_Compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        if any(device_named(o) for o in operands if isinstance(o, (ast.Name, ast.Attribute))):
            for operand in operands:
                self.flag_device_strings(operand)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if node.value == CUDA_ENV:
            self.add(node, "cuda-env", f"{CUDA_ENV} is ignored by Ascend NPU (and MPS, CPU): every device stays "
                                       "visible")


def read_suppressions(text: str, path: str) -> tuple[dict[int, set[str]], list[Finding]]:
    """{line: rules allowed there} from `# lint-port: allow RULE[, RULE] -- reason` comments, and a finding for each
    malformed one. Comments come from tokenize (the AST has none)."""
    allowed: dict[int, set[str]] = {}
    bad = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type != tokenize.COMMENT or SUPPRESS_TAG not in token.string:
            continue
        body = token.string.split(SUPPRESS_TAG, 1)[1].strip()
        spec, _, reason = body.removeprefix("allow").partition("--")
        rules = spec.replace(",", " ").split()
        unknown = [r for r in rules if r not in RULES]
        problem = ("expected 'allow RULE -- reason'" if not body.startswith("allow") or not rules else
                   f"unknown rule {unknown[0]!r}" if unknown else
                   "no reason given after ' -- '" if not reason.strip() else None)
        line, col = token.start
        if problem:
            bad.append(Finding(path, line, col + 1, "bad-suppression", f"suppression comment: {problem}",
                               FIXES["bad-suppression"]))
        else:
            allowed.setdefault(line, set()).update(rules)
    return allowed, bad


def is_remote_code(path: Path) -> bool:
    return path.name.startswith("modeling_") and (path.parent / "config.json").is_file()


def lint_file(path: Path) -> list[Finding]:
    """Findings of one .py file, suppressions applied. UserError when it is not UTF-8 or does not parse."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
        with warnings.catch_warnings():  # remote code's invalid escapes are not this tool's findings
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(text, filename=str(path))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid UTF-8 (byte {exc.start}); save it as UTF-8 or leave it out") from None
    except SyntaxError as exc:
        where = f"{path}:{exc.lineno}" if exc.lineno else str(path)
        raise UserError(f"{where}: syntax error: {exc.msg}; fix the file or leave it out") from None
    except ValueError as exc:  # null bytes in the source
        raise UserError(f"{path}: not Python source ({exc}); fix the file or leave it out") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    visitor = PortVisitor(str(path), is_remote_code(path))
    visitor.visit(tree)
    allowed, bad = read_suppressions(text, str(path))
    return [f for f in visitor.findings if f.rule not in allowed.get(f.line, ())] + bad


def collect_files(paths) -> list[Path]:
    """Every .py under the paths, in a stable order, each once. UserError for a missing path or a non-.py file."""
    files: dict[Path, None] = {}
    for given in map(Path, paths):
        if not given.exists():
            raise UserError(f"{given} does not exist; pass files or folders of Python code")
        if given.is_file():
            if given.suffix != ".py":
                raise UserError(f"{given} is not a .py file; pass Python files or folders")
            files.setdefault(given, None)
            continue
        for folder, subfolders, names in os.walk(given):
            subfolders[:] = sorted(d for d in subfolders if d not in SKIP_DIRS)
            files.update((Path(folder) / n, None) for n in sorted(names) if n.endswith(".py"))
    unique: dict[Path, Path] = {}
    for file in files:
        unique.setdefault(file.resolve(), file)  # a file named twice (itself and its folder) is scanned once
    return list(unique.values())


def lint_paths(paths) -> list[Finding]:
    """Findings of every .py under the paths (files or folders), sorted by file, line, column and rule."""
    return sorted((f for file in collect_files(paths) for f in lint_file(file)),
                  key=lambda f: (f.path, f.line, f.col, f.rule))


def counts(findings) -> dict[str, int]:
    return dict(sorted(Counter(f.rule for f in findings).items()))


def format_findings(findings, root=None, files_scanned: int | None = None) -> str:
    """'path:line:col: RULE message -> fix' per finding, then one summary line. Paths relative to root if given."""
    lines = []
    for f in findings:
        path = f.path
        if root is not None:
            try:
                path = str(Path(f.path).resolve().relative_to(Path(root).resolve()))
            except ValueError:
                pass
        lines.append(f"{path}:{f.line}:{f.col}: {f.rule} {f.message} -> {f.fix}")
    scanned = f" in {files_scanned} files" if files_scanned is not None else ""
    by_rule = ", ".join(f"{rule} {n}" for rule, n in counts(findings).items())
    lines.append(f"lint-port: {len(findings)} findings{scanned} ({by_rule})" if findings else
                 f"lint-port: clean, no findings{scanned}")
    return "\n".join(lines)


def main(args) -> int:
    if args.json:
        check_writable(args.json, "--json")
    files = collect_files(args.paths)
    findings = lint_paths(files)
    print(format_findings(findings, root=Path.cwd(), files_scanned=len(files)))
    if args.json:
        report = {"paths": [str(p) for p in args.paths], "findings": [f.to_dict() for f in findings],
                  "counts": counts(findings), "files_scanned": len(files)}
        try:
            write_json(args.json, report)
        except OSError as exc:
            raise UserError(f"cannot write --json {args.json}: {exc.strerror}") from None
    return 1 if findings else 0


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", type=Path, help=".py files or folders (scanned recursively)")
    p.add_argument("--json", type=Path, help="also write the findings to this JSON file")
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
