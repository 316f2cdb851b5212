"""How much memory a T5-family model needs for its weights: parameter counts x bytes per dtype, no measurement.

    python memory_estimate.py                                   # every Flan-T5 size -> results/memory_estimate.json
    python memory_estimate.py --model_path models/mt5-small     # any T5 / Flan-T5 / mT5 / ByT5 folder or hub id

Parameter counts come from the config (d_model, d_ff, heads x d_kv, encoder and decoder layers, vocabulary, relative
attention buckets) and the two choices that split the family:
  * feed-forward: gated (T5 v1.1, Flan-T5, mT5: wi_0, wi_1, wo) or not (T5 v1.0: wi, wo);
  * lm_head: untied, its own vocab x d_model matrix (v1.1, Flan-T5, mT5), or tied to the input embedding (v1.0).
Whether the lm_head is tied is read from the weights when the folder has them (an `lm_head.weight` tensor or not),
else from the config: transformers writes `scale_decoder_outputs: false` (older files `tie_word_embeddings: false`)
for an untied T5, and every published mT5 is untied. The tests check the formula against real model objects.
Weights are only part of the footprint: add the KV cache (estimated here for one sequence of 512 input + 64 new
tokens), activations and the framework itself (several hundred MiB). In fp16, transformers keeps the `wo`
projections in fp32 (T5's `_keep_in_fp32_modules`), which the fp16 column counts; bf16 stores everything in 2 bytes.
The JSON is an estimate, not a measurement: its top-level "kind" is "estimate", not one of the result kinds.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from huggingface_hub import hf_hub_download
from safetensors import safe_open

from common.cli import ArgumentParser, UserError, first_line, run_main
from common.model_path import download_command, hub_reachable
from common.results import check_writable, model_tag, run_metadata, write_json

HERE = Path(__file__).resolve().parent

FLAN_T5 = dict(model_type="t5", vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
               relative_attention_num_buckets=32)  # what every Flan-T5 size shares (32,100 tokens padded to 32,128)
KNOWN_SIZES = {  # hub id -> the sizing fields of its config.json
    "google/flan-t5-small": dict(d_model=512, d_ff=1024, num_heads=6, d_kv=64, num_layers=8, num_decoder_layers=8),
    "google/flan-t5-base": dict(d_model=768, d_ff=2048, num_heads=12, d_kv=64, num_layers=12, num_decoder_layers=12),
    "google/flan-t5-large": dict(d_model=1024, d_ff=2816, num_heads=16, d_kv=64, num_layers=24,
                                 num_decoder_layers=24),
    "google/flan-t5-xl": dict(d_model=2048, d_ff=5120, num_heads=32, d_kv=64, num_layers=24, num_decoder_layers=24),
    "google/flan-t5-xxl": dict(d_model=4096, d_ff=10240, num_heads=64, d_kv=64, num_layers=24,
                               num_decoder_layers=24),
}
T5_FAMILY = ("t5", "mt5")  # model_type values this folder runs (ByT5 and T5 v1.0/v1.1 are all "t5")
KV_INPUT_TOKENS, KV_NEW_TOKENS = 512, 64  # the sequence the KV-cache column is computed for
GIB = 2 ** 30


def t5_parameters(d_model: int, d_ff: int, heads: int, d_kv: int, enc_layers: int, dec_layers: int, vocab: int,
                  buckets: int = 32, gated: bool = True, tied: bool = False) -> dict:
    """Parameter count of a T5 encoder-decoder, split into the parts that matter."""
    inner = heads * d_kv
    attention = 4 * d_model * inner  # q, k, v, o
    ff = (3 if gated else 2) * d_model * d_ff  # gated: wi_0, wi_1, wo; otherwise wi, wo
    encoder = enc_layers * (attention + ff + 2 * d_model) + d_model + buckets * heads
    decoder = dec_layers * (2 * attention + ff + 3 * d_model) + d_model + buckets * heads
    embeddings = (1 if tied else 2) * vocab * d_model  # the shared input embedding (+ an untied lm_head)
    wo = (enc_layers + dec_layers) * d_ff * d_model
    return {"total": embeddings + encoder + decoder, "embeddings": embeddings, "encoder": encoder,
            "decoder": decoder, "wo": wo}


def weight_names(folder: Path) -> set[str] | None:
    """Tensor names of the checkpoint in `folder`, read from file headers or index files (no weights are loaded);
    None when the folder holds no weights."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            return set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"])
    if (folder / "model.safetensors").is_file():
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            return set(f.keys())
    if (folder / "pytorch_model.bin").is_file():
        import torch  # lazy: only an old .bin checkpoint needs it; this arithmetic otherwise runs without torch

        return set(torch.load(folder / "pytorch_model.bin", map_location="meta", mmap=True, weights_only=True))
    return None


