"""Elastic slots: how many shared workers each elastic group gets, from its backlog and idle workers, and when."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import NamedTuple

from entrypoint.memory import cpu_worker_count
from entrypoint.memory_policy import MemoryWatch, elastic_room
from entrypoint.pool import Worker
from entrypoint.poolconfig import ELASTIC_AUTO, Group, PoolConfig
from entrypoint.utilization import Usage, knows_busy

# Defaults for pool.grow_after and pool.shrink_after: a backlog must last this long before its
# group grows, and a worker must have been idle this long before its slot can go elsewhere.
# Shrinking waits far longer than growing, so a group between two bursts keeps its workers.
GROW_AFTER = 3.0
SHRINK_AFTER = 30.0
NEVER = float("inf")  # a moment that does not come


class Slot(NamedTuple):
    """One slot of an elastic group as the pool sees it now."""

    number: int
    idle_since: float | None  # None: busy, or not running (never moved: its worker is on its way)


class Backlog(NamedTuple):
    """Jobs waiting in a group's queues, as the monitor last read them."""

    waiting: int
    oldest: float | None  # seconds the oldest waiting job has waited
    since: float  # when the queues last went from empty to not empty (pool's clock)


class Elastic(NamedTuple):
    """An elastic group: its bounds, its count now, its slots, its backlog (None: unknown)."""

    name: str
    minimum: int
    maximum: int
    count: int
    slots: Sequence[Slot]
    backlog: Backlog | None


def views(desired: Mapping[str, tuple[Group, int]], workers: Iterable[Worker],
          backlogs: Mapping[str, Backlog]) -> list[Elastic]:
    """The elastic groups as plan() sees them: bounds, count, each running slot's idle time, backlog."""
    slots: dict[str, list[Slot]] = {}
    for worker in workers:
        if worker.stop_sent is None:
            idle = worker.idle_since if worker.busy is False else None
            slots.setdefault(worker.group, []).append(Slot(worker.slot, idle))
    return [Elastic(name, spec.min_count, spec.max_count, count, slots.get(name, []), backlogs.get(name))
            for name, (spec, count) in desired.items() if spec.elastic]


class Move(NamedTuple):
    group: str
    count: int
    reason: str  # for the log line: `crunch_data 3->5: 412 waiting, oldest 40 s`


def releasable(group: Elastic, now: float, idle_for: float, floor: int = 0) -> int:
    """How many of the group's top slots can go: each idle for idle_for seconds (0: idle now),
    none below its minimum nor below floor, and none while its queues have jobs waiting.

    Slots are numbered and a smaller count stops the highest numbers, so a group gives back only
    from the top, and only idle workers: a busy worker is never stopped to move its slot.
    """
    if group.backlog is not None and group.backlog.waiting:
        return 0
    by_number = {slot.number: slot for slot in group.slots}
    free = 0
    for number in range(group.count, max(group.minimum, floor), -1):
        slot = by_number.get(number)
        if slot is None or slot.idle_since is None or now - slot.idle_since < idle_for:
            break
        free += 1
    return free


def wants(group: Elastic, now: float, grow_after: float) -> int:
    """How many more workers the group could use now: one per waiting job, once the backlog has lasted."""
    backlog = group.backlog
    if backlog is None or not backlog.waiting or now - backlog.since < grow_after:
        return 0
    return max(0, min(group.maximum - group.count, backlog.waiting))


def will_want(group: Elastic, now: float, grow_after: float) -> int:
    """How many more workers the group will want if its young backlog lasts: spare workers are
    kept for it, so the first group whose backlog lasts does not take them all."""
    backlog = group.backlog
    if backlog is None or not backlog.waiting or now - backlog.since >= grow_after:
        return 0
    return max(0, min(group.maximum - group.count, backlog.waiting))


def next_growth(groups: Sequence[Elastic], now: float, grow_after: float) -> float | None:
    """The moment a backlog seen but not lasted yet will have lasted grow_after: the pool looks
    again then, rather than at its next round."""
    moments = [g.backlog.since + grow_after for g in groups
               if g.backlog is not None and g.backlog.waiting and g.count < g.maximum]
    later = [moment for moment in moments if moment > now]
    return min(later) if later else None


