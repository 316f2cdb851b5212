"""AnandaSky OCR vision-language model, patched to run without flash_attn (Ascend NPU, CUDA, MPS, CPU).

    from modeling_anandasky_patched import AnandaSkyForConditionalGeneration
    model = AnandaSkyForConditionalGeneration.from_pretrained("path/to/weights", dtype=torch.bfloat16)
    # or, from a weights folder that carries a copy of this file:
    AutoModelForCausalLM.from_pretrained("path/to/weights", trust_remote_code=True)

Architecture: a ViT vision encoder (4 pre-LN layers, hidden 768, 12 heads, 2D RoPE over (row, column) of the
14x14 patches), a 2-layer MLP bridge (768 -> text hidden) and the Qwen3-0.6B text decoder (transformers' own
`Qwen3ForCausalLM`). Every image patch becomes one `<|image_pad|>` token of the prompt, replaced by its feature.

What the port replaced (the upstream remote code needs the CUDA-only flash_attn package):
  * `flash_attn_varlen_func` over packed images (cu_seqlens) -> `scaled_dot_product_attention` per image
    (`AnandaSkyVisionAttention`, the reason for the per-image split is written there);
  * `flash_attn_with_kvcache` in the decoder -> transformers' Qwen3 with attn_implementation "sdpa" and its cache;
  * `flash_attn.bert_padding` unpad/pad -> boolean-mask indexing (`masked_scatter` of image features);
  * an autocast hard-wired to the CUDA device type -> no autocast: the model runs in the dtype it was loaded in, and the
    RoPE angles are computed in float32 with autocast disabled for whatever device the tensors are on.

This file is self-contained (torch + transformers only): it is copied into weights folders and loaded with
`trust_remote_code=True`, so it must never import the repository's `common` package.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel, Qwen3Config, Qwen3ForCausalLM

# The real model's sizes. Vision: a ViT-B-width encoder with 4 layers (~29M parameters).
VISION_DEFAULTS = dict(hidden_size=768, num_hidden_layers=4, num_attention_heads=12, intermediate_size=3072,
                       patch_size=14, num_channels=3, layer_norm_eps=1e-6, rope_theta=10000.0, hidden_act="gelu")
# Text: Qwen3-0.6B (596M parameters with the tied embedding).
TEXT_DEFAULTS = dict(vocab_size=151936, hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=128, intermediate_size=3072, hidden_act="silu",
                     rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=40960,
                     tie_word_embeddings=True, attention_bias=False, bos_token_id=151643, eos_token_id=151645)
# Qwen tokenizer ids of <|image_pad|>, <|vision_start|> and <|vision_end|>.
IMAGE_TOKEN_ID, VISION_START_TOKEN_ID, VISION_END_TOKEN_ID = 151655, 151652, 151653
MODELING_FILE = "modeling_anandasky_patched.py"
AUTO_MAP = {  # written into config.json by save_pretrained, so trust_remote_code finds the classes in the copy
    "AutoConfig": "modeling_anandasky_patched.AnandaSkyConfig",
    "AutoModel": "modeling_anandasky_patched.AnandaSkyForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_anandasky_patched.AnandaSkyForConditionalGeneration",
}


def _text_config(text_config) -> Qwen3Config:
    """A Qwen3Config from None, a (possibly partial) dict, or a config; missing keys take Qwen3-0.6B's values."""
    if isinstance(text_config, Qwen3Config):
        return text_config
    given = dict(text_config or {})
    merged = {**TEXT_DEFAULTS, **given}
    if "rope_parameters" in given and "rope_theta" not in given:
        merged.pop("rope_theta")  # a saved config holds its theta in rope_parameters; the default must not override
    merged.pop("model_type", None)
    return Qwen3Config(**merged)


