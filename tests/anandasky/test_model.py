"""AnandaSky model and processor on the seeded random checkpoint: the packed vision encoder, 2D RoPE, image-token
scatter, save/load and trust_remote_code loading, generation (greedy by hand, left-padded batches), resizing,
image modes and parameter counts."""
from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from common.diagnostics.trace_ops import trace_forward
from tests.support import ANANDASKY_FOLDER, load_script

PROMPT = "Recognize the text in this image."


@pytest.fixture(scope="module")
def sky():
    processor = load_script(ANANDASKY_FOLDER, "processor")
    return SimpleNamespace(processor=processor, modeling=sys.modules["modeling_anandasky_patched"])


@pytest.fixture(scope="module")
def model(sky, anandasky_checkpoint):
    return sky.modeling.AnandaSkyForConditionalGeneration.from_pretrained(anandasky_checkpoint).eval()


@pytest.fixture(scope="module")
def proc(sky, anandasky_checkpoint):
    return sky.processor.AnandaSkyProcessor.from_pretrained(anandasky_checkpoint)


def line_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A white strip with random black strokes: a stand-in for a text line."""
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width), 255, dtype=np.uint8)
    for _ in range(max(1, width // 12)):
        x, y = rng.integers(0, width), rng.integers(0, height)
        pixels[y:y + rng.integers(2, height // 2 + 3), x:x + rng.integers(1, 4)] = 0
    return Image.fromarray(pixels).convert("RGB")


def random_patches(grids: list[list[int]], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(h * w, 3 * 14 * 14, generator=g) for h, w in grids]


@pytest.mark.slow
@torch.no_grad()
def test_packed_images_match_each_alone(model, monkeypatch):
    vision = model.vision_model
    grids = [[2, 7], [3, 5], [1, 4]]
    pixels = random_patches(grids)
    packed = vision(torch.cat(pixels), torch.tensor(grids))
    alone = torch.cat([vision(p, torch.tensor([grid])) for p, grid in zip(pixels, grids)])
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)  # fp32 matmul blocking differs by row count
    # the check can see leakage: one attention over the whole pack gives clearly different features
    attention = type(vision.blocks[0].attn)
    forward = attention.forward
    monkeypatch.setattr(attention, "forward", lambda self, x, cos, sin, lengths: forward(self, x, cos, sin,
                                                                                        [sum(lengths)]))
    leaky = vision(torch.cat(pixels), torch.tensor(grids))
    assert (leaky - alone).abs().max() > 0.1


def test_rope_angles_follow_row_and_column_in_float32(model):
    rotary = model.vision_model.rotary
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast must not reach the angles
        cos, _ = rotary(torch.tensor([[2, 3]]), torch.device("cpu"))
    assert cos.dtype is torch.float32 and cos.shape == (6, 64)
    rows, cols = cos[:, :16], cos[:, 16:32]  # patch i sits at (i // 3, i % 3)
    assert torch.equal(rows[0], rows[2]) and not torch.equal(rows[0], rows[3])  # same row / next row
    assert torch.equal(cols[0], cols[3]) and not torch.equal(cols[0], cols[1])  # same column / next column
    assert torch.equal(cos[:, :32], cos[:, 32:])  # rotate_half pairs dim i with i + 32


@torch.no_grad()
def position_effects(vision, h: int = 3, w: int = 4) -> dict:
    """How far the encoder is from ignoring positions: outputs of a transposed / row-swapped / column-swapped
    image, mapped back to the original layout, against the original output."""
    x = random_patches([[h, w]], seed=1)[0].view(h, w, -1)
    out = vision(x.reshape(h * w, -1), torch.tensor([[h, w]])).view(h, w, -1)
    transposed = vision(x.transpose(0, 1).reshape(h * w, -1), torch.tensor([[w, h]])).view(w, h, -1).transpose(0, 1)
    rows = [1, 0] + list(range(2, h))
    cols = [1, 0] + list(range(2, w))
    row_swap = vision(x[rows].reshape(h * w, -1), torch.tensor([[h, w]])).view(h, w, -1)[rows]
    col_swap = vision(x[:, cols].reshape(h * w, -1), torch.tensor([[h, w]])).view(h, w, -1)[:, cols]
    return {name: float((other - out).abs().max()) for name, other in
            (("transpose", transposed), ("rows", row_swap), ("columns", col_swap))}


@pytest.mark.slow
def test_rope_makes_encoder_depend_on_row_and_column(model, monkeypatch):
    effects = position_effects(model.vision_model)
    assert all(value > 1e-2 for value in effects.values()), effects
    # control: with the rotation switched off, attention is permutation-equivariant and all three vanish
    rotary = model.vision_model.rotary
    monkeypatch.setattr(rotary, "forward", lambda grid, device: (torch.ones(int(grid.prod(1).sum()), 64),
                                                                 torch.zeros(int(grid.prod(1).sum()), 64)))
    assert all(value < 1e-4 for value in position_effects(model.vision_model).values())


@torch.no_grad()
def test_image_token_count_mismatch_is_a_clear_error(model, proc):
    batch = proc([line_image(140, 28)], PROMPT)
    n = int(batch["image_grid_hw"].prod(1).sum())
    ids = batch["input_ids"].clone()
    first = int((ids[0] == proc.image_token_id).nonzero()[0])
    ids[0, first] = proc.tokenizer.convert_tokens_to_ids("a")
    with pytest.raises(ValueError, match=f"hold {n - 1} image tokens .* give {n} patch features"):
        model(**{**batch, "input_ids": ids})
    with pytest.raises(ValueError, match=f"{n} image tokens but no pixel_values"):
        model(input_ids=batch["input_ids"])


@pytest.mark.slow
@torch.no_grad()
def test_save_load_round_trip(sky, model, proc, tmp_path):
    batch = proc([line_image(280, 28)], PROMPT)
    model.save_pretrained(tmp_path)
    loaded = sky.modeling.AnandaSkyForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    lm = loaded.language_model
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()  # still tied
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"] == sky.modeling.AUTO_MAP
    assert (tmp_path / "modeling_anandasky_patched.py").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("auto_class", ["AutoModelForCausalLM", "AutoModel"])
@torch.no_grad()
def test_trust_remote_code_loads_the_folder(auto_class, anandasky_checkpoint, model, proc):
    auto = getattr(transformers, auto_class).from_pretrained(anandasky_checkpoint, trust_remote_code=True).eval()
    assert type(auto).__name__ == "AnandaSkyForConditionalGeneration"
    assert type(auto).__module__.startswith("transformers_modules")  # the folder's copy, not ours
    batch = proc([line_image(280, 28)], PROMPT)
    assert torch.equal(auto(**batch).logits, model(**batch).logits)


def generate(model, batch: dict, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(new tokens (B, n), their step logits (B, n, vocab)) from model.generate, greedy."""
    out = model.generate(**batch, max_new_tokens=steps, do_sample=False, return_dict_in_generate=True,
                         output_logits=True)
    prompt_length = batch["input_ids"].shape[1]
    assert torch.equal(out.sequences[:, :prompt_length], batch["input_ids"])  # prompt first, like a text model's
    return out.sequences[:, prompt_length:], torch.stack(out.logits, dim=1)


