"""Wait until every enqueued job has finished, then check each ran exactly once.

    python -m example.check --timeout 120

Reads the ids enqueue.py stored in example:enqueued. Exit status 0 when every job finished
once with the right result; 1 when one failed, ran twice, returned something else, vanished,
or the timeout passed first.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from example import ENQUEUED, QUEUES, RUNS
from example.connection import connect
from example.jobs import expected_result

WAITING = ("queued", "started")


@dataclass
class Tally:
    """Every job id, in exactly one bucket.

    finished   ran to the end once, RQ says finished, the result is right
    queued     still waiting in its queue
    started    being worked on right now (or abandoned by a worker that died)
    failed     in RQ's FailedJobRegistry; the reason is in `reasons`
    duplicated its function ran to the end more than once
    wrong      finished, but the result or the run count disagrees
    stranded   taken off its queue by a worker that stopped before starting it: RQ's
               intermediate queue (RQ fails it there after a minute)
    lost       RQ knows nothing more about it: in no queue, no registry, or gone
    """

    buckets: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    reasons: dict[str, str] = field(default_factory=dict)

    def count(self, bucket: str) -> int:
        return len(self.buckets.get(bucket, ()))

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.buckets.values())

    def summary(self) -> str:
        return ", ".join(f"{name} {len(ids)}" for name, ids in sorted(self.buckets.items()) if ids)


def tally(connection, ids: list[str] | None = None) -> Tally:
    """Where every enqueued job is now."""
    if ids is None:
        ids = sorted(member.decode() for member in connection.smembers(ENQUEUED))
    queued, intermediate, failed = set(), set(), set()
    for name in QUEUES:
        queue = Queue(name, connection=connection)
        queued.update(queue.get_job_ids())
        intermediate.update(queue.intermediate_queue.get_job_ids())
        failed.update(FailedJobRegistry(queue=queue).get_job_ids())
    jobs = Job.fetch_many(ids, connection=connection)
    # Runs are read last: a job counts its run before RQ marks it finished, so every job seen
    # finished above has its run counted here (read first, a job finishing in between looks wrong).
    runs = {key.decode(): int(value) for key, value in connection.hgetall(RUNS).items()}
    result = Tally()
    for job_id, job in zip(ids, jobs, strict=True):
        bucket = _bucket(job, runs.get(job_id, 0), job_id in queued, job_id in intermediate,
                         job_id in failed)
        result.buckets[bucket].append(job_id)
        if bucket in ("failed", "wrong") and job is not None:
            result.reasons[job_id] = _reason(job, runs.get(job_id, 0))
    return result


def _bucket(job: Job | None, runs: int, queued: bool, intermediate: bool, failed: bool) -> str:
    if runs > 1:
        return "duplicated"
    if job is None:
        return "lost"
    status = job.get_status(refresh=False)
    if status == JobStatus.FINISHED:
        if runs == 1 and job.return_value() == expected_result(job.func_name, list(job.args)):
            return "finished"
        return "wrong"
    if failed or status == JobStatus.FAILED:
        return "failed"
    if status == JobStatus.STARTED:
        return "started"
    if queued:
        return "queued"
    if intermediate:
        return "stranded"
    return "lost"


def _reason(job: Job, runs: int) -> str:
    if job.get_status(refresh=False) == JobStatus.FINISHED:
        return f"runs={runs} result={job.return_value()!r}"
    result = job.latest_result()
    text = (result.exc_string if result is not None else None) or "no reason recorded"
    return text.strip().splitlines()[-1]


def wait(connection, timeout: float, interval: float = 0.5) -> Tally:
    """Tally again and again until no job is queued or started, or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        current = tally(connection)
        if not any(current.count(bucket) for bucket in WAITING) or time.monotonic() > deadline:
            return current
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the jobs (default 60)")
    parser.add_argument("--url", help="Redis URL (default $REDIS_URL)")
    args = parser.parse_args(argv)
    connection = connect(args.url)
    result = wait(connection, args.timeout)
    if result.total == 0:
        print("no jobs to check: run python -m example.enqueue first", file=sys.stderr)
        return 1
    print(f"{result.total} jobs: {result.summary()}", flush=True)
    for job_id, reason in sorted(result.reasons.items()):
        print(f"  {job_id}: {reason}", file=sys.stderr)
    if result.count("finished") == result.total:
        print("OK: every job finished exactly once", flush=True)
        return 0
    print("FAILED: not every job finished exactly once", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
