"""Build a tiny random checkpoint of all-MiniLM-L6-v2's architecture, for tests and for trying the scripts without
the real weights.

    python make_tiny_checkpoint.py --output models/tiny                        # from the embedded all-MiniLM-L6-v2
    python make_tiny_checkpoint.py --output models/tiny --from OTHER_MODEL     # any sentence-transformers model

Only the source's config, tokenizer and sentence-transformers module files are read: the config is shrunk (64 wide,
2 layers), the tokenizer retrained to a small vocabulary, the modules (pooling, Dense, Normalize) kept, and the
weights are random and seeded (common/porting/tiny_checkpoint.py). The folder is marked as a test checkpoint, so nothing
measured on it reads as the real model's results.
"""
from __future__ import annotations

import sys
from pathlib import Path

from common.cli import ArgumentParser, run_main
from common.results import check_output_folder
from common.model_path import resolve_model_path
from common.porting.tiny_checkpoint import build_tiny
from inference import DEFAULT_MODEL, MODEL_FAMILY, MODEL_NAME


def build(output, source=None) -> Path:
    """Write the tiny random checkpoint to `output` (from `source`'s architecture when given); returns the folder."""
    return build_tiny(source or resolve_model_path(None, default=DEFAULT_MODEL), output, MODEL_FAMILY)


def main(args) -> int:
    check_output_folder(args.output)
    folder = build(args.output, args.source)
    print(f"wrote a tiny random checkpoint to {folder}; pass --model_path {folder}")
    return 0


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=f"Build a tiny random checkpoint of {MODEL_NAME}'s architecture.")
    p.add_argument("--output", required=True, help="folder to write (created)")
    p.add_argument("--from", dest="source", default=None,
                   help=f"model folder or hub id whose architecture to copy (default: the embedded {MODEL_NAME})")
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