@torch.no_grad()
def greedy_by_hand(model, batch: dict, steps: int, eos: int) -> tuple[list[int], torch.Tensor]:
    """argmax of the full forward (no KV cache) at each step: an independent reference for generate."""
    ids, mask, new, logits = batch["input_ids"], batch["attention_mask"], [], []
    for _ in range(steps):
        logits.append(model(input_ids=ids, attention_mask=mask, pixel_values=batch["pixel_values"],
                            image_grid_hw=batch["image_grid_hw"]).logits[0, -1])
        new.append(int(logits[-1].argmax()))
        if new[-1] == eos:
            break
        token = torch.tensor([[new[-1]]])
        ids, mask = torch.cat((ids, token), 1), torch.cat((mask, torch.ones_like(token)), 1)
    return new, torch.stack(logits)


@pytest.mark.slow
def test_generate_equals_greedy_by_hand(model, proc):
    batch = proc([line_image(420, 28, seed=3)], PROMPT)
    tokens, logits = generate(model, batch, 8)
    want_tokens, want_logits = greedy_by_hand(model, batch, 8, proc.eos_token_id)
    assert tokens[0].tolist() == want_tokens
    torch.testing.assert_close(logits[0], want_logits, rtol=1e-4, atol=1e-4)  # the KV cache changes nothing


