"""The pool in a real memory cgroup: `auto` sizing, max_memory ceilings and the guard before the OOM killer."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cgroup_fixture import Cgroup
from conftest import PROGRAMS, Runner, wait_for

from entrypoint.control import request

MIB = 1024 * 1024
HOG = json.dumps([sys.executable, str(PROGRAMS / "hog.py")])


class CgroupPool:
    """A pool started inside `group` (a memory cgroup, v1 or v2) by a shell that joins it and execs us."""

    def __init__(self, runner: Runner, tmp_path: Path, group: Cgroup, config: str, **env: str) -> None:
        self.group = group
        self.socket = str(tmp_path / "pool.sock")
        (tmp_path / "pool.yml").write_text(config)
        join = f"echo $$ > {group / 'cgroup.procs'} && exec {sys.executable} -m entrypoint -v --socket {self.socket}"
        self.process = subprocess.Popen(
            ["sh", "-c", join], cwd=tmp_path, env=runner.env(**env), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        runner.started.append(self.process)

    def status(self) -> dict:
        return request(self.socket, {"command": "status"})

    def running(self) -> list[dict]:
        try:
            return [w for w in self.status()["workers"] if w["state"] == "running"]
        except OSError:
            return []

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        try:
            output, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the pool did not stop")
        assert self.process.returncode == 0, output
        return output


def pss(pid: int) -> int:
    """The process's proportional set size in bytes, read straight from /proc/PID/smaps_rollup."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no Pss line for pid {pid}")


def test_auto_settles_on_the_count_that_fits(runner, tmp_path, memory_cgroup):
    memory_cgroup.limit_memory(400 * MIB)
    config = (f"hogs:\n  count: auto\n  max: 40\n  command: {HOG}\n"
              "pool:\n  memory_interval: 0.3\n  memory_headroom: 0.85\n")
    # 39 MB workers (about 44 MiB PSS with the interpreter) put the count that fits near 7.4, well
    # between two whole numbers: the expected count is exact with a few MiB either way.
    pool = CgroupPool(runner, tmp_path, memory_cgroup, config, HOG_MB="39")
    wait_for(lambda: len(pool.running()) >= 2, 30, "auto to add workers")
    history: list[tuple[float, int]] = []
    # auto grows at most twice over at a time, each step once every worker has been measured 3
    # times: settled means the same count for 10 memory intervals, longer than any step takes.
    quiet = 10 * 0.3

    def settled():
        running = pool.running()
        now = time.monotonic()
        history.append((now, len(running)))
        recent = {count for when, count in history if when >= now - quiet}
        measured = running and all(w["memory"] for w in running)
        return measured and history[0][0] <= now - quiet and len(recent) == 1 and running

    running = wait_for(settled, 60, "auto to settle (the same count for 10 memory intervals)")
    # "Best" from our own reading of /proc, not from the numbers the pool reports about itself.
    per_worker = max(pss(w["pid"]) for w in running)
    manager = pss(pool.process.pid)
    best = int((0.85 * 400 * MIB - manager) // per_worker)
    assert len(running) == best, (f"{len(running)} workers, {best} fit: {per_worker / MIB:.1f} MiB per worker, "
                                  f"manager {manager / MIB:.1f} MiB")
    assert memory_cgroup.oom_kills() == 0
    assert memory_cgroup.peak() < 400 * MIB
    output = pool.stop()
    assert "auto: hogs 1->" in output


def test_worker_over_max_memory_is_recycled_gracefully(runner, tmp_path, memory_cgroup):
    memory_cgroup.limit_memory(600 * MIB)
    config = (f"leaky:\n  count: 1\n  max_memory: 80M\n  command: {HOG}\n"
              "pool:\n  memory_interval: 0.2\n")
    pool = CgroupPool(runner, tmp_path, memory_cgroup, config, HOG_MB="20", HOG_LEAK_MB="5", HOG_EVERY="0.2")
    first = wait_for(lambda: pool.running(), 15, "the worker")[0]["pid"]
    wait_for(lambda: (r := pool.running()) and r[0]["pid"] != first, 30, "a replacement")
    output = pool.stop()
    assert "over its max_memory 80.0 MiB" in output
    assert "stopping leaky.1" in output and ": SIGTERM" in output, "its stop signal, not KILL"
    assert memory_cgroup.oom_kills() == 0


def test_leaking_pool_is_recycled_before_the_oom_killer_acts(runner, tmp_path, memory_cgroup):
    memory_cgroup.limit_memory(300 * MIB)
    config = f"leaky: {{count: 3, command: {HOG}}}\npool:\n  memory_interval: 0.2\n"
    pool = CgroupPool(runner, tmp_path, memory_cgroup, config, HOG_MB="20", HOG_LEAK_MB="2", HOG_EVERY="0.2")
    wait_for(lambda: len(pool.running()) == 3, 15, "three workers")
    # Without the guard the three leak past 300 MB within about 20 s and the kernel kills one.
    wait_for(lambda: sum(1 for w in pool.status()["workers"] if w["last_exit"]) >= 2, 60, "recycles")
    assert memory_cgroup.oom_kills() == 0
    assert memory_cgroup.peak() < 300 * MIB
    output = pool.stop()
    assert output.count("recycling the largest worker") >= 2
