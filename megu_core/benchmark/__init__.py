"""The unlearning benchmark: scenarios as data, the grid plan, published figures and the report."""

from megu_core.benchmark.plan import BenchmarkCell, expand_methods, plan_benchmark
from megu_core.benchmark.scenarios import SCENARIOS, Scenario, resolve_scenarios

__all__ = [
    "SCENARIOS",
    "BenchmarkCell",
    "Scenario",
    "expand_methods",
    "plan_benchmark",
    "resolve_scenarios",
]
