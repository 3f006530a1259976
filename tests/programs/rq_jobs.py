"""Jobs for the RQ worker tests, imported by RQ's work-horse from this directory."""

from __future__ import annotations

import os
import time

from rq import get_current_job


def started_then_sleep(seconds: float) -> float:
    """Count this start in the job's own key `starts:ID`, then sleep."""
    job = get_current_job()
    job.connection.incr(f"starts:{job.id}")
    time.sleep(seconds)
    return seconds


def fails_until(attempt: int) -> int:
    """Raise until this job has been tried `attempt` times, then return that count."""
    job = get_current_job()
    tries = job.connection.incr(f"tries:{job.id}")
    if tries < attempt:
        raise RuntimeError(f"try {tries} of {attempt}")
    return tries


def add(a: int, b: int) -> int:
    return a + b


def timed(seconds: float) -> float:
    """Sleep, and record in the list `timed` which worker ran it (the horse's parent) and when."""
    job = get_current_job()
    started = time.time()
    time.sleep(seconds)
    job.connection.rpush("timed", f"{job.id} {os.getppid()} {started} {time.time()}")
    return seconds
