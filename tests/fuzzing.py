"""The fuzzers' shared harness: a time budget per fuzzer and hypothesis runs until it is
spent, counting the inputs tried (printed by each fuzzer)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def fuzz_seconds(default: float) -> float:
    """The time budget of one fuzzer, s: AMULET_FUZZ_SECONDS if set (a longer run), else default."""
    return float(os.environ.get("AMULET_FUZZ_SECONDS", default))


def run_budget(
    seconds: float, batch: int, strategy: st.SearchStrategy[Any], check: Callable[[Any], None]
) -> int:
    """Run `check` on inputs drawn from `strategy` in hypothesis runs of `batch` examples until
    `seconds` have passed (a started run is finished); return the number of inputs tried."""
    count = 0
    stop = time.monotonic() + seconds

    @settings(
        max_examples=batch,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def one(value: Any) -> None:
        nonlocal count
        count += 1
        check(value)

    while time.monotonic() < stop:
        one()
    return count
