"""What breaks off CUDA, and where a port diverges.

lint.py + lint_rules.py  an AST scan for CUDA-only code (`accel-ports lint`)
trace_ops.py  every aten op of one forward: CPU fallbacks, stray CPU tensors, fp32 ops, host syncs
locate.py     the first module whose output diverges from the CPU fp32 reference
eval_hooks.py the --trace_ops / --locate flags every eval_accuracy.py shares
"""