@pytest.mark.slow
def test_left_padded_batch_matches_each_alone(model, proc):
    images = [line_image(560, 28, seed=4), line_image(140, 42, seed=5)]
    batch = proc(images, PROMPT)
    assert batch["attention_mask"][1, 0] == 0  # the shorter prompt really is padded, on the left
    tokens, logits = generate(model, batch, 6)
    with torch.no_grad():
        prefill = model(**batch).logits
    for row, image in enumerate(images):
        single = proc([image], PROMPT)
        alone_tokens, alone_logits = generate(model, single, 6)
        assert tokens[row].tolist() == alone_tokens[0].tolist()
        torch.testing.assert_close(logits[row], alone_logits[0], rtol=1e-4, atol=1e-4)
        with torch.no_grad():  # forward too (the path of .logits and of training), real positions only
            alone_prefill = model(**single).logits[0]
        torch.testing.assert_close(prefill[row, -len(alone_prefill):], alone_prefill, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("height, width, expected", [(28, 2227, (28, 2226)), (2000, 2000, (630, 630)),
                                                     (2227, 28, (2226, 28)), (30, 3000, None), (88, 819, None),
                                                     (5, 500, None), (10, 10, (28, 28))])
def test_resize_keeps_aspect_and_budget(proc, height, width, expected):
    h, w = proc.target_size(height, width)
    assert h % 14 == 0 and w % 14 == 0 and h >= 14 and w >= 14
    assert proc.min_pixels <= h * w <= proc.max_pixels
    area = height * width
    scale = math.sqrt(proc.max_pixels / area) if area > proc.max_pixels else \
        math.sqrt(proc.min_pixels / area) if area < proc.min_pixels else 1.0
    assert abs(h - height * scale) <= 14 and abs(w - width * scale) <= 14  # aspect kept to within one patch
    if expected:
        assert (h, w) == expected


def test_processor_batch_layout(proc):
    images = [line_image(2227, 28), line_image(300, 60, seed=1)]
    batch = proc(images, ["Read this.", "Read this line, please, every word."])
    grids = batch["image_grid_hw"]
    assert grids[0].tolist() == [2, 159]
    assert batch["pixel_values"].shape == (int(grids.prod(1).sum()), 3 * 14 * 14)
    assert (batch["input_ids"] == proc.image_token_id).sum(1).tolist() == grids.prod(1).tolist()
    mask = batch["attention_mask"]
    assert mask[:, -1].all() and (batch["input_ids"][mask == 0] == proc.pad_token_id).all()
    text = proc.tokenizer.decode(batch["input_ids"][0][mask[0] == 1])
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|>")
    assert text.endswith("<|vision_end|>Read this.<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="must not contain the special tokens"):
        proc(images[:1], "<|image_pad|>")


def test_patches_are_row_major(proc):
    levels = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40  # patch (r, c) is flat grey 40 * (3r + c)
    image = Image.fromarray(np.kron(levels, np.ones((14, 14), dtype=np.uint8))).convert("RGB")
    pixels, grid = proc.image_patches(image)
    assert grid == (2, 3) and pixels.shape == (6, 588)
    red = (levels.ravel() / 255.0 - proc.image_mean[0, 0, 0]) / proc.image_std[0, 0, 0]
    np.testing.assert_allclose(pixels[:, 0].numpy(), red, rtol=1e-5)  # first value of each patch: its red
    np.testing.assert_allclose(pixels[:, :196].std(1).numpy(), 0, atol=1e-6)  # one channel block per patch


def test_image_modes_become_rgb(sky, shared_data):
    load = sky.processor.load_image
    cases = [
        (Image.new("RGBA", (20, 10), (0, 0, 0, 0)), 255),  # fully transparent black: the white background
        (Image.new("RGBA", (20, 10), (0, 0, 0, 255)), 0),
        (Image.new("LA", (20, 10), (0, 0)), 255),
        (Image.new("L", (20, 10), 77), 77),
        (Image.new("L", (20, 10), 77).convert("P"), 77),
        (Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16)), 255),  # 16-bit: scaled, not clipped
    ]
    for image, value in cases:
        rgb = load(image)
        assert rgb.mode == "RGB" and rgb.size == (20, 10) and np.all(np.asarray(rgb) == value), image.mode
    scan = sorted((shared_data / "ocr" / "uw3_500" / "images").glob("*.bin.png"))[0]
    assert Image.open(scan).mode == "RGBA" and load(scan).mode == "RGB"
    assert load(scan.read_bytes()).size == Image.open(scan).size