class AnandaSkyConfig(PretrainedConfig):
    """Vision encoder sizes (`vision_config`, a dict), the Qwen3 decoder (`text_config`), the bridge width and the
    ids of the image/vision tokens. Defaults are the real model's sizes."""

    model_type = "anandasky"
    sub_configs = {"text_config": Qwen3Config}  # so attn_implementation and dtype reach the decoder's config

    def __init__(self, vision_config: dict | None = None, text_config=None, bridge_hidden_size: int | None = None,
                 image_token_id: int = IMAGE_TOKEN_ID, vision_start_token_id: int = VISION_START_TOKEN_ID,
                 vision_end_token_id: int = VISION_END_TOKEN_ID, **kwargs):
        self.vision_config = {**VISION_DEFAULTS, **(vision_config or {})}
        self.text_config = _text_config(text_config)
        # LLaVA's projector convention: the bridge's inner width is the decoder's width unless stated
        self.bridge_hidden_size = bridge_hidden_size or self.text_config.hidden_size
        self.image_token_id = image_token_id
        self.vision_start_token_id = vision_start_token_id
        self.vision_end_token_id = vision_end_token_id
        kwargs.setdefault("tie_word_embeddings", self.text_config.tie_word_embeddings)
        super().__init__(**kwargs)

    def get_text_config(self, *args, **kwargs):
        return self.text_config


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def patch_positions(grid_hw: torch.Tensor) -> torch.Tensor:
    """(row, column) of every patch, images one after another in row-major order: (total_patches, 2) long."""
    rows, cols = [], []
    for h, w in grid_hw.tolist():
        rows.append(torch.arange(h, device=grid_hw.device).repeat_interleave(w))
        cols.append(torch.arange(w, device=grid_hw.device).repeat(h))
    return torch.stack((torch.cat(rows), torch.cat(cols)), dim=-1)


class AnandaSkyVisionRotary(nn.Module):
    """2D RoPE as in Qwen2-VL's vision tower: of each head's rotation pairs, half turn with the patch's row and half
    with its column, so attention sees both the vertical and the horizontal offset between two patches."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta

    def forward(self, grid_hw: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # float32 with autocast off, for the tensors' own device type: bf16 angles are wrong by whole radians at
        # column 1000+. inv_freq is computed here rather than kept as a buffer that .to(bf16) would round.
        with torch.autocast(device_type=device.type, enabled=False):
            quarter = torch.arange(0, self.head_dim // 2, 2, dtype=torch.float32, device=device)
            inv_freq = 1.0 / (self.theta ** (quarter / (self.head_dim // 2)))
            positions = patch_positions(grid_hw.to(device)).to(torch.float32)
            angles = (positions[..., None] * inv_freq).flatten(1)  # (N, head_dim/2): [row freqs, column freqs]
            angles = torch.cat((angles, angles), dim=-1)  # rotate_half pairs dim i with dim i + head_dim/2
            return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (N, heads, head_dim) rotated in float32 and cast back (low-precision rotation loses the position)."""
    xf = x.float()
    cos, sin = cos[:, None, :], sin[:, None, :]
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


class AnandaSkyVisionAttention(nn.Module):
    """Self-attention over variable-size images packed into one (total_patches, hidden) tensor.

    Replaces flash_attn_varlen_func. The packed sequence is split at the image boundaries (cu_seqlens) and each image
    runs its own unmasked `scaled_dot_product_attention`. A block-diagonal mask over the whole pack was the other
    option; it was not taken because its score matrix grows with the square of *all* patches (32 text lines of
    ~300 patches: 12 heads x 9600^2 floats = 4.4 GB) and because a masked call shuts out the fused flash kernels on
    CUDA and the NPU; per image, cost and memory grow with the sum of squares, no mask is built, and no patch can
    see another image's patches by construction. The price is one kernel launch per image and layer.
    """

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, self.head_dim).unbind(1)  # each (N, heads, head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        outputs = []
        for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths)):
            # (heads, n_i, head_dim): a batch of one image, no mask, no dropout
            out = F.scaled_dot_product_attention(qi.transpose(0, 1), ki.transpose(0, 1), vi.transpose(0, 1))
            outputs.append(out.transpose(0, 1))
        return self.proj(torch.cat(outputs).reshape(n, -1))


class AnandaSkyVisionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP."""

    def __init__(self, cfg: dict):
        super().__init__()
        hidden = cfg["hidden_size"]
        self.norm1 = nn.LayerNorm(hidden, eps=cfg["layer_norm_eps"])
        self.attn = AnandaSkyVisionAttention(hidden, cfg["num_attention_heads"])
        self.norm2 = nn.LayerNorm(hidden, eps=cfg["layer_norm_eps"])
        self.fc1 = nn.Linear(hidden, cfg["intermediate_size"])
        self.fc2 = nn.Linear(cfg["intermediate_size"], hidden)

    def forward(self, x, cos, sin, lengths):
        x = x + self.attn(self.norm1(x), cos, sin, lengths)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class AnandaSkyVisionModel(nn.Module):
    """Patches (total_patches, C*P*P) of all images, packed, + their grids (n_images, 2) -> (total_patches, hidden)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.patch_size, self.num_channels = cfg["patch_size"], cfg["num_channels"]
        # a Linear over the flattened (C, P, P) patch is exactly a stride-P Conv2d, without the reshape to images
        self.patch_embed = nn.Linear(self.num_channels * self.patch_size ** 2, cfg["hidden_size"])
        self.rotary = AnandaSkyVisionRotary(cfg["hidden_size"] // cfg["num_attention_heads"], cfg["rope_theta"])
        self.blocks = nn.ModuleList(AnandaSkyVisionBlock(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.post_layernorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])

    def forward(self, pixel_values: torch.Tensor, image_grid_hw: torch.Tensor) -> torch.Tensor:
        width = self.num_channels * self.patch_size ** 2
        if pixel_values.dim() != 2 or pixel_values.shape[1] != width:
            raise ValueError(f"pixel_values must be (total_patches, {width}), got {tuple(pixel_values.shape)}")
        patches = image_grid_hw[:, 0] * image_grid_hw[:, 1]
        lengths = patches.tolist()  # lint-port: allow host-sync-in-forward -- cu_seqlens as sizes, one sync per forward
        if sum(lengths) != pixel_values.shape[0] or min(lengths, default=0) < 1:
            raise ValueError(f"image_grid_hw {image_grid_hw.tolist()} gives {sum(lengths)} patches but "
                             f"pixel_values hold {pixel_values.shape[0]}")
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        cos, sin = self.rotary(image_grid_hw, x.device)
        for block in self.blocks:
            x = block(x, cos, sin, lengths)
        return self.post_layernorm(x)


class AnandaSkyBridge(nn.Module):
    """2-layer MLP from the vision width to the decoder's embedding width."""

    def __init__(self, vision_hidden: int, bridge_hidden: int, text_hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(vision_hidden, bridge_hidden)
        self.fc2 = nn.Linear(bridge_hidden, text_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def positions_from_mask(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Position ids that skip left padding: a padded row's first real token is position 0, as in the row alone.
    The mask covers cached + new tokens; the last `length` columns are the new ones."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, -length:]


class AnandaSkyForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """Image(s) + prompt -> text. `forward` gives decoder logits; `generate` encodes the images once, then lets the
    Qwen3 decoder generate from the prompt embeddings with its KV cache."""

    config_class = AnandaSkyConfig
    main_input_name = "input_ids"
    _no_split_modules = ["AnandaSkyVisionBlock", "Qwen3DecoderLayer"]
    _supports_sdpa = True  # the decoder's attention; the vision encoder always uses SDPA
    _supports_flash_attn = False  # the point of this port: nothing here needs flash_attn

    def __init__(self, config: AnandaSkyConfig):
        super().__init__(config)
        vision = config.vision_config
        self.vision_model = AnandaSkyVisionModel(vision)
        self.bridge = AnandaSkyBridge(vision["hidden_size"], config.bridge_hidden_size, config.text_config.hidden_size)
        self.language_model = Qwen3ForCausalLM(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.language_model.set_output_embeddings(value)

    def get_image_features(self, pixel_values: torch.Tensor, image_grid_hw: torch.Tensor) -> torch.Tensor:
        """(total_patches, text hidden): one decoder embedding per image patch, images in order."""
        return self.bridge(self.vision_model(pixel_values, image_grid_hw))

    def embed(self, input_ids: torch.Tensor, pixel_values=None, image_grid_hw=None) -> torch.Tensor:
        """Token embeddings with the image features written over the `<|image_pad|>` positions, row by row."""
        embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is None and input_ids.shape[1] == 1:  # a decode step: counting image tokens would cost a
            return embeds  # host sync per generated token; a prompt (longer than 1) is still checked below
        image_mask = input_ids == self.config.image_token_id
        n_tokens = int(image_mask.sum())  # one host sync per prefill, to check the inputs before the scatter
        if pixel_values is None:
            if n_tokens:
                raise ValueError(f"input_ids hold {n_tokens} image tokens but no pixel_values were given")
            return embeds
        if image_grid_hw is None:
            raise ValueError("pixel_values need image_grid_hw, the (rows, columns) of patches of each image")
        features = self.get_image_features(pixel_values, image_grid_hw)
        if n_tokens != features.shape[0]:
            raise ValueError(f"image token count mismatch: input_ids hold {n_tokens} image tokens "
                             f"(id {self.config.image_token_id}) but the images give {features.shape[0]} patch "
                             f"features (image_grid_hw {image_grid_hw.tolist()}); build inputs with the processor")
        # the bert_padding replacement: a boolean mask and masked_scatter, no index_put of unpadded rows
        mask = image_mask.unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(mask, features.to(embeds.dtype))

    def forward(self, input_ids=None, pixel_values=None, image_grid_hw=None, attention_mask=None, position_ids=None,
                past_key_values=None, inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        """Decoder logits (CausalLMOutputWithPast). Images are used only where input_ids hold image tokens, so a
        decode step with the cache passes the new token ids alone."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids (or inputs_embeds)")
            inputs_embeds = self.embed(input_ids, pixel_values, image_grid_hw)
        if position_ids is None and attention_mask is not None:
            position_ids = positions_from_mask(attention_mask, inputs_embeds.shape[1])
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, past_key_values=past_key_values, labels=labels,
                                   use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids=None, pixel_values=None, image_grid_hw=None, attention_mask=None, **kwargs):
        """input_ids followed by the generated tokens, like `generate` on a text model (left-padded batches welcome).

        The images go through the encoder once, here; the decoder's own `generate` then works on the embeddings,
        so every GenerationMixin option (greedy, sampling, beams, stopping) behaves as it does for Qwen3.
        """
        if input_ids is None:
            raise ValueError("generate needs input_ids (from the processor)")
        inputs_embeds = self.embed(input_ids, pixel_values, image_grid_hw)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # the checkpoint's generation_config.json (eos = <|im_end|>) with the caller's settings on top
        config = copy.deepcopy(kwargs.pop("generation_config", None) or self.generation_config)
        model_kwargs = config.update(**kwargs)
        out = self.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                           generation_config=config, **model_kwargs)
        # from embeddings alone, generate returns only the new tokens: put the prompt back in front
        if isinstance(out, torch.Tensor):
            return torch.cat((input_ids, out), dim=1)
        out.sequences = torch.cat((input_ids, out.sequences), dim=1)
        return out

    def save_pretrained(self, save_directory, *args, **kwargs):
        """The usual files, plus this modeling file and the auto_map that makes trust_remote_code find it."""
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        target = Path(save_directory) / MODELING_FILE
        if Path(__file__).resolve() != target.resolve():
            shutil.copyfile(__file__, target)


__all__ = ["AnandaSkyConfig", "AnandaSkyForConditionalGeneration", "AnandaSkyVisionModel", "AnandaSkyBridge"]
