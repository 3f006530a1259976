"""The pool's decisions: which workers should run, which to start, stop or back off, as plain functions."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import NamedTuple

from entrypoint import memory
from entrypoint.poolconfig import Group, PoolConfig

# This many quick exits in a row make a group "crash-looping": reported once, loudly.
CRASH_LOOP_AFTER = 5

SlotKey = tuple[str, int]  # (group name, slot number from 1)


class Backoff(NamedTuple):
    """Per-slot exponential backoff: 0, min, 2*min, 4*min ... up to max, reset by a long enough life."""

    minimum: float = 1.0
    maximum: float = 60.0
    reset_after: float = 30.0

    def delay(self, failures: int, jitter: float) -> float:
        """Seconds to wait after `failures` quick exits in a row; jitter in [0, 1) spreads +-25%.

        The first quick exit is replaced at once (a kill -9 is not a crash loop); from the
        second on: minimum, twice that, and so on up to maximum.
        """
        if failures <= 1:
            return 0.0
        base = min(self.maximum, self.minimum * 2 ** min(failures - 2, 32))
        return min(self.maximum, base * (0.75 + 0.5 * jitter))

    @classmethod
    def from_config(cls, config: PoolConfig) -> Backoff:
        return cls(config.backoff_min, config.backoff_max, config.backoff_reset)


class Worker:
    """One process we started, and what we asked of it."""

    __slots__ = ("busy", "group", "growing", "idle_since", "kill_at", "peak_children", "peak_private", "peak_pss",
                 "pid", "private", "pss", "samples", "slot", "spec", "started", "stop_sent")

    def __init__(self, group: str, slot: int, pid: int, spec: Group, started: float, *,
                 stop_sent: float | None = None, kill_at: float | None = None) -> None:
        self.group = group
        self.slot = slot
        self.pid = pid
        self.spec = spec
        self.started = started
        self.stop_sent = stop_sent  # when we asked it to stop (or decided to)
        self.kill_at = kill_at  # when it gets KILL if still alive
        self.pss: int | None = None  # bytes at the last sample, its own children included
        self.peak_pss = 0  # the most it has used: job peaks count when planning
        self.private = 0  # of pss, the bytes it shares with no other process (its children included)
        self.peak_private = 0  # the most it held alone itself
        self.peak_children = 0  # the most its children held alone
        self.growing = False  # its last sample raised its peak: not settled yet
        self.samples = 0
        self.busy: bool | None = None  # has a job in hand (None: cannot tell, or not sampled yet)
        self.idle_since: float | None = None  # when it last finished a job (or started), while idle

    def __repr__(self) -> str:
        return f"Worker({self.name} pid {self.pid})"

    @property
    def key(self) -> SlotKey:
        return (self.group, self.slot)

    @property
    def name(self) -> str:
        return f"{self.group}.{self.slot}"


class SlotHistory(NamedTuple):
    """What the pool remembers about a slot across its workers' lives."""

    restarts: int = 0
    failures: int = 0  # quick exits in a row
    not_before: float = 0.0  # backoff: no new worker before this time
    last_exit: str | None = None


class Start(NamedTuple):
    spec: Group
    slot: int


class Stop(NamedTuple):
    worker: Worker
    reason: str


def desired_counts(config: PoolConfig, limit: int | None, cpus: int) -> dict[str, tuple[Group, int]]:
    """Group -> (definition, how many). An `auto` group starts at its minimum and grows as
    memory allows; with no memory limit known it gets the CPU-based count instead."""
    counts = {}
    for group in config.groups:
        if group.elastic:
            counts[group.name] = (group, group.min_count)  # the backlog decides the rest
        elif not group.auto:
            counts[group.name] = (group, group.count or 0)
        elif limit is None:
            wanted = memory.cpu_worker_count(cpus)
            counts[group.name] = (group, max(group.min_count, min(group.max_count, wanted)))
        else:
            counts[group.name] = (group, group.min_count)
    return counts


def worker_env(base: Mapping[str, str], spec: Group, slot: int, pool_id: str, term_timeout: float) -> dict[str, str]:
    """The worker's environment: ours, the group's, then who it is and how long a stop gives it."""
    env = dict(base)
    env.update(spec.env)
    env.update(
        QUEUES=",".join(spec.queues),
        POOL_GROUP=spec.name,
        POOL_SLOT=str(slot),
        POOL_WORKER=f"{spec.name}.{slot}",
        POOL_ID=pool_id,
        # The grace a stop gives this worker before KILL: a worker that knows it can hand its
        # job back in time instead of being killed mid-job.
        POOL_TERM_TIMEOUT=f"{term_timeout:g}",
        # For our RQ worker: 0 keeps RQ's own way with a job still running at the deadline.
        POOL_REQUEUE_ON_SHUTDOWN="1" if spec.requeue_on_shutdown else "0",
    )
    return env


def same_definition(a: Group, b: Group) -> bool:
    """Whether a running worker still matches its group: everything but the count matters."""
    ignore = {"count": 0, "min_count": 0, "max_count": 0}
    return a._replace(**ignore) == b._replace(**ignore)


