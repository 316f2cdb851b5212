"""common.console: the `accel-ports` command dispatches to each tool's own parser and main, with the tools' exit codes
and one-line errors; `python -m common` is the same command."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from common import console
from common.cli import ArgumentParser
from common.serving import load_test
from tests.support import REPO_ROOT


def test_help_lists_every_command_with_its_module(capsys):
    assert console.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (module, _) in console.COMMANDS.items():
        assert f"  {name} " in out and f"python -m {module}" in out


def test_no_command_is_a_usage_error(capsys):
    assert console.main([]) == 2
    assert "usage: accel-ports COMMAND" in capsys.readouterr().out


def test_unknown_command_is_one_line(capsys):
    assert console.main(["new_port"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'new_port'") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", sorted(console.COMMANDS))
def test_every_command_has_the_tool_shape(name, capsys):
    module = importlib.import_module(console.COMMANDS[name][0])
    assert isinstance(module.build_parser(), ArgumentParser) and callable(module.main)
    assert console.main([name, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: accel-ports {name}")


def test_a_bad_flag_is_one_line_and_exit_2(capsys):
    assert console.main(["report", "--no-such-flag"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unrecognized arguments: --no-such-flag") and len(err.splitlines()) == 1


def test_a_tools_user_error_is_exit_2(capsys):
    assert console.main(["report"]) == 2  # neither a folder nor --overview / --all
    assert capsys.readouterr().err.strip() == "error: name a model folder, or pass --overview or --all"


def test_report_check_passes_on_this_checkout_through_the_command():
    assert console.main(["report", "--all", "--check", "--root", str(REPO_ROOT)]) == 0


def test_the_installed_script_and_python_m_common_run_the_same_main():
    script = Path(sys.executable).parent / "accel-ports"
    assert script.is_file(), "accel-ports is not installed: pip install -e . (requirements-base.txt does it)"
    for argv in ([str(script), "--help"], [sys.executable, "-m", "common", "--help"]):
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
        assert done.returncode == 0 and "bench-serve" in done.stdout, done.stderr


@pytest.mark.parametrize("argv0, argv, expected", [
    ("/venv/bin/accel-ports", ["bench-serve", "--clients", "4"], "accel-ports bench-serve --clients 4"),
    ("/repo/common/serving/load_test.py", ["--clients", "4"], "python -m common.serving.load_test --clients 4"),
])
def test_the_load_test_records_the_command_as_typed(argv0, argv, expected, monkeypatch):
    monkeypatch.setattr(sys, "argv", [argv0, *argv])
    assert load_test.typed_command() == expected
