"""The jobs: fast, deterministic, and each run leaves marks so a job run twice shows.

A job counts its start in the hash example:starts as its first step and its run in
example:runs (job id -> runs) as its last, after its work: a job that ran to the end once has
1 in both, a job a shutdown interrupted and requeued has one more start (and its meta says so,
see entrypoint's README), a job cut short by a KILL has a start and no run (RQ puts it in its
FailedJobRegistry when it notices).
"""

from __future__ import annotations

import os
import time

from rq import get_current_job

from example import GROUPS, RUNS, STARTS


def _count(key: str) -> None:
    job = get_current_job()
    if job is None:  # called directly, outside a worker
        return
    with job.connection.pipeline() as pipe:
        pipe.hincrby(key, job.id, 1)
        if key == RUNS:
            pipe.hincrby(GROUPS, os.environ.get("POOL_GROUP", "-"), 1)
        pipe.execute()


def send_welcome_email(user_id: int) -> str:
    """Pretend to send the welcome e-mail: instant, like a call to a mail API."""
    _count(STARTS)
    message = f"Welcome aboard, user {user_id}!"
    _count(RUNS)
    return message


def crunch_data(n: int, seconds: float = 0.0) -> int:
    """Sum of the squares below n, after `seconds` of pretend work (a slow job mid-flight)."""
    _count(STARTS)
    if seconds:
        time.sleep(seconds)
    total = sum(i * i for i in range(n))
    _count(RUNS)
    return total


def expected_result(function: str, args: list) -> object:
    """What a job must return, so check.py verifies results and not only that something ran."""
    if function.endswith("send_welcome_email"):
        return f"Welcome aboard, user {args[0]}!"
    return sum(i * i for i in range(args[0]))
