"""common.cli: one-line errors and exit 2, both flag spellings, the argparse types."""
from __future__ import annotations

import argparse

import pytest

from common.cli import ArgumentParser, UserError, add_model_args, non_negative_int, positive_int, run_main


def test_argument_parser_error_is_one_line_exit_2(capsys):
    parser = ArgumentParser(prog="tool")
    parser.add_argument("--n", type=positive_int, required=True)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--n", "0"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert "must be >= 1, got 0" in lines[0]
    assert "usage:" not in captured.err


def test_argument_parser_unknown_flag(capsys):
    parser = ArgumentParser(prog="tool")
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--bogus" in err


@pytest.mark.parametrize("text", ["0", "-1", "x", "1.5", ""])
def test_positive_int_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        positive_int(text)


def test_positive_and_non_negative_int_accept():
    assert positive_int("1") == 1
    assert positive_int("42") == 42
    assert non_negative_int("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match=">= 0"):
        non_negative_int("-1")
    with pytest.raises(argparse.ArgumentTypeError, match="whole number"):
        non_negative_int("two")


def test_run_main_user_error(capsys):
    def main(args):
        raise UserError(f"bad thing with {args[0]}; fix it")

    assert run_main(main, ["x.txt"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: bad thing with x.txt; fix it\n"
    assert captured.out == ""


def test_run_main_passes_codes_and_args(capsys):
    seen = []
    assert run_main(lambda args: seen.append(args), ["a"]) == 0  # None -> 0
    assert seen == [["a"]]
    assert run_main(lambda args: 3, []) == 3
    assert run_main(lambda args: 0, []) == 0
    assert capsys.readouterr().err == ""


def test_run_main_keyboard_interrupt_and_bugs(capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    assert run_main(interrupted, []) == 130
    assert capsys.readouterr().err == "interrupted\n"

    def buggy(args):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):  # programming errors keep their traceback
        run_main(buggy, [])




def test_add_model_args_adds_the_three_shared_flags_and_returns_the_parser():
    parser = ArgumentParser(prog="tool")
    assert add_model_args(parser, model_help="a folder (default org/name)") is parser
    assert vars(parser.parse_args([])) == {"model_path": None, "device": "auto", "dtype": "auto"}
    args = parser.parse_args(["--model-path", "m", "--device", "npu:1", "--dtype", "bf16"])  # either spelling
    assert (args.model_path, args.device, args.dtype) == ("m", "npu:1", "bf16")
    helps = {action.dest: action.help for action in parser._actions}
    assert helps["model_path"] == "a folder (default org/name)"
    assert helps["device"] == "auto | cpu | cuda[:N] | npu[:N] | mps"
    assert helps["dtype"].startswith("auto (bf16 on accelerators, fp32 on CPU)")


def test_add_model_args_needs_the_model_help():
    with pytest.raises(TypeError):
        add_model_args(ArgumentParser(prog="tool"))  # keyword-only and required: every folder says what it takes
