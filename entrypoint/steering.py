"""The pool seen from outside: its state as plain values; the replies to --status, --health, scale; its fleet entry."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from typing import NamedTuple

from entrypoint import monitoring, report
from entrypoint.health import first_problem, looping_slots
from entrypoint.memory import MemoryLimit
from entrypoint.memory_policy import MemoryWatch
from entrypoint.pool import SlotHistory, SlotKey, Worker
from entrypoint.poolconfig import Group
from entrypoint.preload import Templates

SCALE_MAX = 1000  # the most workers a scale request may ask of one group


class PoolView(NamedTuple):
    """What the supervisor knows at `now`, without measuring anything."""

    pool_id: str
    stopping: bool
    paused: bool
    wanted: Mapping[str, tuple[Group, int]]  # what the loop works towards now: nothing while paused or stopping
    desired: Mapping[str, tuple[Group, int]]  # each group's count in force
    workers: Collection[Worker]
    history: Mapping[SlotKey, SlotHistory]
    reset_after: float  # a worker that lives this long ends its slot's crash loop
    readings: Mapping[str, monitoring.Reading]
    shares: Callable[[str], dict[str, float | None] | None]  # a group's share of busy time
    now: float


class Scale(NamedTuple):
    group: str
    count: int


def looping(view: PoolView) -> list[tuple[SlotKey, SlotHistory]]:
    """Wanted slots still in a crash loop."""
    counts = {name: count for name, (_, count) in view.wanted.items()}
    uptimes = {w.key: view.now - w.started for w in view.workers if w.stop_sent is None}
    return looping_slots(counts, uptimes, view.history, view.reset_after)


def group_entries(view: PoolView) -> dict[str, dict]:
    looping_groups = {group for (group, _slot), _ in looping(view)}
    return report.group_entries(view.wanted, view.workers, looping_groups, view.readings, view.shares, view.now)


def status(view: PoolView, exits: Mapping[str, Mapping[str, int]], templates: Templates,
           monitors: monitoring.Monitoring, measured: MemoryWatch, limit: MemoryLimit) -> dict:
    """The --status reply, from numbers `measured` has just taken."""
    template_pss, monitor_pss = measured.helper_pss("template"), measured.helper_pss("monitor")
    return {
        "pool_id": view.pool_id, "manager_pid": os.getpid(),
        "stopping": view.stopping, "paused": view.paused,
        "workers": report.slot_rows(view.wanted, view.desired, view.workers, view.history, templates.starting(),
                                    view.now),
        "groups": group_entries(view),
        "exits": exits,
        "template": report.template_row(templates.current, templates.setup, templates.history, template_pss,
                                        view.now),
        "monitor": report.monitor_row(monitors, monitor_pss, view.now),
        "memory": {
            "limit": limit.bytes, "limit_source": limit.source,
            "manager": measured.manager_pss, "template": template_pss, "monitor": monitor_pss,
            "total": measured.total(view.workers),
            "oom_kills": measured.oom_kills(),
        },
    }


def health(view: PoolView, memory: str | None) -> dict:
    """The --health reply: crash loops and `memory`, the pool over its guard (health.memory_problem)."""
    problem = first_problem(view.stopping, looping(view), memory)
    return {"healthy": problem is None, "problem": problem,
            "running": sum(1 for w in view.workers if w.stop_sent is None),
            "wanted": sum(count for _, count in view.wanted.values())}


def scale_request(request: dict, desired: Mapping[str, tuple[Group, int]]) -> Scale | dict:
    """A scale request's group and count, or the error reply."""
    group, count = request.get("group"), request.get("count")
    if group not in desired:
        return {"error": f"no group {group!r}; groups: {', '.join(desired)}"}
    if not isinstance(count, int) or not 0 <= count <= SCALE_MAX:
        return {"error": f"count: expected a whole number from 0 to {SCALE_MAX}"}
    return Scale(group, count)


def fleet_entry(view: PoolView, started_at: float, memory_total: int, memory_limit: int | None) -> dict:
    """The numbers the monitor publishes next, as the pool knows them without measuring anything."""
    state = "stopping" if view.stopping else "paused" if view.paused else "running"
    return monitoring.fleet_entry(view.pool_id, started_at, state, group_entries(view), memory_total,
                                  memory_limit, sum(h.restarts for h in view.history.values()))
