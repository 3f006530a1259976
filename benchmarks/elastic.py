"""Elastic slots against a static split of the same workers: a burst on one queue, and a steady load on two.

    .venv/bin/python benchmarks/elastic.py [--runs 3] [--burst 500] [--seconds 0.2] [--rate 25] [--for 30]
        [--only burst|steady] [--logs DIR]

Eight workers, two queues. Static: `a: 4`, `b: 4`. Elastic: `pool.elastic: 8`, both groups
`count: elastic` (min 1, max 8), the defaults grow_after 3 s and shrink_after 30 s. Both run the
default RQ worker, preloaded, against a private redis-server; the two setups run in alternation,
each freshly started and quiet (the elastic one at its minimums, as it is after shrink_after).
- burst: --burst jobs of --seconds each enqueued at once on `a` alone: seconds until every one
  has finished (goal: elastic at least 1.5x sooner);
- steady: jobs of --seconds arriving at --rate per second in all, half on `a`, half on `b`, for
  --for seconds (the default, 25/s, keeps 8 workers about 75% busy): seconds from the first
  arrival until the last job has finished, and each job's wait from its arrival to its start,
  median and 95th percentile (goal: no slower).
Medians of --runs with min-max; JSON in benchmarks/results/elastic.json, a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness import terminate, wait_for  # noqa: E402
from redis import Redis  # noqa: E402
from redis_fixture import start_redis, stop_redis  # noqa: E402
from rq import Queue, Worker  # noqa: E402
from rq.job import Job  # noqa: E402
from rq.registry import FinishedJobRegistry  # noqa: E402

SETUPS = {
    "static": "a: 4\nb: 4\npool:\n  preload: [sleepy]\n",
    "elastic": "a: {count: elastic, min: 1, max: 8}\nb: {count: elastic, min: 1, max: 8}\n"
               "pool:\n  elastic: 8\n  preload: [sleepy]\n",
}


@contextlib.contextmanager
def pool(setup: str, redis_url: str, tmp: Path, log: Path | None) -> Iterator[None]:
    config = tmp / f"{setup}.yml"
    config.write_text(SETUPS[setup])
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": f"{ROOT}:{APPS}"}
    with log.open("w") if log else open(os.devnull, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "entrypoint", "--config", str(config), "--socket",
                                    str(tmp / f"{setup}.sock")], cwd=tmp, env=env, start_new_session=True,
                                   stdout=output, stderr=subprocess.STDOUT)
        try:
            yield
        finally:
            terminate(process, 60)


def enqueue(connection: Redis, queue: str, count: int, seconds: float) -> list[str]:
    jobs = Queue(queue, connection=connection).enqueue_many(
        [Queue.prepare_data("sleepy.nap", args=(seconds,), result_ttl=600) for _ in range(count)])
    return [job.id for job in jobs]


def finished(connection: Redis, ids: list[str]) -> bool:
    return all(job is not None and job.get_status(refresh=False) == "finished"
               for job in Job.fetch_many(ids, connection=connection))


def burst(connection: Redis, args: argparse.Namespace) -> dict[str, float]:
    """Every job at once on `a`: seconds until all have finished."""
    started = time.monotonic()
    ids = enqueue(connection, "a", args.burst, args.seconds)
    wait_for(lambda: FinishedJobRegistry("a", connection=connection).count >= len(ids), 600,
             "the burst to finish", interval=0.05)
    return {"seconds": time.monotonic() - started}


def steady(connection: Redis, args: argparse.Namespace) -> dict[str, float]:
    """Jobs arriving at a steady rate on `a` and `b` in turn: seconds from the first arrival to
    the last finish, and how long jobs waited from their arrival to their start."""
    ids: list[str] = []
    started = time.monotonic()
    total = round(args.rate * args.duration)
    for number in range(total):
        time.sleep(max(0.0, started + number / args.rate - time.monotonic()))
        ids += enqueue(connection, "ab"[number % 2], 1, args.seconds)
    wait_for(lambda: finished(connection, ids), 600, "the steady load to finish", interval=0.1)
    seconds = time.monotonic() - started
    waits = sorted((job.started_at - job.enqueued_at).total_seconds()
                   for job in Job.fetch_many(ids, connection=connection) if job is not None)
    return {"seconds": seconds, "wait_median": statistics.median(waits),
            "wait_p95": waits[int(0.95 * (len(waits) - 1))]}


def one_run(setup: str, load: str, args: argparse.Namespace, redis_url: str, tmp: Path,
            log: Path | None) -> dict[str, float]:
    connection = Redis.from_url(redis_url)
    connection.flushdb()
    with pool(setup, redis_url, tmp, log):
        # ready: at least each group's minimum registered and idle
        wait_for(lambda: len(Worker.all(connection=connection)) >= (8 if setup == "static" else 2), 60,
                 f"the {setup} pool's workers", interval=0.05)
        time.sleep(1)
        return burst(connection, args) if load == "burst" else steady(connection, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=0.2)
    parser.add_argument("--rate", type=float, default=25.0, help="steady jobs per second, both queues")
    parser.add_argument("--for", dest="duration", type=float, default=30.0, help="seconds of steady arrivals")
    parser.add_argument("--logs", type=Path, help="a directory for each pool's output (default: none kept)")
    parser.add_argument("--only", choices=("burst", "steady"), help="one load")
    args = parser.parse_args()
    results: dict[str, dict[str, list[dict[str, float]]]] = {load: {s: [] for s in SETUPS}
                                                             for load in ("burst", "steady")
                                                             if args.only in (None, load)}
    with tempfile.TemporaryDirectory(prefix="entrypoint-elastic-") as work:
        redis_process, redis_url = start_redis(Path(work))
        try:
            for run in range(1, args.runs + 1):
                for load in results:
                    for setup in SETUPS:  # in alternation, so drift hits both
                        log = args.logs / f"{setup}-{load}-{run}.log" if args.logs else None
                        results[load][setup].append(one_run(setup, load, args, redis_url, Path(work), log))
        finally:
            stop_redis(redis_process)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "elastic.json").write_text(json.dumps(results, indent=1))

    def cell(runs: list[dict[str, float]], key: str) -> str:
        values = [run[key] for run in runs]
        digits = 1 if key == "seconds" else 2
        return f"{statistics.median(values):.{digits}f} s ({min(values):.{digits}f}-{max(values):.{digits}f})"

    def ratio(by_setup: dict[str, list[dict[str, float]]], key: str) -> str:
        static, elastic = (statistics.median(run[key] for run in by_setup[s]) for s in ("static", "elastic"))
        return f"{static / elastic:.2f}x" if elastic else "-"

    print(f"8 workers, jobs of {args.seconds:g} s; burst: {args.burst} jobs at once on one queue; steady: "
          f"{args.rate:g} jobs/s over two queues for {args.duration:g} s; medians of {args.runs} runs (min-max)\n")
    print("| load | figure | static 4 + 4 | elastic 8 | static / elastic |")
    print("|---|---|---|---|---|")
    rows = [("burst", "seconds", "all finished"), ("steady", "seconds", "all finished"),
            ("steady", "wait_median", "wait, median"), ("steady", "wait_p95", "wait, 95th percentile")]
    for load, key, label in rows:
        if load not in results:
            continue
        by_setup = results[load]
        print(f"| {load} | {label} | {cell(by_setup['static'], key)} | {cell(by_setup['elastic'], key)} "
              f"| {ratio(by_setup, key)} |")


if __name__ == "__main__":
    main()
