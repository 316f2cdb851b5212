"""Serve all-MiniLM-L6-v2 (or any sentence-transformers checkpoint) as an OpenAI/vLLM-compatible /v1/embeddings.

    python serve.py --port 8000                                  # the embedded all-MiniLM-L6-v2 weights
    python serve.py --model_path path/to/st-model --device npu --dtype bf16 --api_key KEY

    curl localhost:8000/v1/embeddings -H 'Content-Type: application/json' \\
         -d '{"model": "all-MiniLM-L6-v2", "input": ["A man is eating food.", "A man eats something."]}'

The vectors are those of `MiniLMEncoder.encode(texts)` (inference.py: the checkpoint's prompt, pooling, Dense and
Normalize modules), within float rounding. One difference: encode() cuts a text longer than the model's
max_seq_length silently (as sentence-transformers does), while this server REFUSES such an input with 400 naming
the limit, as OpenAI and vLLM do: an embedding of a text's first part only is a wrong answer a client cannot see.
An input may also be token ids (OpenAI allows it); they are used as given (no prompt, no special tokens added).
Shared flags (--host, --port, --api_key, --max_batch_size, --max_queue, ...): common/serving/server.py.
"""
from __future__ import annotations

import sys

from common.device import resolve_device, resolve_dtype
from common.cli import UserError, positive_int, run_main
from common.serving.backend import EmbeddingBackend, Prompt
from common.serving.server import build_parser as serve_parser
from common.serving.server import serve
from inference import MODEL_NAME, MiniLMEncoder, add_model_args


class MiniLMBackend(EmbeddingBackend):
    """MiniLMEncoder behind the server; every method runs in the server's one model thread."""

    def __init__(self, args):
        self.encoder = MiniLMEncoder(args.model_path, args.device, args.dtype, args.max_seq_length,
                                     compile=args.compile)
        self.max_model_len = self.encoder.max_seq_length
        # ids at or past the embedding table's rows would fail the whole batch inside the model: refuse them first
        self.vocab_size = self.encoder.model.get_input_embeddings().num_embeddings

    def describe(self) -> dict:
        encoder = self.encoder
        return {"source": str(encoder.model_dir), "device": str(encoder.device), "dtype": encoder.dtype_name,
                "embedding_dim": encoder.embedding_dim, "max_seq_length": encoder.max_seq_length,
                "pipeline": encoder.describe()}

    def embedding_input(self, item: str | list[int]) -> Prompt:
        if isinstance(item, str):
            # encode()'s own tokenization: the checkpoint's prompt prepended, special tokens added
            (ids,), truncated = self.encoder.tokenize([item])
            if truncated:  # encode() would embed the cut text; measure the whole one for the refusal
                self._check_length(len(self.encoder.tokenizer(self.encoder.prompt + item, truncation=False,
                                                              verbose=False)["input_ids"]), "text")
        else:
            ids = list(item)
            bad = [i for i in ids if not 0 <= i < self.vocab_size]
            if bad:
                raise UserError(f"token id {bad[0]} is outside the model's vocabulary (0-{self.vocab_size - 1}); "
                                "send ids from this model's tokenizer")
            self._check_length(len(ids), "token list")
        return Prompt(token_count=len(ids), payload=ids)

    def _check_length(self, tokens: int, what: str) -> None:
        limit = self.encoder.max_seq_length
        if tokens > limit:
            raise UserError(f"this {what} is {tokens} tokens, over the model's limit of {limit} tokens "
                            f"({self.encoder.max_seq_length_source}); shorten it or split it into several inputs")

    def embed(self, inputs: list[Prompt]):
        # One padded forward pass: padding is masked out by the pooling, so a row's vector does not depend on
        # the other rows (tests/all_minilm_l6_v2/test_serve.py checks it against encode(), which batches by length)
        return self.encoder.embed_batch([p.payload for p in inputs]).float().cpu().numpy()


def build_parser():
    parser = serve_parser(__doc__.split("\n")[0], default_name=MODEL_NAME)
    add_model_args(parser)
    parser.add_argument("--max_seq_length", type=positive_int, default=None,
                        help="refuse inputs longer than this many tokens (default: the checkpoint's own limit)")
    return parser


def main(args) -> int:
    device = resolve_device(args.device)  # bad --device / --dtype: one line before the port is even bound
    resolve_dtype(args.dtype, device)
    return serve(args, lambda: MiniLMBackend(args))


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
