"""Busy or idle: which RQ workers have a job in hand, and each group's share of busy time over 1 and 5 minutes."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from entrypoint.pool import Worker
from entrypoint.poolconfig import Group
from entrypoint.rqworker import rq_worker_url

# How often busy/idle is sampled while some group can tell: a job shorter than this may go unseen
# by one sample, but over a minute the share of busy samples is the share of busy time.
SAMPLE_SECONDS = 1.0
WINDOWS = {"1m": 60.0, "5m": 300.0}


def knows_busy(spec: Group) -> bool:
    """Whether busy can be told from the process table: an RQ worker forks a work-horse for each
    job, so it is busy exactly while it has a child. Any other command: unknown."""
    return spec.call is None and rq_worker_url(spec.argv, {}) is not None


def has_child(pid: int) -> bool | None:
    """Whether the process has a child now (one small read); None when it is gone."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as children:
            return bool(children.read().strip())
    except OSError:
        return None


class GroupTime:
    """One group's samples: (when, busy workers, running workers), as long as the longest window."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int, int]] = deque()

    def add(self, now: float, busy: int, running: int) -> None:
        self.samples.append((now, busy, running))
        horizon = now - max(WINDOWS.values())
        while self.samples and self.samples[0][0] < horizon:
            self.samples.popleft()

    def share(self, now: float, window: float) -> float | None:
        """Busy worker-samples over running worker-samples in the window; None with none running."""
        busy = running = 0
        for when, sampled_busy, sampled_running in reversed(self.samples):
            if when <= now - window:
                break
            busy += sampled_busy
            running += sampled_running
        return busy / running if running else None


class Usage:
    """Busy/idle of every worker that can tell, and each group's busy time."""

    def __init__(self) -> None:
        self.groups: dict[str, GroupTime] = {}
        self.next_sample = 0.0

    def sample(self, now: float, workers: Iterable[Worker], groups: Mapping[str, Group]) -> None:
        """Read each worker's busy/idle (side effect: one /proc read each) and record each group's."""
        self.next_sample = now + SAMPLE_SECONDS
        counted: dict[str, list[int]] = {name: [0, 0] for name, spec in groups.items() if knows_busy(spec)}
        for worker in workers:
            if worker.group not in counted or worker.stop_sent is not None:
                continue
            busy = has_child(worker.pid)
            if busy is None:
                continue
            if not busy and worker.idle_since is None:
                worker.idle_since = now
            elif busy:
                worker.idle_since = None
            worker.busy = busy
            counted[worker.group][0] += busy
            counted[worker.group][1] += 1
        for name, (busy_count, running) in counted.items():
            self.groups.setdefault(name, GroupTime()).add(now, busy_count, running)
        for name in list(self.groups):
            if name not in counted:
                del self.groups[name]

    def shares(self, group: str, now: float) -> dict[str, float | None] | None:
        """{"1m": share, "5m": share} of busy time, or None when the group cannot tell."""
        times = self.groups.get(group)
        if times is None:
            return None
        return {label: times.share(now, window) for label, window in WINDOWS.items()}
