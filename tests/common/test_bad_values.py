"""Shared guards against bad values: finite floats, probabilities, size limits, and output files that cannot be
written or would overwrite one another."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import UserError, check_at_most, finite_float, non_negative_float, probability
from common.results import check_outputs, save_figure


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN", "1e999", "abc"])
def test_finite_float_refuses_non_numbers(text):
    with pytest.raises(argparse.ArgumentTypeError):
        finite_float(text)


def test_float_types_accept_their_range_and_refuse_outside():
    assert finite_float("-2.5") == -2.5
    assert non_negative_float("0") == 0.0
    assert probability("1") == 1.0 and probability("0.05") == 0.05
    for fn, text in [(non_negative_float, "-0.1"), (probability, "0"), (probability, "5"), (probability, "nan")]:
        with pytest.raises(argparse.ArgumentTypeError):
            fn(text)


def test_check_at_most_names_the_limit():
    check_at_most(4096, 4096, "--max_new_tokens", "the context length")
    with pytest.raises(UserError, match=r"--max_new_tokens 4097 is past the context length \(4096\)"):
        check_at_most(4097, 4096, "--max_new_tokens", "the context length")


def test_check_outputs_refuses_a_companion_that_collides(tmp_path):
    with pytest.raises(UserError, match="same file as --output"):
        check_outputs({"--output": tmp_path / "x.png", "the plot beside --output": tmp_path / "x.png"})
    check_outputs({"--output": tmp_path / "x.json", "the plot beside --output": tmp_path / "x.png"})


def test_check_outputs_refuses_unwritable_places(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        check_outputs({"--output": tmp_path})
    with pytest.raises(UserError, match="not a writable folder"):
        check_outputs({"--output": "/proc/result.json"})  # refused even for root, unlike os.access
    check_outputs({"--output": tmp_path / "new" / "deeper" / "r.json"})  # folders still to be made are fine
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".write-probe")]


def test_save_figure_leaves_no_temp_file_when_it_cannot_write(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    target = tmp_path / "missing_folder" / "plot.png"
    with pytest.raises(OSError):
        save_figure(fig, target)
    assert list(tmp_path.iterdir()) == []


SCRIPTS_WRITING_A_FOLDER = ["AnandaSky/make_test_checkpoint.py", "Minitron-8B-Base/make_tiny_checkpoint.py",
                            "all-MiniLM-L6-v2/make_tiny_checkpoint.py", "google_flan-t5-small/make_tiny_checkpoint.py"]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS_WRITING_A_FOLDER)
def test_checkpoint_builders_refuse_an_output_they_cannot_write_in_one_line(script, tmp_path):
    root = Path(__file__).resolve().parents[2]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [("/proc/tiny", "error: --output /proc/tiny: /proc is not a writable folder; choose another path"),
             (a_file, f"error: --output {a_file} is a file; pass a folder to write into")]
    for output, expected in cases:
        done = subprocess.run([sys.executable, str(root / script), "--output", str(output)], capture_output=True,
                              text=True, cwd=tmp_path, timeout=300)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [expected]
