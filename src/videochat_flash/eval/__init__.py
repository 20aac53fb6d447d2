"""Evaluation: the standard video benchmarks of the original harness and a resumable runner.

from videochat_flash.eval import load_benchmark, run_benchmark
bench = load_benchmark("mvbench", annotations="eval_annotations", videos="MVBench/video")
metrics = run_benchmark(bench, lambda item: my_model(item), "out/mvbench.jsonl")
"""

from .bench import BENCHMARKS, Benchmark, BenchmarkError, BenchmarkItem, load_benchmark
from .runner import format_table, run_benchmark

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkError",
    "BenchmarkItem",
    "format_table",
    "load_benchmark",
    "run_benchmark",
]