@pytest.mark.parametrize("source, message", [
    (Image.new("RGB", (0, 10)), "zero size"),
    (b"", "empty"),
    (b"not an image at all", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "not a readable image"),
    (3.5, "expected an image path"),
])
def test_bad_images_raise_image_error(sky, source, message):
    with pytest.raises(sky.processor.ImageError, match=message):
        sky.processor.load_image(source)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts(sky, model):
    assert count(model.vision_model) == 28_805_376  # the real tower: 4 x 7.09M blocks + patch embedding
    assert count(model.bridge) == 768 * 512 + 512 + 512 * 512 + 512
    assert 38e6 <= count(model) <= 44e6
    with torch.device("meta"):  # the real sizes, without allocating 2.5 GB
        real = sky.modeling.AnandaSkyForConditionalGeneration(sky.modeling.AnandaSkyConfig())
    assert count(real.vision_model) == 28_805_376
    assert count(real.bridge) == 768 * 1024 + 1024 + 1024 * 1024 + 1024
    assert count(real.language_model) == 596_049_920  # Qwen3-0.6B, tied embedding counted once
    assert count(real) == 626_692_352


@pytest.mark.slow
def test_checkpoint_is_deterministic_and_complete(anandasky_checkpoint, tmp_path):
    again = load_script(ANANDASKY_FOLDER, "make_test_checkpoint").build(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json", "preprocessor_config.json"):
        assert (again / name).read_bytes() == (anandasky_checkpoint / name).read_bytes(), name
    tokenizer = load_script(ANANDASKY_FOLDER, "processor").AnandaSkyProcessor.from_pretrained(again).tokenizer
    assert 2000 <= len(tokenizer) <= 4096
    text = "Naïve café – 東京 ∑ x² 🙂 \t tabs"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: any text round-trips
    generation = json.loads((again / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_decode_steps_do_not_sync_with_the_host(model, proc):
    """A generated token's embedding (no pixel_values) needs no image-token count: that count is a host sync, and
    on an accelerator it would stall every decode step. The prefill keeps its one check (and the vision encoder its
    one cu_seqlens read)."""
    cpu = torch.device("cpu")
    step = torch.tensor([[proc.eos_token_id]])
    with torch.inference_mode():
        decode = trace_forward(lambda: model.embed(step), cpu, torch.float32, model=model, profile=False)
        batch = proc([line_image(96, 32)], PROMPT)
        prefill = trace_forward(lambda: model.embed(batch["input_ids"], batch["pixel_values"], batch["image_grid_hw"]),
                                cpu, torch.float32, model=model, profile=False)
    assert decode["host_syncs"] == 0
    assert prefill["host_syncs"] >= 1 and all(i["op"] == "aten::_local_scalar_dense"
                                              for i in prefill["flags"]["host_syncs"])
