"""`accel-ports COMMAND ...`: one command line for the repository's tools (installed by `pip install -e .`).

    accel-ports new-port --from all-MiniLM-L6-v2 --name bge-small-en-v1.5 --model BAAI/bge-small-en-v1.5
    accel-ports lint Minitron-8B-Base path/to/weights
    accel-ports report --all --check
    accel-ports tiny-checkpoint --from path/to/model --output models/tiny --family causal-lm
    accel-ports bench-serve --base-url http://127.0.0.1:8000

Each command is the module named below, with the same flags: `python -m <module> ...` does the same.
The modules are imported only when their command runs, so `accel-ports --help` needs none of their dependencies.
"""
from __future__ import annotations

import importlib
import sys

from common.cli import EXIT_USAGE, run_main

COMMANDS = {  # command: (module with build_parser() and main(args), what it does)
    "new-port": ("common.porting.new_port", "scaffold a port of a new model by copying the closest folder"),
    "tiny-checkpoint": ("common.porting.tiny_checkpoint", "a tiny random checkpoint of any model's architecture"),
    "lint": ("common.diagnostics.lint", "list CUDA-only code in a folder or file, with this repository's fixes"),
    "report": ("common.report", "regenerate readme tables and RESULTS.md from the result JSONs"),
    "bench-serve": ("common.serving.load_test", "load-test a running OpenAI-compatible server"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}   (python -m {module})" for name, (module, what) in COMMANDS.items()]
    return "usage: accel-ports COMMAND [flags]   (accel-ports COMMAND --help for its flags)\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"error: unknown command {name!r}; use one of {', '.join(COMMANDS)} (see accel-ports --help)\n")
        return EXIT_USAGE
    module = importlib.import_module(COMMANDS[name][0])
    parser = module.build_parser()
    parser.prog = f"accel-ports {name}"
    try:
        args = parser.parse_args(rest)
    except SystemExit as exc:  # --help (0) or a flag argparse refused (2, one line already printed)
        return int(exc.code or 0)
    return run_main(module.main, args)


if __name__ == "__main__":
    sys.exit(main())
