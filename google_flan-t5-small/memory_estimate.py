"""How much memory each Flan-T5 size needs for its weights: parameter counts x bytes per dtype, no measurement.

    python memory_estimate.py            # prints the table and writes results/memory_estimate.json

Parameter counts come from each size's published config (d_model, d_ff, heads x d_kv, layers, vocabulary), with
T5 v1.1's layout: a shared embedding, an untied lm_head, gated-GELU feed-forward (wi_0, wi_1, wo), RMS norms
without bias, relative attention buckets in the first block of each stack. The tests check the formula against
the parameters of a real model object. Weights are only part of the footprint: add the KV cache (estimated here
for one sequence of 512 input + 64 new tokens), activations and the framework itself (several hundred MiB).
In fp16, transformers keeps the `wo` projections in fp32 (T5's `_keep_in_fp32_modules`), which the fp16 column
counts; bf16 stores everything in 2 bytes.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common.errors import ArgumentParser, run_main  # noqa: E402
from common.results import run_metadata, write_json  # noqa: E402

VOCAB = 32128  # every Flan-T5 size: 32,100 SentencePiece tokens, embedding padded to 32,128 rows
SIZES = {  # hub id -> (d_model, d_ff, num_heads, d_kv, encoder layers, decoder layers), from each config.json
    "google/flan-t5-small": (512, 1024, 6, 64, 8, 8),
    "google/flan-t5-base": (768, 2048, 12, 64, 12, 12),
    "google/flan-t5-large": (1024, 2816, 16, 64, 24, 24),
    "google/flan-t5-xl": (2048, 5120, 32, 64, 24, 24),
    "google/flan-t5-xxl": (4096, 10240, 64, 64, 24, 24),
}
BUCKETS = 32  # relative_attention_num_buckets
KV_INPUT_TOKENS, KV_NEW_TOKENS = 512, 64  # the sequence the KV-cache column is computed for
GIB = 2 ** 30


def t5_parameters(d_model: int, d_ff: int, heads: int, d_kv: int, enc_layers: int, dec_layers: int,
                  vocab: int = VOCAB, buckets: int = BUCKETS, gated: bool = True) -> dict:
    """Parameter count of a T5 v1.1 encoder-decoder with an untied lm_head, split into the parts that matter."""
    inner = heads * d_kv
    attention = 4 * d_model * inner  # q, k, v, o
    ff = (3 if gated else 2) * d_model * d_ff
    encoder = enc_layers * (attention + ff + 2 * d_model) + d_model + buckets * heads
    decoder = dec_layers * (2 * attention + ff + 3 * d_model) + d_model + buckets * heads
    embeddings = 2 * vocab * d_model  # shared input embedding + untied lm_head
    wo = (enc_layers + dec_layers) * d_ff * d_model
    return {"total": embeddings + encoder + decoder, "embeddings": embeddings, "encoder": encoder,
            "decoder": decoder, "wo": wo}


def kv_cache_bytes(heads: int, d_kv: int, dec_layers: int, bytes_per: int) -> int:
    """Decoder K,V cache of one sequence: cross-attention over the input tokens, self-attention over the new ones."""
    return 2 * dec_layers * heads * d_kv * (KV_INPUT_TOKENS + KV_NEW_TOKENS) * bytes_per


def rows() -> list[dict]:
    out = []
    for name, (d_model, d_ff, heads, d_kv, enc, dec) in SIZES.items():
        params = t5_parameters(d_model, d_ff, heads, d_kv, enc, dec)
        out.append({"model": name, "parameters": params["total"], "parameters_m": params["total"] / 1e6,
                    "fp32_gib": params["total"] * 4 / GIB, "bf16_gib": params["total"] * 2 / GIB,
                    "fp16_gib": (params["total"] * 2 + params["wo"] * 2) / GIB,
                    "kv_cache_bf16_mib": kv_cache_bytes(heads, d_kv, dec, 2) / 2 ** 20})
    return out


def main(args) -> int:
    table = rows()
    print(f"{'model':<22} {'params':>14} {'fp32 GiB':>9} {'bf16 GiB':>9} {'fp16 GiB':>9} {'KV MiB':>7}")
    for r in table:
        print(f"{r['model']:<22} {r['parameters']:>14,} {r['fp32_gib']:>9.2f} {r['bf16_gib']:>9.2f} "
              f"{r['fp16_gib']:>9.2f} {r['kv_cache_bf16_mib']:>7.1f}")
    output = Path(args.output or HERE / "results" / "memory_estimate.json")
    write_json(output, {"meta": run_metadata(None, None), "kv_tokens": [KV_INPUT_TOKENS, KV_NEW_TOKENS],
                        "rows": table})
    print(f"wrote {output}")
    return 0


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Weight memory of each Flan-T5 size from its parameter count.")
    p.add_argument("--output", help="result JSON (default results/memory_estimate.json)")
    return p


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
