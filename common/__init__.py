"""Hardware-neutral plumbing shared by the model folders.

Nothing in here knows about a particular model: device and dtype selection, pooling, parity metrics, timing,
result files, model-path resolution, input-file reading and readme tables. Model folders import what they need
and keep everything model-specific to themselves.
"""
