"""Jobs for the elastic benchmark: each sleeps, so the drain time depends on how many workers serve its queue."""

from __future__ import annotations

import time


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