def untied_lm_head(config, names: set[str] | None) -> bool:
    if names is not None:
        return "lm_head.weight" in names
    return config.model_type == "mt5" or getattr(config, "scale_decoder_outputs", True) is False


def estimate(name: str, config, names: set[str] | None = None) -> dict:
    """One row of the table: the architecture's deciding fields, parameters and weight memory per dtype."""
    tied = not untied_lm_head(config, names)
    gated = config.feed_forward_proj.startswith("gated-")
    params = t5_parameters(config.d_model, config.d_ff, config.num_heads, config.d_kv, config.num_layers,
                           config.num_decoder_layers, config.vocab_size, config.relative_attention_num_buckets,
                           gated=gated, tied=tied)
    kv_bytes = 2 * config.num_decoder_layers * config.num_heads * config.d_kv * (KV_INPUT_TOKENS + KV_NEW_TOKENS) * 2
    return {"model": name, "model_type": config.model_type, "feed_forward": config.feed_forward_proj,
            "lm_head": "tied" if tied else "untied", "vocab_size": config.vocab_size,
            "parameters": params["total"], "parameters_m": params["total"] / 1e6,
            "fp32_gib": params["total"] * 4 / GIB, "bf16_gib": params["total"] * 2 / GIB,
            "fp16_gib": (params["total"] * 2 + params["wo"] * 2) / GIB, "kv_cache_bf16_mib": kv_bytes / 2 ** 20}


def known_rows() -> list[dict]:
    from transformers import T5Config  # lazy: pulls in torch (seconds); --help and the --output check stay instant

    return [estimate(name, T5Config(**FLAN_T5, **dims)) for name, dims in KNOWN_SIZES.items()]


def config_folder(spec: str) -> Path:
    """A local model folder, or the config.json of a hub id (the cache first, then a download; never the weights)."""
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"--model_path {spec!r} has no config.json; pass a T5-family model folder")
        return local
    if local.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise UserError(f"--model_path {spec!r} is not a model folder; pass a folder with config.json or a hub id")
    try:
        try:
            return Path(hf_hub_download(spec, "config.json", local_files_only=True)).parent
        except Exception:
            if not hub_reachable():
                raise ConnectionError("offline") from None
            return Path(hf_hub_download(spec, "config.json")).parent
    except Exception as exc:  # offline, unknown repo, gated: all end the same way
        raise UserError(f"cannot read the config of {spec!r} ({type(exc).__name__}: {first_line(exc)}); download "
                        f"it with {download_command(spec)}") from None


def model_rows(spec: str) -> list[dict]:
    from transformers import AutoConfig  # lazy, as in known_rows

    folder = config_folder(spec)
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read the config in {str(folder)!r}: {first_line(exc)}") from None
    if config.model_type not in T5_FAMILY:
        raise UserError(f"{spec!r} is a {config.model_type!r} model; this estimate covers {', '.join(T5_FAMILY)}")
    return [estimate(spec, config, weight_names(folder))]


def main(args) -> int:
    default = "memory_estimate.json" if not args.model_path else f"memory_estimate_{model_tag(args.model_path)}.json"
    output = Path(args.output or HERE / "results" / default)
    check_writable(output, "--output")  # before any config is read or downloaded
    table = model_rows(args.model_path) if args.model_path else known_rows()
    print(f"{'model':<28} {'params':>14} {'fp32 GiB':>9} {'bf16 GiB':>9} {'fp16 GiB':>9} {'KV MiB':>7}  layout")
    for r in table:
        print(f"{r['model']:<28} {r['parameters']:>14,} {r['fp32_gib']:>9.2f} {r['bf16_gib']:>9.2f} "
              f"{r['fp16_gib']:>9.2f} {r['kv_cache_bf16_mib']:>7.1f}  {r['model_type']}, {r['feed_forward']}, "
              f"{r['lm_head']} lm_head")
    write_json(output, {"kind": "estimate", "meta": run_metadata(None, None),
                        "kv_tokens": [KV_INPUT_TOKENS, KV_NEW_TOKENS], "rows": table})
    print(f"wrote {output}")
    return 0


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Weight memory of a T5-family model (default: every Flan-T5 size) from its "
                                   "parameter count.")
    p.add_argument("--model_path", help="a T5 / Flan-T5 / mT5 / ByT5 folder or hub id (only its config is read)")
    p.add_argument("--output", help="result JSON (default results/memory_estimate.json, or "
                                    "results/memory_estimate_<model>.json with --model_path)")
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
