"""The example app in a pod-sized memory cgroup with jobs running: what `count: auto` settles on.

    python3 benchmarks/example_pod.py [--limit-mb 512] [--seconds 90]

Runs the pool as k8s/deployment.yaml does (example/pool.yml, WORKER_CONCURRENCY=auto,
WELCOME_EMAIL_WORKERS=2, metrics on) in a fresh cgroup v1 memory group with that limit, against a private
redis-server, while example jobs keep both queues busy (so RQ's work-horses count in each worker's
peak). After a warm-up third it reports each group's worker count (the most frequent, and the
range), the largest worker's PSS seen, the manager's and the monitor's PSS, the cgroup's peak and OOM kills: the
workers per pod that k8s/keda.yaml's listLength must match, and tests/test_k8s.py's figures.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from harness import terminate  # noqa: E402
from memory_auto import memory_cgroup, peak_and_oom_kills  # noqa: E402
from redis_fixture import free_port, start_redis, stop_redis  # noqa: E402

from entrypoint.control import request  # noqa: E402

MIB = 1024 * 1024
POD_ENV = {"WORKER_CONCURRENCY": "auto", "WELCOME_EMAIL_WORKERS": "2"}


def measure(limit_mb: int, seconds: float) -> dict:
    with memory_cgroup(limit_mb, "example-pod") as group, tempfile.TemporaryDirectory() as work:
        redis, url = start_redis(Path(work))
        socket = str(Path(work) / "pool.sock")
        env = {k: v for k, v in os.environ.items() if k not in ("DYNO", "TERM_TIMEOUT", "MEMORY_LIMIT")}
        env.update(POD_ENV, REDIS_URL=url, POOL_CONFIG=str(ROOT / "example" / "pool.yml"), PYTHONPATH=str(ROOT),
                   METRICS_PORT=str(free_port()))  # the deployment's METRICS_PORT, on a port free here
        join = f"echo $$ > {group / 'cgroup.procs'} && exec {sys.executable} -m entrypoint --socket {socket}"
        pool = subprocess.Popen(["sh", "-c", join], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        largest = manager = monitor = 0
        started = time.monotonic()
        try:
            while (elapsed := time.monotonic() - started) < seconds:
                subprocess.run([sys.executable, "-m", "example.enqueue", "--count", "40", "--seconds", "0.3"],
                               cwd=ROOT, env=env, capture_output=True, timeout=60)
                time.sleep(1)
                try:
                    status = request(socket, {"command": "status"})
                except OSError:
                    continue
                if elapsed < seconds / 3:
                    continue  # warming up: auto starts at 1 and grows as it measures
                running = collections.Counter(w["group"] for w in status["workers"] if w["state"] == "running")
                for name, count in running.items():
                    counts[name][count] += 1
                largest = max([largest, *(w["memory"] or 0 for w in status["workers"])])
                manager = max(manager, status["memory"]["manager"])
                monitor = max(monitor, status["memory"]["monitor"])
        finally:
            terminate(pool, 60)
            stop_redis(redis)
        peak, oom_kills = peak_and_oom_kills(group)
    return {"counts": counts, "largest": largest, "manager": manager, "monitor": monitor, "peak": peak,
            "oom_kills": oom_kills}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit-mb", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=90)
    args = parser.parse_args()
    result = measure(args.limit_mb, args.seconds)
    print(f"example pool in {args.limit_mb} MiB, {POD_ENV}:")
    for name, seen in sorted(result["counts"].items()):
        print(f"  {name}: {seen.most_common(1)[0][0]} workers (seen {min(seen)}-{max(seen)})")
    print(f"  largest worker {result['largest'] / MIB:.1f} MiB PSS, manager {result['manager'] / MIB:.1f} MiB, "
          f"monitor {result['monitor'] / MIB:.1f} MiB; "
          f"cgroup peak {result['peak'] / MIB:.0f} / {args.limit_mb} MiB; OOM kills {result['oom_kills']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
