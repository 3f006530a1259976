"""The monitor process: what it costs in memory, and what a scrape and a round of Redis reads take.

    python3 benchmarks/monitor.py [--runs 5]

For each setting (the backlog of one RQ group and the fleet entry; the same with metrics on) it
starts a redis-server and a pool, waits for the monitor's first reading, and reports the medians
(min-max) over the runs: the monitor's PSS and the manager's, as `--status --json` gives them, the
time from a scrape's request to its last byte, and how long the monitor's reading is old on
average right after it lands (its Redis round trip plus the manager's loop). Needs redis-server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from redis_fixture import free_port, start_redis, stop_redis  # noqa: E402

from entrypoint.control import request  # noqa: E402

MIB = 1024 * 1024
POOL = "q: 0\nsleepers:\n  count: 2\n  command: sleep 1000\n"


def status(socket: str) -> dict | None:
    try:
        return request(socket, {"command": "status"})
    except OSError:
        return None


def one_run(directory: Path, metrics: bool) -> dict:
    redis, url = start_redis(directory)
    (directory / "pool.yml").write_text(POOL)
    socket = str(directory / "pool.sock")
    port = free_port()
    argv = [sys.executable, "-m", "entrypoint", "--socket", socket, "--config", str(directory / "pool.yml")]
    if metrics:
        argv += ["--metrics-port", str(port)]
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    pool = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        found = None
        while time.monotonic() < deadline:
            found = status(socket)
            if found and found["groups"]["q"]["backlog"] and (not metrics or found["monitor"]["metrics"]):
                break
            time.sleep(0.1)
        else:
            raise SystemExit("the monitor never reported")
        time.sleep(3)  # past start-up
        ages = []
        for _ in range(10):
            ages.append(status(socket)["groups"]["q"]["backlog"]["age"])
            time.sleep(0.37)  # out of step with the 2 s rounds: a fair sample of ages
        found = status(socket)
        result = {"monitor_mib": found["memory"]["monitor"] / MIB, "manager_mib": found["memory"]["manager"] / MIB,
                  "mean_age_s": statistics.fmean(ages)}
        if metrics:
            started = time.perf_counter()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                answer.read()
            result["scrape_ms"] = (time.perf_counter() - started) * 1000
        return result
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(timeout=30)
        stop_redis(redis)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("needs redis-server (scripts/test installs it)")
    for metrics in (False, True):
        runs = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as directory:
                runs.append(one_run(Path(directory), metrics))
        print(f"backlog + fleet{' + metrics' if metrics else ''} ({args.runs} runs):")
        for key in runs[0]:
            values = [run[key] for run in runs]
            print(f"  {key:12} {statistics.median(values):8.2f}  ({min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main()
