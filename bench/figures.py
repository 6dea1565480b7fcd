"""A measured figure and how the benchmarks print them."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    target: str  # e.g. "<= 1.20"; empty when the figure is informative only
    description: str

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        op, bound = self.target.split()
        return self.value <= float(bound) if op == "<=" else self.value >= float(bound)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def format_value(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3f}"


def print_figures(figures: list[Figure]) -> None:
    width = max(len(f.name) for f in figures)
    print(f"{'figure':<{width}}  {'value':>10}  {'target':>9}  status  what")
    for f in figures:
        status = {True: "ok", False: "MISSED", None: ""}[f.met]
        print(f"{f.name:<{width}}  {format_value(f.value):>10}  {f.target:>9}  {status:<6}  {f.description}")
    print()
    for f in figures:
        print(f"{f.name}={format_value(f.value)}")
