"""Academic benchmarks as the Gemma paper evaluates them (see docs/evaluation.md)."""

from tasks.benchmarks.files import BenchmarkDataError, read_records
from tasks.benchmarks.registry import BENCHMARKS, Benchmark, register_benchmark_tasks

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkDataError", "read_records", "register_benchmark_tasks"]
