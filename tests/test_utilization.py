"""Busy or idle, and each group's share of busy time: plain values, then real processes."""

from __future__ import annotations

import subprocess
import sys

from entrypoint.pool import Worker
from entrypoint.poolconfig import Group
from entrypoint.utilization import GroupTime, Usage, knows_busy

RQ = Group(name="q", queues=("q",), count=2, min_count=2, max_count=2,
           argv=(sys.executable, "-m", "rq.cli", "worker", "--url", "redis://x", "q"))


def test_rq_workers_can_tell_busy_from_idle_other_commands_cannot() -> None:
    assert knows_busy(RQ)
    assert knows_busy(RQ._replace(argv=("rq", "worker", "--url", "redis://x", "q")))
    assert knows_busy(RQ._replace(forked=True)), "a forked default worker runs the same rq.cli"
    assert not knows_busy(RQ._replace(argv=("sleep", "60")))
    assert not knows_busy(RQ._replace(argv=("rq", "info")))
    assert not knows_busy(RQ._replace(argv=(), call="myapp:main", forked=True))


def test_a_groups_share_of_busy_time_is_over_its_window() -> None:
    times = GroupTime()
    for second in range(300):  # 5 minutes: 2 workers, one busy for the first 4 minutes, both after
        times.add(float(second), 1 if second < 240 else 2, 2)
    assert times.share(299.0, 60.0) == 1.0
    assert abs(times.share(299.0, 300.0) - (240 * 1 + 60 * 2) / 600) < 1e-9
    assert GroupTime().share(0.0, 60.0) is None, "no worker ran: no share, not zero"
    times.add(1000.0, 0, 2)
    assert len(times.samples) == 1, "samples older than the longest window are dropped"


def test_a_worker_is_busy_while_it_has_a_child_and_idle_since_its_last_one_ended() -> None:
    script = "import subprocess, sys; subprocess.run(['sleep', sys.argv[1]]); input()"
    worker_process = subprocess.Popen([sys.executable, "-c", script, "1.5"], stdin=subprocess.PIPE)
    try:
        worker = Worker("q", 1, worker_process.pid, RQ, 0.0)
        usage = Usage()
        deadline = 0
        while True:  # its child starts a moment after it does
            usage.sample(float(deadline), [worker], {"q": RQ})
            if worker.busy or deadline > 200:
                break
            deadline += 1
            subprocess.run(["sleep", "0.01"])
        assert worker.busy is True and worker.idle_since is None
        subprocess.run(["sleep", "2"])
        usage.sample(500.0, [worker], {"q": RQ})
        assert worker.busy is False and worker.idle_since == 500.0
        usage.sample(501.0, [worker], {"q": RQ})
        assert worker.idle_since == 500.0, "idle since the first sample that saw it idle"
        assert usage.shares("q", 501.0)["1m"] == 0.0
    finally:
        worker_process.communicate(b"\n", timeout=10)
