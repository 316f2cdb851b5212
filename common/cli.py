"""User-facing errors: one line on stderr, exit code 2, no traceback.

Scripts raise `UserError` for anything the user can fix (a wrong path, an absent device, a bad size) and start
through `run_main`, which turns it into `error: <message>` and exit status 2. Programming errors still raise.
"""
from __future__ import annotations

import argparse
import math
import sys

EXIT_USAGE = 2


class UserError(Exception):
    """Something the user can fix. The message says what is wrong and how to fix it, in one line."""


def both_spellings(option_strings) -> list[str]:
    """'--model_path' -> ['--model_path', '--model-path'] (and the reverse): the seeds spell flags both ways, so
    every long flag answers to both. Short flags and one-word flags are returned as they are."""
    out = []
    for option in option_strings:
        out.append(option)
        if option.startswith("--"):
            body = option[2:]
            for twin in (body.replace("_", "-"), body.replace("-", "_")):
                if twin != body and f"--{twin}" not in option_strings and f"--{twin}" not in out:
                    out.append(f"--{twin}")
    return out


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), so every bad input reads the same way, and every long flag
    accepted in both spellings (`--model_path` and `--model-path`); `dest` keeps the underscore form. Abbreviated
    flags are refused: with two spellings of every flag they would be ambiguous, and a typo should not pass."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        if args and all(isinstance(a, str) and a.startswith("-") for a in args):
            if "dest" not in kwargs and any(a.startswith("--") for a in args):
                first_long = next(a for a in args if a.startswith("--"))
                kwargs["dest"] = first_long[2:].replace("-", "_")
            args = tuple(both_spellings(list(args)))
        return super().add_argument(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"error: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)


DEVICE_HELP = "auto | cpu | cuda[:N] | npu[:N] | mps"
DTYPE_HELP = "auto (bf16 on accelerators, fp32 on CPU) | fp32 | bf16 | fp16"


def add_model_args(parser: ArgumentParser, *, model_help: str) -> ArgumentParser:
    """--model_path (default None: the folder's DEFAULT_MODEL), --device and --dtype (both default auto), the same
    in every model folder; `model_help` says what --model_path takes there. Each folder's inference.py wraps this
    in its own add_model_args, which adds the folder's own model flags. Returns the parser."""
    parser.add_argument("--model_path", default=None, help=model_help)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    return parser


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line errors
    built from library exceptions whose messages run over several lines."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type for sizes and counts that must be >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type for counts where 0 is meaningful (e.g. warm-up iterations)."""
    return _int_at_least(text, 0)


def finite_float(text: str) -> float:
    """argparse type for any real number: 'nan' and 'inf' parse as floats but are not values a user means."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type for a temperature or a tolerance: finite and >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def probability(text: str) -> float:
    """argparse type for a nucleus mass (top_p) or a fraction: 0 < p <= 1."""
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def check_at_most(value: int, limit: int, flag: str, what: str) -> None:
    """Refuse a size past what the model (or machine) can take, naming the limit and where it comes from, before
    any work: a run that would go on without end or be killed by the OOM killer with no message is worse."""
    if value > limit:
        raise UserError(f"{flag} {value} is past {what} ({limit}); use at most {limit}")


def run_main(main, args) -> int:
    """Call `main(args)`; a UserError becomes one stderr line and exit code 2. Returns main's exit code."""
    try:
        code = main(args)
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    return int(code or 0)
