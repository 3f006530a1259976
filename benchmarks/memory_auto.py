"""`count: auto` in a 512 MB memory cgroup (a Standard-1X dyno): the count chosen against the best one.

    python3 benchmarks/memory_auto.py [--limit-mb 512] [--footprints 30,60,100]

For each worker footprint it runs the pool in a fresh cgroup v1 memory group with that limit,
waits until `auto` has settled, and reports: the count chosen, the best count (the most workers
whose measured PSS, with the manager's, fits in the headroom) and the most that would fit in the
whole limit, the cgroup's peak usage against the limit, and the OOM kills (goal: 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from entrypoint.control import request  # noqa: E402
from entrypoint.memory import cgroup_memory_dir  # noqa: E402

MIB = 1024 * 1024
HEADROOM = 0.85
HOG = [sys.executable, str(ROOT / "tests" / "programs" / "hog.py")]


def own_memory_cgroup() -> Path:
    found = cgroup_memory_dir(Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text())
    if found is None or found[0] != 1:
        raise SystemExit("this benchmark needs a cgroup v1 memory controller (as Heroku dynos have)")
    return Path(found[1])


def settle(socket: str, quiet_seconds: float, timeout: float) -> list[dict]:
    """The running workers once their count has not changed for quiet_seconds."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            running = [w for w in request(socket, {"command": "status"})["workers"] if w["state"] == "running"]
        except OSError:
            running = []
        if len(running) != last:
            last, since = len(running), time.monotonic()
        elif running and all(w["memory"] for w in running) and time.monotonic() - since >= quiet_seconds:
            return running
        time.sleep(0.2)
    raise SystemExit(f"auto did not settle within {timeout}s")


@contextlib.contextmanager
def memory_cgroup(limit_mb: int, name: str = "entrypoint-bench") -> Iterator[Path]:
    """A fresh child of our cgroup v1 memory group with this limit; at the end its processes are
    KILLed and it is removed."""
    group = own_memory_cgroup() / f"{name}-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit_mb * MIB))
        yield group
    finally:
        with contextlib.suppress(OSError):
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for _ in range(100):
            with contextlib.suppress(OSError):
                group.rmdir()
                break
            time.sleep(0.05)


def peak_and_oom_kills(group: Path) -> tuple[int, int]:
    """The group's peak usage in bytes and how many processes the kernel OOM-killed in it."""
    oom = dict(line.split() for line in (group / "memory.oom_control").read_text().splitlines())
    return int((group / "memory.max_usage_in_bytes").read_text()), int(oom.get("oom_kill", 0))


def measure(limit_mb: int, footprint_mb: int) -> dict:
    with memory_cgroup(limit_mb) as group:
        with tempfile.TemporaryDirectory() as tmp:
            socket = f"{tmp}/pool.sock"
            Path(tmp, "pool.yml").write_text(
                f"hogs:\n  count: auto\n  max: 100\n  command: {json.dumps(HOG)}\n"
                f"pool:\n  memory_interval: 0.5\n  memory_headroom: {HEADROOM}\n"
            )
            join = f"echo $$ > {group / 'cgroup.procs'} && exec {sys.executable} -m entrypoint --socket {socket}"
            env = {**os.environ, "HOG_MB": str(footprint_mb), "PYTHONPATH": str(ROOT)}
            pool = subprocess.Popen(["sh", "-c", join], cwd=tmp, env=env, start_new_session=True,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                started = time.monotonic()
                running = settle(socket, quiet_seconds=5, timeout=120)
                took = time.monotonic() - started
                status = request(socket, {"command": "status"})
            finally:
                pool.send_signal(signal.SIGTERM)
                pool.wait(timeout=60)
        per_worker = max(w["memory"] for w in running)
        manager = status["memory"]["manager"]
        peak, oom_kills = peak_and_oom_kills(group)
        return {
            "footprint_mb": footprint_mb,
            "limit_mb": limit_mb,
            "chosen": len(running),
            "best_in_headroom": int((HEADROOM * limit_mb * MIB - manager) // per_worker),
            "fits_in_limit": int((limit_mb * MIB - manager) // per_worker),
            "per_worker_mib": round(per_worker / MIB, 1),
            "manager_mib": round(manager / MIB, 1),
            "peak_mib": round(peak / MIB, 1),
            "oom_kills": oom_kills,
            "settle_seconds": round(took, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-mb", type=int, default=512)
    parser.add_argument("--footprints", default="30,60,100", help="worker sizes in MB, comma-separated")
    args = parser.parse_args()
    results = [measure(args.limit_mb, int(mb)) for mb in args.footprints.split(",")]
    print("| worker | chosen | best (85%) | fits (100%) | per worker PSS | manager | peak / limit | OOM kills |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['footprint_mb']} MB | {r['chosen']} | {r['best_in_headroom']} | {r['fits_in_limit']} | "
              f"{r['per_worker_mib']} MiB | {r['manager_mib']} MiB | {r['peak_mib']} / {r['limit_mb']} MiB | "
              f"{r['oom_kills']} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
