"""Tools to start a port and make it run without CUDA.

new_port.py          scaffold a folder from the closest one (`accel-ports new-port`)
tiny_checkpoint.py   a tiny random checkpoint of any model's architecture (`accel-ports tiny-checkpoint`)
flash_attn_compat.py the flash_attn 2.x API on torch SDPA, for remote code that imports it
folders.py           which top-level folders are model ports (shared by new_port, report and the tests)
"""
