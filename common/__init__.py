"""Hardware-neutral plumbing shared by the model folders, one room per role.

Core modules here (what every script imports): device, cli, parity, compare, results, timing, bench, sampling,
pooling, stsb, textio, model_path, strict_load, report, console. Subpackages: `common.serving` (the
OpenAI-compatible server and its load test), `common.diagnostics` (the porting lint, op trace and module locator),
`common.porting` (new_port, tiny checkpoints, the flash_attn stand-in, model-folder discovery).

Nothing in here knows about a particular model: a folder passes its own defaults (its DEFAULT_MODEL, its
thresholds' dtype, its family) and keeps everything model-specific to itself.
"""
