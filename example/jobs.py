"""The jobs: fast, deterministic, and each run leaves a mark so a job run twice shows.

A job counts its run in the hash example:runs (job id -> runs) as its last step, after its
work: a job that ran to the end once has 1 there, a job run twice has 2, a job cut short by
a KILL has nothing (and RQ puts it in its FailedJobRegistry when it notices).
"""

from __future__ import annotations

import time

from rq import get_current_job

from example import RUNS


def _count_run() -> None:
    job = get_current_job()
    if job is not None:  # None when called directly, outside a worker
        job.connection.hincrby(RUNS, job.id, 1)


def send_welcome_email(user_id: int) -> str:
    """Pretend to send the welcome e-mail: instant, like a call to a mail API."""
    message = f"Welcome aboard, user {user_id}!"
    _count_run()
    return message


def crunch_data(n: int, seconds: float = 0.0) -> int:
    """Sum of the squares below n, after `seconds` of pretend work (a slow job mid-flight)."""
    if seconds:
        time.sleep(seconds)
    total = sum(i * i for i in range(n))
    _count_run()
    return total


def expected_result(function: str, args: list) -> object:
    """What a job must return, so check.py verifies results and not only that something ran."""
    if function.endswith("send_welcome_email"):
        return f"Welcome aboard, user {args[0]}!"
    return sum(i * i for i in range(args[0]))
