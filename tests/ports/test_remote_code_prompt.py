"""Remote code runs only behind an explicit flag, never from transformers' yes/no prompt: with a model folder whose
config.json points at code of its own (auto_map) and 'y' piped to stdin, the folder's code never runs (it would
write a marker file); every loader passes trust_remote_code=False, so such a folder is refused in one line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import REPO_ROOT, load_script

SCRIPTS = {  # folder -> the script and arguments that load a model from --model_path
    "all-MiniLM-L6-v2": ["inference.py", "--text", "hi"],
    "google_flan-t5-small": ["inference.py", "--text", "hi"],
    "Minitron-8B-Base": ["inference.py", "--prompt", "hi"],
}


def booby_trap(folder, marker) -> None:
    """The folder's config.json gains an auto_map naming code in the folder; importing that code writes `marker`."""
    config = json.loads((folder / "config.json").read_text())
    auto = {name: "modeling_trapped.Trapped" for name in ("AutoConfig", "AutoModel", "AutoModelForCausalLM",
                                                           "AutoModelForSeq2SeqLM")}
    # a model_type transformers does not know: only the folder's own code could build it
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "trapped", "auto_map": auto}))
    (folder / "modeling_trapped.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")


@pytest.mark.slow
@pytest.mark.parametrize("folder", sorted(SCRIPTS))
def test_piped_yes_never_runs_a_folders_code(folder, tmp_path):
    model = load_script(folder, "make_tiny_checkpoint").build(tmp_path / "model")
    marker = tmp_path / "code_ran"
    booby_trap(model, marker)
    script, *argv = SCRIPTS[folder]
    run = subprocess.run([sys.executable, script, "--model_path", str(model), "--device", "cpu", *argv],
                         cwd=REPO_ROOT / folder, input="y\ny\ny\n", capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert not marker.exists(), f"{folder} ran the folder's code: {run.stderr[-500:]}"
    err = run.stderr.strip().splitlines()
    # refused in one line, naming the folder's own code (MiniLM says so while naming the architecture, before loading)
    refusals = ("custom code", "code ships with the checkpoint")
    assert run.returncode == 2 and err[-1].startswith("error: ") and any(r in err[-1] for r in refusals), \
        run.stderr[-1500:]
