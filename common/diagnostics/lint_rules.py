"""The rules of `accel-ports lint`: what each finds, what breaks where, and the replacement this repository
offers. Data only; the scanner is common/diagnostics/lint.py. A rule added here needs a check there and a planted case in
tests/diagnostics/test_lint.py.
"""
from __future__ import annotations

ELSEWHERE = "on Ascend NPU, MPS and CPU"  # where CUDA-only code breaks, in every message
CUDA_ENV = "CUDA_VISIBLE_DEVICES"  # lint-port: allow cuda-env -- the name the rule looks for, not a use

RULES = {
    "flash-attn": "import of flash_attn (NVIDIA-only attention kernels)",
    "xformers": "import of xformers (CUDA attention kernels)",
    "apex": "import of NVIDIA apex (fused CUDA kernels, apex.amp)",
    "triton": "import of triton (GPU kernel compiler, not on Ascend/MPS/CPU)",
    "bitsandbytes": "import of bitsandbytes (CUDA 8-bit/4-bit kernels)",
    "torch-cuda-api": "use of torch.cuda.* (talks to NVIDIA GPUs only)",
    "cuda-call": "a .cuda() call (moves to an NVIDIA GPU only)",
    "cuda-autocast": "torch.autocast / torch.amp.autocast with device_type 'cuda'",
    "cuda-device-string": "the string 'cuda' / 'cuda:N' used as a device",
    "cudnn": "torch.backends.cudnn.* / torch.backends.cuda.* settings",
    "nccl": "'nccl' as the torch.distributed backend",
    "cuda-env": "the CUDA_VISIBLE_DEVICES environment variable",
    "host-sync-in-forward": ".item() / .tolist() / .cpu() / .numpy() inside a module's forward",
    "cpu-tensor-in-forward": "a tensor factory without device= inside a module's forward",
    "bad-suppression": "a '# lint-port: allow' comment without a reason, or naming an unknown rule",
}

FIXES = {
    "flash-attn": "call common.porting.flash_attn_compat.install() before the model code is imported (SDPA stand-in with "
                  "flash-attn 2.x signatures), or use attn_implementation='sdpa'",
    "xformers": "torch.nn.functional.scaled_dot_product_attention",
    "apex": "torch.nn.LayerNorm / torch.nn.RMSNorm for apex.normalization, torch.amp for apex.amp",
    "triton": "no replacement for custom triton kernels: use the model's pure-torch path "
              "(attn_implementation='sdpa' or 'eager')",
    "bitsandbytes": "no 8-bit/4-bit quantisation off CUDA: load in bf16 or fp16 (--dtype bf16)",
    "torch-cuda-api": "getattr(torch, device.type).{name}",
    "cuda-call": ".to(device), device = common.device.resolve_device(args.device)",
    "cuda-autocast": "torch.autocast(device_type=x.device.type)",
    "cuda-device-string": "common.device.resolve_device(args.device)",
    "cudnn": "guard with `if device.type == \"cuda\"` (no effect elsewhere), or the torch.backends.<type> equivalent",
    "nccl": "\"hccl\" on Ascend NPU, \"gloo\" on CPU: pick the backend from device.type",
    "cuda-env": "ASCEND_RT_VISIBLE_DEVICES on Ascend (or the device index in --device npu:N)",
    "host-sync-in-forward": "keep tensors on the device (tensor ops, not Python numbers); if one sync is needed, "
                            "allow it with a reason",
    "cpu-tensor-in-forward": "pass device=x.device (the device of an input tensor)",
    "bad-suppression": "write '# lint-port: allow RULE -- reason'",
}
CUDA_API_FIXES = {  # torch.cuda.<name> -> the repository's device-neutral call (longest matching name wins)
    "synchronize": "common.device.synchronize(device)",
    **dict.fromkeys(("is_available", "device_count", "current_device"),
                    "common.device.resolve_device(spec) / common.device.is_available(kind)"),
    "empty_cache": "common.device.empty_cache(device)",
    "max_memory_allocated": "common.device.peak_memory(device)",
    "reset_peak_memory_stats": "common.device.reset_peak_memory(device)",
    "amp.autocast": "torch.autocast(device_type=x.device.type)",
    "amp.GradScaler": "torch.amp.GradScaler(device.type)",
    "amp": "torch.amp with device_type=x.device.type",
    "Event": "getattr(torch, device.type).Event", "Stream": "getattr(torch, device.type).Stream",
    "manual_seed": "torch.manual_seed", "manual_seed_all": "torch.manual_seed",
}
BACKEND_FIXES = {  # torch.backends.* prefixes -> replacement (longest prefix wins)
    "torch.backends.cuda.sdp_kernel": "torch.nn.attention.sdpa_kernel(backends) (every device)",
    "torch.backends.cuda.matmul.allow_tf32": "torch.set_float32_matmul_precision('high') (every device), or guard "
                                             "with `if device.type == \"cuda\"`",
}
IMPORTS = {  # top-level package -> (rule, what breaks)
    "flash_attn": ("flash-attn", f"flash_attn is NVIDIA-only: the import fails {ELSEWHERE}"),
    "xformers": ("xformers", f"xformers ships CUDA kernels: the import or its ops fail {ELSEWHERE}"),
    "apex": ("apex", f"apex is NVIDIA's CUDA extension: the import fails {ELSEWHERE}"),
    "triton": ("triton", f"triton compiles kernels for NVIDIA/AMD GPUs: they do not run {ELSEWHERE}"),
    "bitsandbytes": ("bitsandbytes", f"bitsandbytes kernels are CUDA-only: quantised layers fail {ELSEWHERE}"),
}
HOST_SYNCS = {"item", "tolist", "cpu", "numpy"}
FACTORIES = {"tensor", "arange", "zeros", "ones", "full", "empty", "rand", "randn", "randint", "randperm",
             "linspace", "eye"}
AUTOCASTS = {"torch.autocast", "torch.amp.autocast", "torch.amp.autocast_mode.autocast"}
DIST_BACKEND_POSITION = {"torch.distributed.init_process_group": 0, "torch.distributed.new_group": 2}
IMPORT_CALLS = {"importlib.import_module", "__import__"}
CUDA_GUARDED = {"torch-cuda-api", "cudnn", "cuda-call", "cuda-autocast", "cuda-device-string", "nccl"}