def plan(groups: Sequence[Elastic], total: int, now: float, *, grow_after: float = GROW_AFTER,
         shrink_after: float = SHRINK_AFTER) -> list[Move]:
    """Where the `total` shared workers go now. Every group keeps its minimum; top slots idle for
    shrink_after are given back. Spare workers go one at a time to the groups whose backlog has
    lasted grow_after, each to the one with the fewest workers, and are kept for those whose
    backlog is younger, so busy queues share them evenly; never above a group's maximum nor the
    total. When the lasting
    backlogs want more than is spare, groups with nothing waiting lend their top slots: those idle
    for grow_after down to their minimum, those idle now down to an even share of the total."""
    counts = {g.name: max(g.minimum, min(g.maximum, g.count)) for g in groups}
    reasons: dict[str, str] = {}
    by_age = sorted(groups, key=lambda g: (-(g.backlog.oldest or 0.0), -g.backlog.waiting) if g.backlog else (0, 0))
    wanted = {g.name: wants(g, now, grow_after) for g in by_age if wants(g, now, grow_after)}
    kept = {g.name: will_want(g, now, grow_after) for g in by_age if will_want(g, now, grow_after)}

    def give_back(group: Elastic, slots: int, why: str) -> None:
        counts[group.name] -= slots
        idle = min(now - s.idle_since for s in group.slots
                   if s.number > counts[group.name] and s.idle_since is not None)
        reasons[group.name] = f"idle for {idle:.0f} s{why}"

    for group in groups:
        if free := releasable(group, now, shrink_after):
            give_back(group, free, "")
    short = sum(wanted.values()) - (total - sum(counts.values()))
    even = total // len(groups) if groups else 0
    for group in groups:
        if short <= 0:
            break
        if group.name in wanted or group.backlog is None:
            continue  # only a group known to have nothing waiting lends its idle workers early
        given = max(0, group.count - counts[group.name])
        lendable = max(releasable(group, now, grow_after), releasable(group, now, 0.0, floor=even)) - given
        if (more := min(short, lendable)) > 0:
            give_back(group, more, f", wanted by {next(iter(wanted))}")
            short -= more
    spare = total - sum(counts.values())
    rank = {g.name: number for number, g in enumerate(by_age)}
    held = dict.fromkeys(kept, 0)  # spare workers kept for young backlogs
    grown: set[str] = set()
    while spare > 0 and any(wanted.values()):
        # each in turn to the taker with the fewest workers (counting those kept for it), the
        # oldest backlog first among equals: busy queues end up with even shares
        takers = [name for name, more in (*wanted.items(), *kept.items()) if more]
        name = min(takers, key=lambda taker: (counts[taker] + held.get(taker, 0), rank[taker]))
        spare -= 1
        if wanted.get(name):
            counts[name] += 1
            wanted[name] -= 1
            grown.add(name)
        else:
            held[name] += 1
            kept[name] -= 1
    for group in by_age:
        if group.name in grown and group.backlog is not None:
            oldest = f", oldest {group.backlog.oldest:.0f} s" if group.backlog.oldest is not None else ""
            reasons[group.name] = f"{group.backlog.waiting} waiting{oldest}"
    return [Move(g.name, counts[g.name], f"{g.name} {g.count}->{counts[g.name]}: {reasons.get(g.name, 'bounds')}")
            for g in groups if counts[g.name] != g.count]


def shared_total(setting: int, fits: int | None, cpus: int) -> int:
    """The workers the elastic groups share: pool.elastic, never more than memory allows (`fits`);
    with `elastic: auto`, what memory allows (2 x CPUs + 1 while that cannot be told)."""
    if setting == ELASTIC_AUTO:
        return fits if fits is not None else cpu_worker_count(cpus)
    return setting if fits is None else min(setting, fits)


class WorkWatch:
    """Which workers are busy, sampled each second, and when the elastic slots are looked at next:
    at each sample, as a backlog reading comes, and the moment a backlog will have lasted."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.plan_at = 0.0

    def watching(self, config: PoolConfig, desired: Mapping[str, tuple[Group, int]]) -> bool:
        """Whether the loop wakes up each second: some group can tell busy from idle, or is elastic."""
        return config.elastic is not None or any(knows_busy(spec) for spec, _ in desired.values())

    def follow(self, now: float, config: PoolConfig, desired: Mapping[str, tuple[Group, int]],
               workers: Collection[Worker], backlogs: Mapping[str, Backlog], memory: MemoryWatch, *,
               steady: bool) -> list[Move]:
        """Sample when due; then, in a steady pool (not stopping, paused or preloading) whose slots are
        due a look, move elastic slots to the groups whose backlog lasts."""
        if now >= self.usage.next_sample and self.watching(config, desired):
            self.usage.sample(now, workers, {name: spec for name, (spec, _) in desired.items()})
            self.plan_at = min(self.plan_at, now)
        if config.elastic is None or now < self.plan_at or not steady:
            return []
        groups = views(desired, workers, backlogs)
        fits = elastic_room(desired, list(workers), memory.base(), memory.limit.bytes, config.memory_headroom)
        moves = plan(groups, shared_total(config.elastic, fits, os.cpu_count() or 1), now, grow_after=config.grow_after,
                     shrink_after=config.shrink_after)
        lasted = next_growth(groups, now, config.grow_after)
        self.plan_at = lasted if lasted is not None else NEVER
        return moves

    def next_wakeup(self, now: float, config: PoolConfig, desired: Mapping[str, tuple[Group, int]]) -> float | None:
        moments = [self.usage.next_sample if self.watching(config, desired) else None,
                   self.plan_at if now < self.plan_at < NEVER else None]
        return min((m for m in moments if m is not None), default=None)
