"""Every model folder (scaffolded ports included) follows one template: its files, an identity block whose
MODEL_FAMILY has a port-contract tester (tests/ports/families.py), its readme tables and RESULTS.md generated from
its result JSONs, and scripts whose --help works, writes nothing and takes both flag spellings. The contract's runs
on each folder's test checkpoint are in test_contract_checkpoint.py and test_contract_serve.py."""
from __future__ import annotations

import ast
import json
import os

import pytest

from common import report
from common.cli import ArgumentParser
from common.results import RESULT_KINDS
from tests.ports.families import FOLDERS, TESTERS, family_tester
from tests.support import REPO_ROOT, load_script, model_folders

TEMPLATE_FILES = ("inference.py", "eval_accuracy.py", "benchmark.py", "serve.py", "readme.md")


def scripts() -> list[tuple[str, str]]:
    """(folder, module) for every runnable script in a model folder (one with a __main__ block)."""
    found = []
    for folder in model_folders():
        for file in sorted(folder.glob("*.py")):
            if 'if __name__ == "__main__":' in file.read_text(encoding="utf-8"):
                found.append((folder.name, file.stem))
    return found


def test_the_model_folders_are_found():
    assert {"all-MiniLM-L6-v2", "google_flan-t5-small", "Minitron-8B-Base", "AnandaSky"} <= set(FOLDERS)


@pytest.mark.parametrize("folder", FOLDERS)
def test_folder_has_the_template(folder):
    path = REPO_ROOT / folder
    missing = [name for name in TEMPLATE_FILES if not (path / name).is_file()]
    assert not missing, f"{folder} lacks {missing}"
    task_evals = [p.name for p in path.glob("eval_*.py") if p.name != "eval_accuracy.py"]
    assert task_evals, f"{folder} has no task eval (eval_<task>.py)"
    assert list(path.glob("make_*_checkpoint.py")), f"{folder} has no tiny/test checkpoint builder"
    identity = {node.targets[0].id for node in ast.parse((path / "inference.py").read_text()).body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    assert {"MODEL_NAME", "DEFAULT_MODEL", "MODEL_FAMILY", "MODEL_CLASS"} <= identity
    family = family_tester(folder)  # the port contract's tester of its MODEL_FAMILY (LookupError: there is none)
    for script in (family.checkpoint_script, family.task_script):
        assert (path / f"{script}.py").is_file(), f"{folder} lacks {script}.py, which its family's contract runs"


def test_every_family_tester_is_used():
    """Each tester in tests/ports/families.py tests at least one folder (so each is itself exercised)."""
    assert {family_tester(folder).name for folder in FOLDERS} == set(TESTERS)


@pytest.mark.parametrize("folder", FOLDERS)
def test_readme_tables_are_what_the_jsons_give(folder):
    path = REPO_ROOT / folder
    assert report.render_readme(path) == (path / "readme.md").read_text(encoding="utf-8"), (
        f"{folder}/readme.md is out of date: run accel-ports report {folder}")


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_result_json_is_a_result_record(folder):
    for file in sorted((REPO_ROOT / folder / "results").glob("*.json")):
        doc = json.loads(file.read_text(encoding="utf-8"))
        assert "kind" in doc, f"{file} is not a result record"
        if doc["kind"] in RESULT_KINDS:
            assert {"meta", "model", "weights", "headline"} <= set(doc), file
            assert doc["weights"] in ("real", "test checkpoint"), file
            assert doc["meta"].get("device_name") and doc["meta"].get("date_utc"), file


def test_results_overview_is_current():
    expected = report.render_overview(REPO_ROOT)
    assert (REPO_ROOT / report.OVERVIEW_FILE).read_text(encoding="utf-8") == expected, (
        "RESULTS.md is out of date: run accel-ports report --overview")


@pytest.mark.parametrize("folder,name", scripts())
def test_script_help_works_and_writes_nothing(folder, name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(REPO_ROOT / folder))
    module = load_script(folder, name)
    parser = module.build_parser()
    assert isinstance(parser, ArgumentParser), f"{folder}/{name}.py must use common.cli.ArgumentParser"
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--help"])
    assert info.value.code == 0 and "usage:" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [] and sorted(os.listdir(REPO_ROOT / folder)) == before
    for action in parser._actions:  # every long flag answers to both spellings
        longs = [o for o in action.option_strings if o.startswith("--") and ("_" in o or "-" in o[2:])]
        for option in longs:
            twin = "--" + (option[2:].replace("_", "-") if "_" in option else option[2:].replace("-", "_"))
            assert twin in action.option_strings, f"{folder}/{name}.py: {option} without {twin}"


def test_model_folders_do_not_name_a_backend():
    offenders = []
    for folder in model_folders():
        for file in folder.glob("*.py"):
            text = file.read_text(encoding="utf-8")
            if "torch.cuda" in text or '"cuda"' in text or "'cuda'" in text:
                offenders.append(str(file.relative_to(REPO_ROOT)))
    assert not offenders, f"backend names in model folders (use common.device): {offenders}"


def test_scripts_find_common_without_sys_path_lines():
    offenders = [str(f.relative_to(REPO_ROOT)) for folder in model_folders() for f in folder.glob("*.py")
                 if "sys.path.insert" in f.read_text(encoding="utf-8")]
    assert not offenders, f"use the editable install (pip install -e .), not sys.path lines: {offenders}"