def plan(
    desired: Mapping[str, tuple[Group, int]],
    workers: Iterable[Worker],
    history: Mapping[SlotKey, SlotHistory],
    now: float,
    starting: Collection[SlotKey] = (),
) -> list[Start | Stop]:
    """What to do now to move from `workers` towards `desired` (group -> (definition, count)).

    A slot holds one worker at a time: after a reload the new worker starts when the old one
    has exited, so a changed group is replaced one worker at a time and never runs twice over.
    `starting` slots have a worker on its way (a fork the template has not answered yet).
    """
    actions: list[Start | Stop] = []
    occupied = set(starting)
    for worker in workers:
        occupied.add(worker.key)
        if worker.stop_sent is not None:
            continue
        wanted = desired.get(worker.group)
        if wanted is None:
            actions.append(Stop(worker, "group removed"))
        elif worker.slot > wanted[1]:
            actions.append(Stop(worker, "scaled down"))
        elif not same_definition(worker.spec, wanted[0]):
            actions.append(Stop(worker, "definition changed"))
    for name, (spec, count) in desired.items():
        for slot in range(1, count + 1):
            key = (name, slot)
            if key not in occupied and history.get(key, SlotHistory()).not_before <= now:
                actions.append(Start(spec, slot))
    return actions


def after_exit(
    before: SlotHistory, lived: float, expected: bool, now: float, backoff: Backoff,
    jitter: float, description: str,
) -> SlotHistory:
    """The slot's history once its worker has exited after `lived` seconds.

    An exit we asked for costs nothing. Any other exit after a short life (crash, or a worker
    that simply returns at once) counts as a failure and pushes the next start back.
    """
    if expected:
        return before._replace(last_exit=description)
    failures = 0 if lived >= backoff.reset_after else before.failures + 1
    return SlotHistory(
        restarts=before.restarts + 1,
        failures=failures,
        not_before=now + backoff.delay(failures, jitter),
        last_exit=description,
    )


def after_spawn_failure(before: SlotHistory, now: float, backoff: Backoff, description: str,
                        *, hopeless: bool) -> SlotHistory:
    """A start that failed: a command that cannot run waits the longest, fork trouble backs off."""
    failures = max(before.failures + 1, CRASH_LOOP_AFTER if hopeless else 0)
    delay = backoff.maximum if hopeless else backoff.delay(failures, 0.5)
    return SlotHistory(before.restarts, failures, now + delay, description)


def crash_looping(history: SlotHistory) -> bool:
    return history.failures >= CRASH_LOOP_AFTER


def scaled(desired: Mapping[str, tuple[Group, int]], step: int) -> dict[str, tuple[Group, int]]:
    """TTIN/TTOU: one worker more or fewer in each group, never below zero."""
    return {name: (spec, max(0, count + step)) for name, (spec, count) in desired.items()}


def overdue(workers: Iterable[Worker], now: float) -> list[Worker]:
    """Workers whose grace has run out."""
    return [w for w in workers if w.kill_at is not None and w.kill_at <= now]


def next_wakeup(
    desired: Mapping[str, tuple[Group, int]],
    workers: Iterable[Worker],
    history: Mapping[SlotKey, SlotHistory],
    now: float,
) -> float | None:
    """The earliest moment a plan could change on its own: a backoff ending or a grace running out."""
    moments = [w.kill_at for w in workers if w.kill_at is not None]
    occupied = {w.key for w in workers}
    for name, (_spec, count) in desired.items():
        for slot in range(1, count + 1):
            waiting_until = history.get((name, slot), SlotHistory()).not_before
            if (name, slot) not in occupied and waiting_until > now:
                moments.append(waiting_until)
    return min(moments, default=None)


def keeping_learnt_counts(old: Mapping[str, tuple[Group, int]],
                          new: Mapping[str, tuple[Group, int]]) -> dict[str, tuple[Group, int]]:
    """The counts after a reload: an `auto` group that is still the same keeps what it has learnt,
    within its new bounds (new code, a new template, does not reset it)."""
    kept = dict(new)
    for name, (spec, _count) in new.items():
        before = old.get(name)
        if spec.auto and before and before[0].auto and same_definition(
                before[0]._replace(template=spec.template), spec):
            kept[name] = (spec, max(spec.min_count, min(spec.max_count, before[1])))
    return kept


def reload_diff(old: Mapping[str, tuple[Group, int]], new: Mapping[str, tuple[Group, int]]) -> list[str]:
    """One phrase per change, for the reload's log line."""
    changes = []
    for name, (spec, count) in new.items():
        if name not in old:
            changes.append(f"+{name} ({count})")
            continue
        old_spec, old_count = old[name]
        if old_spec.template != spec.template and same_definition(
                old_spec._replace(template=spec.template), spec):
            changes.append(f"~{name} (new code: forked from template {spec.template}, replacing {old_count}->{count})")
        elif not same_definition(old_spec, spec):
            changes.append(f"~{name} (definition changed, replacing {old_count}->{count})")
        elif old_count != count:
            changes.append(f"{name} {old_count}->{count}")
    changes.extend(f"-{name}" for name in old if name not in new)
    return changes
