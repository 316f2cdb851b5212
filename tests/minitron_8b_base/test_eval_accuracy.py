"""Minitron-8B-Base/eval_accuracy.py beyond the shared port contract (tests/ports/): a model under test whose output
embeddings are 5% off FAILs the prefill_logits part by its rel_l2 threshold, not only a planted wrong op."""
from __future__ import annotations

import json

import pytest
import torch

from tests.support import MINITRON_FOLDER, load_script


@pytest.mark.slow
def test_eval_accuracy_fails_when_the_model_under_test_is_wrong(tiny_minitron, cli, tmp_path, monkeypatch):
    evaluator = load_script(MINITRON_FOLDER, "eval_accuracy")
    real_init, built = evaluator.CausalLM.__init__, []

    def broken_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(self)
        if len(built) == 1:  # the model under test is built before the reference

            with torch.no_grad():
                self.model.get_output_embeddings().weight.mul_(1.05)

    monkeypatch.setattr(evaluator.CausalLM, "__init__", broken_init)
    output = tmp_path / "parity.json"
    assert cli(evaluator, "--model_path", tiny_minitron, "--dtype", "fp32", "--max_new_tokens", "4",
               "--output", output) == 1
    result = json.loads(output.read_text())
    assert result["passed"] is False and result["headline"] == {"passed": False}
    assert result["parts"]["prefill_logits"]["passed"] is False and "prefill_logits: rel_l2" in result["failures"][0]
