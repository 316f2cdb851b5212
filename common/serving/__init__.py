"""The OpenAI-compatible server every folder's serve.py runs on, and its load test.

backend.py   what a folder implements (EmbeddingBackend / GenerationBackend, Prompt, Sampling)
server.py    the shared flags, the bound socket, uvicorn with a clean SIGTERM: `serve(args, make_backend)`
protocol.py  the OpenAI request and response models and the error object
app.py       the FastAPI routes, key check and body limit
batcher.py   one model thread: batches from one queue, admission (503 + Retry-After), shutdown
generation.py  per-row streaming and stopping inside transformers' generate
streaming.py   JSON answers and server-sent events
load_test.py   N concurrent clients against a running server (`accel-ports bench-serve`)
"""
