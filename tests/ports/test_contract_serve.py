"""The port contract's serving part, on every model folder: serve.py starts on the folder's test checkpoint (its
own process, loopback, ephemeral port: tests/serving/client.py), lists its model at /v1/models, answers one request of
its family's kind (embeddings, a completion, an image chat) as the folder's Python class answers it, and exits 0 on
SIGTERM (start_server checks the exit status when the block ends)."""
from __future__ import annotations

import pytest

from tests.ports.families import folder_params
from tests.serving.client import get, start_server
from tests.support import load_script


@pytest.mark.slow
@pytest.mark.serving
@pytest.mark.parametrize("folder", folder_params())
def test_serve_answers_models_and_one_request_and_exits_0_on_sigterm(folder, family, checkpoint, shared_data):
    inference = load_script(folder, "inference")
    with start_server(folder, ["--model_path", str(checkpoint), "--device", "cpu"]) as server:
        status, models = get(server.url, "/v1/models")
        assert status == 200 and [card["id"] for card in models["data"]] == [server.name], models
        family.check_serve(server, inference, checkpoint, shared_data)
        assert server.proc.poll() is None, server.log()[-3000:]  # still up: the SIGTERM below is what stops it
