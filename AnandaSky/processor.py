"""AnandaSky input processing: images -> packed patches + grids, prompts -> Qwen chat-format token ids.

    from processor import AnandaSkyProcessor
    proc = AnandaSkyProcessor.from_pretrained("path/to/weights")   # preprocessor_config.json + tokenizer
    batch = proc(["line.png", pil_image], "Recognize the text in this image.")
    # batch: input_ids (B, L) and attention_mask (B, L), left-padded; pixel_values (total_patches, 3*14*14),
    # every image's patches packed in order; image_grid_hw (B, 2) = (rows, columns) of patches per image
    texts = proc.decode(generated_ids)

Images: a path, bytes or a PIL image; PNG, JPEG or anything PIL reads. Grayscale, palette and 16-bit images become
RGB; transparency is composited on white (text-line scans are often black ink on a transparent background).
A file that is missing, empty, not an image, truncated or zero-sized raises `ImageError` with one clear line, and so
does an image of more than MAX_INPUT_PIXELS pixels (checked from the header, before decoding: a decompression bomb,
a tiny PNG declaring 100000x100000, is refused without allocating it). `probe_image` does those checks without
decoding, to vet a whole data set before a model loads.
Sizes: each side becomes a multiple of the patch size, the area is kept within [min_pixels, max_pixels], and the
aspect ratio is kept to within one patch per side (Qwen2-VL's `smart_resize`, made safe for 100:1 text lines).
"""
from __future__ import annotations

import io
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import AutoTokenizer

from modeling_anandasky_patched import AnandaSkyConfig

