"""Elastic slots against a static split of the same workers: a burst on one queue, and a steady load on two.

    .venv/bin/python benchmarks/elastic.py [--runs 3] [--burst 500] [--seconds 0.2]

Eight workers, two queues. Static: `a: 4`, `b: 4`. Elastic: `pool.elastic: 8`, both groups
`count: elastic` (min 1, max 8), the defaults grow_after 3 s and shrink_after 30 s. Both run the
default RQ worker, preloaded, against a private redis-server; the two setups run in alternation.
- burst: --burst jobs of --seconds each on `a` alone: seconds from enqueueing until every job has
  finished (goal: elastic at least 1.5x sooner);
- steady: the same number of jobs split over `a` and `b`, enqueued at once (goal: no slower).
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
from rq.registry import FinishedJobRegistry  # noqa: E402

SETUPS = {
    "static": "a: 4\nb: 4\npool:\n  preload: [sleepy]\n",
    "elastic": "a: {count: elastic, min: 1, max: 8}\nb: {count: elastic, min: 1, max: 8}\n"
               "pool:\n  elastic: 8\n  preload: [sleepy]\n",
}


@contextlib.contextmanager
def pool(setup: str, redis_url: str, tmp: Path) -> Iterator[None]:
    config = tmp / f"{setup}.yml"
    config.write_text(SETUPS[setup])
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": f"{ROOT}:{APPS}"}
    process = subprocess.Popen([sys.executable, "-m", "entrypoint", "--config", str(config), "--socket",
                                str(tmp / f"{setup}.sock")], cwd=tmp, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        terminate(process, 60)


def drain(connection: Redis, jobs: dict[str, int], seconds: float) -> float:
    """Enqueue the jobs (queue -> how many) at once; seconds until every one has finished."""
    finished_before = {q: FinishedJobRegistry(q, connection=connection).count for q in jobs}
    started = time.monotonic()
    for name, count in jobs.items():
        queue = Queue(name, connection=connection)
        queue.enqueue_many([Queue.prepare_data("sleepy.nap", args=(seconds,), result_ttl=600) for _ in range(count)])

    def done() -> bool:
        return all(FinishedJobRegistry(q, connection=connection).count - finished_before[q] >= n
                   for q, n in jobs.items())
    wait_for(done, 600, "the jobs to finish", interval=0.05)
    return time.monotonic() - started


def one_run(setup: str, load: str, args: argparse.Namespace, redis_url: str, tmp: Path) -> float:
    connection = Redis.from_url(redis_url)
    connection.flushdb()
    jobs = {"a": args.burst} if load == "burst" else {"a": args.burst // 2, "b": args.burst - args.burst // 2}
    with pool(setup, redis_url, tmp):
        # ready: at least each group's minimum registered and idle
        wait_for(lambda: len(Worker.all(connection=connection)) >= (8 if setup == "static" else 2), 60,
                   f"the {setup} pool's workers", interval=0.05)
        time.sleep(1)
        return drain(connection, jobs, args.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=0.2)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {load: {s: [] for s in SETUPS} for load in ("burst", "steady")}
    with tempfile.TemporaryDirectory(prefix="entrypoint-elastic-") as work:
        redis_process, redis_url = start_redis(Path(work))
        try:
            for _ in range(args.runs):
                for load in results:
                    for setup in SETUPS:  # in alternation, so drift hits both
                        results[load][setup].append(one_run(setup, load, args, redis_url, Path(work)))
        finally:
            stop_redis(redis_process)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "elastic.json").write_text(json.dumps(results, indent=1))
    print(f"{args.burst} jobs of {args.seconds:g} s, 8 workers; medians of {args.runs} runs (min-max)\n")
    print("| load | static 4 + 4 | elastic 8 | static / elastic |")
    print("|---|---|---|---|")
    for load, by_setup in results.items():
        cells = {s: f"{statistics.median(v):.1f} s ({min(v):.1f}-{max(v):.1f})" for s, v in by_setup.items()}
        ratio = statistics.median(by_setup["static"]) / statistics.median(by_setup["elastic"])
        print(f"| {load} | {cells['static']} | {cells['elastic']} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
