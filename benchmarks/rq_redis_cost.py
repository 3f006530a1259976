"""What our RQ worker class costs Redis, against RQ's own Worker: commands per job, and per idle second.

    python3 benchmarks/rq_redis_cost.py          # about 1 minute; needs redis-server and the [rq] extra

Counted by Redis itself (INFO commandstats, commands inside Lua scripts included): 200 instant
jobs drained by one `rq worker --burst`, then one idle worker listened to for 10 s, each on one
queue and on two.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from rq import Queue

ROOT = Path(__file__).resolve().parent.parent
CLASSES = {"RQ's Worker": "rq.worker.Worker", "ours": "entrypoint.rq_reliable.ReliableWorker"}
JOBS = 200
IDLE_SECONDS = 10.0
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # the workers import entrypoint from this tree


def calls(connection: redis.Redis) -> int:
    return sum(stats["calls"] for stats in connection.info("commandstats").values())


def worker(url: str, worker_class: str, queues: list[str], *options: str) -> list[str]:
    return [sys.executable, "-m", "rq.cli", "worker", "-q", "--url", url, "--worker-class", worker_class,
            *options, *queues]


def per_job(connection: redis.Redis, url: str, worker_class: str, queues: list[str]) -> float:
    connection.flushall()
    queue = Queue(queues[0], connection=connection)
    with connection.pipeline() as pipe:
        queue.enqueue_many([Queue.prepare_data("operator.add", (1, 2)) for _ in range(JOBS)], pipeline=pipe)
        pipe.execute()
    connection.config_resetstat()
    before = calls(connection)
    subprocess.run(worker(url, worker_class, queues, "--burst"), check=True, env=ENV)
    return (calls(connection) - before - 1) / JOBS  # less our own INFO


def per_idle_second(connection: redis.Redis, url: str, worker_class: str, queues: list[str]) -> float:
    connection.flushall()
    process = subprocess.Popen(worker(url, worker_class, queues), env=ENV)
    try:
        time.sleep(3)  # started, maintenance done
        connection.config_resetstat()
        before = calls(connection)
        time.sleep(IDLE_SECONDS)
        return (calls(connection) - before - 1) / IDLE_SECONDS
    finally:
        process.terminate()
        process.wait()


def main() -> int:
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed", file=sys.stderr)
        return 1
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = tempfile.mkdtemp()
    server = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", directory],
                              stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    connection = redis.Redis.from_url(url)
    try:
        while True:
            try:
                connection.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        print("| queues | worker | Redis commands per job | per idle second |\n|---|---|---|---|")
        for queues in (["a"], ["a", "b"]):
            for name, worker_class in CLASSES.items():
                print(f"| {','.join(queues)} | {name} | {per_job(connection, url, worker_class, queues):.1f} | "
                      f"{per_idle_second(connection, url, worker_class, queues):.1f} |", flush=True)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