PREPROCESSOR_FILE = "preprocessor_config.json"
# Chat-format pieces; the strings are Qwen's special tokens, and the tokenizer must know them as such.
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD)
DEFAULTS = dict(  # preprocessor_config.json keys and their values when absent
    patch_size=14,
    min_pixels=14 * 14 * 4,  # at least 4 patches: a tiny crop is scaled up, never to zero
    max_pixels=14 * 14 * 2048,  # at most 2048 patches (e.g. 630x630, or a 28x14336 line)
    image_mean=[0.48145466, 0.4578275, 0.40821073],  # CLIP's, as in the Qwen2-VL family
    image_std=[0.26862954, 0.26130258, 0.27577711],
)
RESAMPLE = Image.Resampling.BICUBIC
# Largest input image, in pixels: PIL's decompression-bomb threshold (~89.5M, ~270 MB decoded as RGB). A 600 DPI
# A4 scan is ~35M pixels; every image is resized to at most max_pixels anyway, so a larger one is refused, not decoded.
MAX_INPUT_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the problem in one line."""


def _source(source) -> tuple[object, str]:
    """What PIL should open (a PIL image, a path or a byte stream) and a name for messages; checks the file."""
    if isinstance(source, Image.Image):
        return source, "image"
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("image data is empty (0 bytes)")
        return io.BytesIO(source), "image data"
    if not isinstance(source, (str, os.PathLike)):
        raise ImageError(f"expected an image path, bytes or a PIL image, got {type(source).__name__}")
    path = Path(source)
    name = f"image file {str(path)!r}"
    if not path.exists():
        raise ImageError(f"{name} does not exist; check the path")
    if not path.is_file():
        raise ImageError(f"{name} is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{name} is empty (0 bytes)")
    return path, name


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparency composited on white; 16-bit and float images scaled to 8 bits, not clipped."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 255.0 if arr.max() <= 255 else 65535.0
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8))
    if img.mode == "P" or img.mode in ("LA", "PA", "La") or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def _too_large(name: str, detail: str) -> ImageError:
    return ImageError(f"{name} is too large ({detail}); images are capped at {MAX_INPUT_PIXELS:,} pixels "
                      "(processor.MAX_INPUT_PIXELS); downscale it first")


def _open(opened, name: str) -> Image.Image:
    """Image.open (header only) with the size checked before anything is decoded; ImageError otherwise."""
    try:
        with warnings.catch_warnings():  # between 1x and 2x PIL's limit it only warns: refused below instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = opened if isinstance(opened, Image.Image) else Image.open(opened)
    except Image.DecompressionBombError as exc:  # past 2x PIL's limit: Image.open itself refuses
        raise _too_large(name, str(exc).split(",")[0]) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _unreadable(name, exc) from None
    if img.width * img.height > MAX_INPUT_PIXELS:
        raise _too_large(name, f"{img.width}x{img.height} = {img.width * img.height:,} pixels")
    return img


def _unreadable(name: str, exc: BaseException) -> ImageError:
    detail = str(exc).split("\n")[0] or type(exc).__name__
    if isinstance(exc, UnidentifiedImageError):  # PIL's text repeats the path or names a BytesIO object
        detail = "not an image format PIL reads"
    return ImageError(f"{name} is not a readable image ({detail}); is it truncated, or not an image?")


def probe_image(source) -> tuple[int, int]:
    """(width, height) of an image file, checked without decoding its pixels (missing, empty, not an image, corrupt
    chunks, zero or past MAX_INPUT_PIXELS in size): cheap enough to vet every image of a data set up front."""
    opened, name = _source(source)
    img = _open(opened, name)
    size = img.size
    if not isinstance(opened, Image.Image):
        try:
            img.verify()  # reads the file's structure (chunk CRCs), not its pixels
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _unreadable(name, exc) from None
        finally:
            img.close()
    if size[0] < 1 or size[1] < 1:
        raise ImageError(f"{name} has zero size ({size[0]}x{size[1]} pixels)")
    return size


def load_image(source) -> Image.Image:
    """Decoded RGB image from a path, bytes or PIL image, or ImageError (missing, empty, not an image, corrupt, past
    MAX_INPUT_PIXELS)."""
    opened, name = _source(source)
    img = _open(opened, name)
    try:
        img.load()  # decode now: a truncated or corrupt file fails here, not deep inside the model
        img = ImageOps.exif_transpose(img)  # phone photos of handwriting are stored sideways with an EXIF flag
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _unreadable(name, exc) from None
    if img.width < 1 or img.height < 1:
        raise ImageError(f"{name} has zero size ({img.width}x{img.height} pixels)")
    return _to_rgb(img)


def target_size(height: int, width: int, patch: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width), multiples of `patch`, area within [min_pixels, max_pixels], aspect kept within one patch.

    Like Qwen2-VL's smart_resize, without its 200:1 refusal and its zero side for thin inputs: a side never drops
    below one patch, and when that alone breaks the budget (aspect beyond ~max_pixels/patch^2 : 1) the long side
    is cut to fit.
    """
    if height < 1 or width < 1:
        raise ImageError(f"image has zero size ({width}x{height} pixels)")
    area = height * width
    if area > max_pixels:  # floor: both sides at or under their exact scaled size, so the area is too
        scale, snap = math.sqrt(max_pixels / area), math.floor
    elif area < min_pixels:  # ceil: at or over, so the area reaches min_pixels
        scale, snap = math.sqrt(min_pixels / area), math.ceil
    else:
        scale, snap = 1.0, round
    h, w = (max(patch, snap(side * scale / patch) * patch) for side in (height, width))
    if h * w > max_pixels:  # rounding to the nearest patch overshot: floor instead
        h, w = (max(patch, math.floor(side * scale / patch) * patch) for side in (height, width))
    if h * w > max_pixels:  # one side was held at a single patch: shorten the other
        if h <= w:
            w = max(patch, max_pixels // h // patch * patch)
        else:
            h = max(patch, max_pixels // w // patch * patch)
    return h, w


def context_length(config, tokenizer) -> tuple[int, str]:
    """(the decoder's context length, where it comes from): config.json's text_config.max_position_embeddings, or
    the tokenizer's model_max_length when that is finite and smaller."""
    limit = int(config.text_config.max_position_embeddings)
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < limit:
        return tokenizer_limit, "tokenizer_config.json model_max_length"
    return limit, "config.json text_config.max_position_embeddings"


def check_prompt(prompt) -> str:
    """The prompt, or ValueError: it must be a UTF-8 string without the chat/vision special tokens (a literal
    <|image_pad|> would desynchronise image tokens and patches)."""
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")  # a non-UTF-8 byte on the command line arrives as a lone surrogate
    except UnicodeEncodeError as exc:
        raise ValueError(f"the prompt is not valid UTF-8 text (character {exc.start}); pass UTF-8 text (check the "
                         "terminal's or the calling script's encoding)") from None
    found = [tok for tok in SPECIAL_TOKENS if tok in prompt]
    if found:
        raise ValueError(f"the prompt must not contain the special tokens {found}")
    return prompt


def patchify(pixels: np.ndarray, patch: int) -> np.ndarray:
    """(3, H, W) -> (H/P * W/P, 3*P*P), patches in row-major order, each flattened as (channel, row, column)."""
    c, h, w = pixels.shape
    grid = pixels.reshape(c, h // patch, patch, w // patch, patch)
    return grid.transpose(1, 3, 0, 2, 4).reshape((h // patch) * (w // patch), c * patch * patch)


class AnandaSkyProcessor:
    """Images + prompts -> model inputs (see the module docstring), and generated ids -> text."""

    def __init__(self, tokenizer, patch_size: int = DEFAULTS["patch_size"], min_pixels: int = DEFAULTS["min_pixels"],
                 max_pixels: int = DEFAULTS["max_pixels"], image_mean=DEFAULTS["image_mean"],
                 image_std=DEFAULTS["image_std"]):
        if not 0 < patch_size * patch_size <= min_pixels <= max_pixels:
            raise ValueError(f"need patch_size^2 <= min_pixels <= max_pixels, got {patch_size}, {min_pixels}, "
                             f"{max_pixels}")
        self.tokenizer = tokenizer
        self.patch_size, self.min_pixels, self.max_pixels = int(patch_size), int(min_pixels), int(max_pixels)
        self.mean_std = ([float(x) for x in image_mean], [float(x) for x in image_std])  # as saved, unrounded
        self.image_mean = np.asarray(image_mean, dtype=np.float32).reshape(3, 1, 1)
        self.image_std = np.asarray(image_std, dtype=np.float32).reshape(3, 1, 1)
        ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
        missing = [tok for tok, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ValueError(f"the tokenizer lacks the special tokens {missing}")
        self.token_ids = ids
        self.image_token_id, self.pad_token_id, self.eos_token_id = ids[IMAGE_PAD], ids[ENDOFTEXT], ids[IM_END]
        # tokens the decoder attends over, and where that number comes from; set by from_pretrained from the config
        self.context_length, self.context_source = None, None

    @classmethod
    def from_pretrained(cls, folder) -> "AnandaSkyProcessor":
        """Read preprocessor_config.json (missing keys take DEFAULTS) and the tokenizer from a weights folder."""
        folder = Path(folder)
        config_file = folder / PREPROCESSOR_FILE
        settings = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        known = {k: settings[k] for k in DEFAULTS if k in settings}
        # the model config, passed in: left to itself AutoTokenizer would read config.json's auto_map and ask
        # whether to trust the remote code (a prompt on stdin), only to learn the model type
        config = AnandaSkyConfig.from_pretrained(str(folder))
        processor = cls(AutoTokenizer.from_pretrained(str(folder), config=config, trust_remote_code=False), **known)
        processor.context_length, processor.context_source = context_length(config, processor.tokenizer)
        return processor

    def to_dict(self) -> dict:
        return {"processor_class": type(self).__name__, "patch_size": self.patch_size, "min_pixels": self.min_pixels,
                "max_pixels": self.max_pixels, "image_mean": self.mean_std[0], "image_std": self.mean_std[1]}

    def save_pretrained(self, folder) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PREPROCESSOR_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        self.tokenizer.save_pretrained(str(folder))

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        return target_size(height, width, self.patch_size, self.min_pixels, self.max_pixels)

    def image_tokens(self, height: int, width: int) -> int:
        """<|image_pad|> tokens of an image of this size, without reading it: one per patch once resized."""
        h, w = self.target_size(height, width)
        return (h // self.patch_size) * (w // self.patch_size)

    def text_tokens(self, prompt: str) -> int:
        """Tokens of the prompt and the chat format around it: the model input's length less the image tokens."""
        text = self.build_prompt(0, check_prompt(prompt))
        # verbose=False: the tokenizer would warn about a too-long input; check_length says it in one line instead
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def check_length(self, image_tokens: int, prompt_tokens: int, max_new_tokens: int, what: str = "the input") -> None:
        """ValueError when a prompt plus the tokens to generate does not fit the context length (no check when
        the processor was built without a config, context_length None)."""
        limit = self.context_length
        if limit is None:
            return
        if prompt_tokens > limit:
            raise ValueError(f"{what} is {prompt_tokens:,} tokens ({image_tokens:,} image + "
                             f"{prompt_tokens - image_tokens:,} prompt and chat-format tokens), past the model's "
                             f"context length of {limit:,} tokens ({self.context_source}); shorten the prompt")
        if prompt_tokens + max_new_tokens > limit:
            raise ValueError(f"max_new_tokens {max_new_tokens:,} plus {what} ({prompt_tokens:,} tokens) is past the "
                             f"model's context length of {limit:,} tokens ({self.context_source}); use at most "
                             f"{limit - prompt_tokens:,} new tokens")

    def image_patches(self, image) -> tuple[torch.Tensor, tuple[int, int]]:
        """One image -> its normalised patches (n, 3*P*P) float32 and its grid (rows, columns) of patches."""
        img = load_image(image)
        h, w = self.target_size(img.height, img.width)
        if (h, w) != (img.height, img.width):
            img = img.resize((w, h), RESAMPLE)
        pixels = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        pixels = (pixels - self.image_mean) / self.image_std
        patches = patchify(pixels, self.patch_size)
        return torch.from_numpy(np.ascontiguousarray(patches)), (h // self.patch_size, w // self.patch_size)

    def build_prompt(self, num_patches: int, prompt: str) -> str:
        """Qwen chat format with one <|image_pad|> per patch, the image before the instruction."""
        return (f"{IM_START}user\n{VISION_START}{IMAGE_PAD * num_patches}{VISION_END}{prompt}{IM_END}\n"
                f"{IM_START}assistant\n")

    def __call__(self, images: list, prompts: str | list[str]) -> dict:
        """One prompt per image (a single string is used for all). Returns input_ids, attention_mask (left-padded),
        pixel_values (all images' patches packed, float32) and image_grid_hw (n_images, 2)."""
        images = list(images)
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if not images or len(prompts) != len(images):
            raise ValueError(f"need one prompt per image and at least one image, got {len(images)} images and "
                             f"{len(prompts)} prompts")
        patches, grids, rows = [], [], []
        for image, prompt in zip(images, prompts):
            pixels, grid = self.image_patches(image)
            patches.append(pixels)
            grids.append(grid)
            text = self.build_prompt(pixels.shape[0], check_prompt(prompt))
            rows.append(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])  # see text_tokens
        input_ids, attention_mask = self.left_pad(rows)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": torch.cat(patches),
                "image_grid_hw": torch.tensor(grids, dtype=torch.long)}

    def left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left padding keeps every row's last prompt token in the last column, where generation continues."""
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, length - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, length - len(row):] = 1
        return ids, mask

    def decode(self, token_ids, skip_special_tokens: bool = True) -> list[str]:
        """Generated ids (B, n) -> B stripped strings, stopping tokens and padding removed."""
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        texts = self.tokenizer.batch_decode(token_ids, skip_special_tokens=skip_special_tokens)
        return [t.strip() for t in texts]
