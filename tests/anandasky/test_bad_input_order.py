"""AnandaSky/inference.py checks its arguments in order: a missing model folder is the one error line even when the
image is also bad (an empty file), so the user fixes the path first. The shared port contract (tests/ports/) checks
each of those refusals alone."""
from __future__ import annotations

from tests.support import ANANDASKY_FOLDER, load_script


def test_a_missing_model_folder_is_named_before_an_empty_image(tmp_path, cli, capsys):
    (tmp_path / "empty.png").write_bytes(b"")
    inference = load_script(ANANDASKY_FOLDER, "inference")
    assert cli(inference, "--model_path", tmp_path / "absent", "--image", tmp_path / "empty.png") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "does not exist" in err[0], err
