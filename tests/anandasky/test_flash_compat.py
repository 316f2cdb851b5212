"""Unmodified upstream-style remote code that imports flash_attn runs once common.porting.flash_attn_compat is installed.

The test builds such code from the patched modeling file: the vision attention goes back to one
`flash_attn_varlen_func` call over the packed images (cu_seqlens), as the upstream file does, with
`from flash_attn import flash_attn_varlen_func` at module top. Without the layer, transformers refuses to load the
folder; with it, the folder loads through trust_remote_code and gives the patched model's logits.
"""
from __future__ import annotations

import shutil

import pytest
import torch
import transformers

from common.porting import flash_attn_compat
from tests.support import ANANDASKY_FOLDER, load_script

PATCHED_LOOP = '''        outputs = []
        for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths)):
            # (heads, n_i, head_dim): a batch of one image, no mask, no dropout
            out = F.scaled_dot_product_attention(qi.transpose(0, 1), ki.transpose(0, 1), vi.transpose(0, 1))
            outputs.append(out.transpose(0, 1))
        return self.proj(torch.cat(outputs).reshape(n, -1))
'''
UPSTREAM_VARLEN = '''        cu_seqlens = torch.tensor([0, *lengths], device=x.device).cumsum(0).to(torch.int32)
        out = flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max(lengths), max(lengths))
        return self.proj(out.reshape(n, -1))
'''


@pytest.fixture
def upstream_style_folder(anandasky_checkpoint, tmp_path):
    """A copy of the test checkpoint whose modeling file uses flash_attn as the upstream one does."""
    folder = tmp_path / "anandasky_upstream_style"
    shutil.copytree(anandasky_checkpoint, folder)
    modeling = folder / "modeling_anandasky_patched.py"
    code = modeling.read_text(encoding="utf-8")
    assert code.count(PATCHED_LOOP) == 1, "the patched vision attention changed; update this test"
    code = code.replace(PATCHED_LOOP, UPSTREAM_VARLEN)
    code = code.replace("import torch\n", "import torch\nfrom flash_attn import flash_attn_varlen_func\n", 1)
    modeling.write_text(code, encoding="utf-8")
    flash_attn_compat.uninstall()
    yield folder
    flash_attn_compat.uninstall()


@pytest.mark.slow
def test_upstream_style_code_needs_flash_attn_then_runs_with_the_layer(upstream_style_folder, anandasky_checkpoint):
    with pytest.raises(ImportError, match="flash_attn"):
        transformers.AutoModelForCausalLM.from_pretrained(upstream_style_folder, trust_remote_code=True)
    assert flash_attn_compat.install()
    upstream = transformers.AutoModelForCausalLM.from_pretrained(upstream_style_folder, trust_remote_code=True).eval()
    assert "flash_attn_varlen_func" in upstream.vision_model.blocks[0].attn.forward.__code__.co_names

    patched = load_script(ANANDASKY_FOLDER, "modeling_anandasky_patched")
    reference = patched.AnandaSkyForConditionalGeneration.from_pretrained(anandasky_checkpoint).eval()
    processor = load_script(ANANDASKY_FOLDER, "processor").AnandaSkyProcessor.from_pretrained(anandasky_checkpoint)
    evaluator = load_script(ANANDASKY_FOLDER, "eval_accuracy")
    images = [evaluator.render_text_image("Invoice 4471-B", 14),
              evaluator.render_text_image("a longer line of text", 20)]
    batch = processor(images, "Recognize the text in this image.")  # two images of different sizes, packed
    with torch.no_grad():
        got, want = upstream(**batch).logits, reference(**batch).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
