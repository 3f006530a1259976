"""Wait until every enqueued job has finished, then check each ran once (plus reruns a stop explains).

    python -m example.check --timeout 120

Reads the ids enqueue.py stored in example:enqueued. Exit status 0 when every job finished
with the right result, having begun once plus once for each time a shutdown interrupted it and
put it back in its queue (recorded in its meta); 1 when one failed, ran again unexplained,
returned something else, vanished, or the timeout passed first.
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

from entrypoint.rq_holding import held_job_ids
from entrypoint.rq_reliable import INTERRUPTED
from example import ENQUEUED, QUEUES, RUNS, STARTS
from example.connection import connect
from example.jobs import expected_result

# While the workers run, a job is `stranded` (taken, not started) for the moment between a worker's
# take and its work-horse's start: wait for those too; one left there when the wait ends is stranded.
WAITING = ("queued", "started", "stranded")


@dataclass
class Tally:
    """Every job id, in exactly one bucket.

    finished   ran to the end, RQ says finished, the result is right, and it began once more
               than the times a shutdown interrupted it (`interrupted`)
    queued     still waiting in its queue
    started    being worked on right now (or abandoned by a worker that died)
    failed     in RQ's FailedJobRegistry; the reason is in `reasons`
    duplicated its function began more often than the interruptions explain
    wrong      finished, but the result or the run count disagrees
    stranded   taken off its queue by a worker and never started: in RQ's intermediate queue
               (RQ fails it there after a minute) or in one of entrypoint's holding lists
    lost       RQ knows nothing more about it: in no queue, no registry, or gone
    """

    buckets: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    reasons: dict[str, str] = field(default_factory=dict)
    interrupted: dict[str, int] = field(default_factory=dict)  # job id -> shutdown interruptions, when any

    def count(self, bucket: str) -> int:
        return len(self.buckets.get(bucket, ()))

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.buckets.values())

    def summary(self) -> str:
        text = ", ".join(f"{name} {len(ids)}" for name, ids in sorted(self.buckets.items()) if ids)
        if self.interrupted:
            text += f" ({len(self.interrupted)} rerun after a shutdown interrupted them)"
        return text


def tally(connection, ids: list[str] | None = None) -> Tally:
    """Where every enqueued job is now."""
    if ids is None:
        ids = sorted(member.decode() for member in connection.smembers(ENQUEUED))
    queued, taken, failed = set(), held_job_ids(connection), set()
    for name in QUEUES:
        queue = Queue(name, connection=connection)
        queued.update(queue.get_job_ids())
        taken.update(queue.intermediate_queue.get_job_ids())
        failed.update(FailedJobRegistry(queue=queue).get_job_ids())
    jobs = Job.fetch_many(ids, connection=connection)
    # Counts are read last: a job counts its run before RQ marks it finished, so every job seen
    # finished above has its run counted here (read first, a job finishing in between looks wrong).
    starts, runs = (
        {key.decode(): int(value) for key, value in connection.hgetall(counts).items()}
        for counts in (STARTS, RUNS)
    )
    result = Tally()
    for job_id, job in zip(ids, jobs, strict=True):
        interrupted = int(job.meta.get(INTERRUPTED, 0)) if job is not None else 0
        bucket = _bucket(job, starts.get(job_id, 0) - interrupted, runs.get(job_id, 0),
                         job_id in queued, job_id in taken, job_id in failed)
        result.buckets[bucket].append(job_id)
        if interrupted:
            result.interrupted[job_id] = interrupted
        if bucket in ("failed", "wrong") and job is not None:
            result.reasons[job_id] = _reason(job, runs.get(job_id, 0))
    return result


def _bucket(job: Job | None, unexplained_starts: int, runs: int, queued: bool, taken: bool,
            failed: bool) -> str:
    if unexplained_starts > 1:
        return "duplicated"
    if job is None:
        return "lost"
    status = job.get_status(refresh=False)
    if status == JobStatus.FINISHED:
        # A job KILLed by a shutdown after its last step and before RQ recorded it ran to the end twice.
        if unexplained_starts == 1 and runs >= 1 and job.return_value() == expected_result(
                job.func_name, list(job.args)):
            return "finished"
        return "wrong"
    if failed or status == JobStatus.FAILED:
        return "failed"
    if status == JobStatus.STARTED:
        return "started"
    if queued:
        return "queued"
    if taken:
        return "stranded"
    return "lost"


def _reason(job: Job, runs: int) -> str:
    if job.get_status(refresh=False) == JobStatus.FINISHED:
        return f"runs={runs} result={job.return_value()!r}"
    result = job.latest_result()
    text = (result.exc_string if result is not None else None) or "no reason recorded"
    return text.strip().splitlines()[-1]


def wait(connection, timeout: float, interval: float = 0.5) -> Tally:
    """Tally again and again until no job is queued, started or being handed over, or `timeout` seconds pass."""
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
        print("OK: every job finished, and ran again only after a shutdown interrupted it", flush=True)
        return 0
    print("FAILED: not every job finished once (plus its reruns after a shutdown)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
