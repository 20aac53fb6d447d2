"""Evaluation: the standard video benchmarks of the original harness and a resumable runner.

from videochat_flash.eval import load_benchmark, run_benchmark
bench = load_benchmark("mvbench", annotations="eval_annotations", videos="MVBench/video")
metrics = run_benchmark(bench, lambda item: my_model(item), "out/mvbench.jsonl")

Needle-in-a-haystack (`run_niah`, `load_needles`, `build_multi_hop`, ... in `eval.niah`) and the FLOPs / memory
estimator (`estimate`, `model_config` in `eval.flops`) are imported on first use (they need torch).
"""

from .bench import BENCHMARKS, Benchmark, BenchmarkError, BenchmarkItem, load_benchmark
from .runner import format_table, run_benchmark

_LAZY = {
    "run_niah": "niah",
    "load_needles": "niah",
    "build_multi_hop": "niah",
    "build_single_hop": "niah",
    "draw_heatmap": "niah",
    "apply_yarn": "niah",
    "estimate": "flops",
    "model_config": "flops",
    "format_estimate": "flops",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkError",
    "BenchmarkItem",
    "apply_yarn",
    "build_multi_hop",
    "build_single_hop",
    "draw_heatmap",
    "estimate",
    "format_estimate",
    "format_table",
    "load_benchmark",
    "load_needles",
    "model_config",
    "run_benchmark",
    "run_niah",
]
