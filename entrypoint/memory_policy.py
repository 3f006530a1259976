"""The pool's memory policy: when to measure, which worker to recycle, how many `auto` workers fit."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from typing import NamedTuple

from entrypoint import memory, reaper
from entrypoint.pool import Worker
from entrypoint.poolconfig import MAX_COUNT, Group, PoolConfig

# Memory is sampled every pool.memory_interval while ceilings, `auto` or the pool guard need
# fresh numbers, else only for the periodic summary line.
SUMMARY_SECONDS = 60.0
# A worker's footprint counts for `auto` once it has been sampled this many times.
WARM_SAMPLES = 3
# A worker whose last sample rose this much above its peak is still growing: no group grows on it.
STILL_GROWING = 1.05


class Recycle(NamedTuple):
    """Stop this worker gracefully (it is replaced): it, or the pool, uses too much."""

    worker: Worker
    reason: str


class Resize(NamedTuple):
    """An `auto` group's new count, and the numbers behind it for the log."""

    group: str
    count: int
    reason: str


def over_ceiling(workers: Iterable[Worker]) -> list[Recycle]:
    """Workers above their group's max_memory that have not been asked to stop yet."""
    return [
        Recycle(w, f"uses {memory.format_bytes(w.pss or 0)}, over its max_memory "
                   f"{memory.format_bytes(w.spec.max_memory)}")
        for w in workers
        if w.spec.max_memory and w.stop_sent is None and (w.pss or 0) > w.spec.max_memory
    ]


def guard_victim(workers: Collection[Worker], total: int, limit: int | None, headroom: float) -> Recycle | None:
    """The largest worker once the pool nears the limit: never leave it to the kernel's OOM killer.
    One at a time: nothing more while a recycled worker is still stopping."""
    if limit is None or any(w.stop_sent is not None for w in workers):
        return None
    usage = {w.pid: w.pss or 0 for w in workers}
    victim = memory.pick_for_pool_guard(usage, total, limit, memory.guard_fraction(headroom))
    if victim is None:
        return None
    worker = next(w for w in workers if w.pid == victim)
    return Recycle(worker, f"the pool uses {memory.format_bytes(total)} of {memory.format_bytes(limit)}: "
                           "recycling the largest worker")


def cost(worker: Worker) -> int:
    """What one more worker like this one needs, at its peak: its PSS (its children's included); for
    a forked worker what it holds alone, idle at its peak, plus what its children (RQ's work-horse)
    hold alone at theirs. (It shares the template's pages with every sibling, and its PSS depends on
    how many share: a peak taken while few did would undercount what fits. And while a horse runs,
    the pages it shares with its worker are private to neither, though they exist once for it.)"""
    return worker.peak_private + worker.peak_children if worker.spec.forked else worker.peak_pss


class Room(NamedTuple):
    """What a set of workers needs, for planning how many of them fit."""

    per_worker: int  # the most one of them needs at its peak
    rest_at_peak: int  # everything else in the pool, each other worker at its peak


def room(mine: Collection[Worker], workers: Collection[Worker], base: int) -> Room | None:
    """How much `mine` (workers of the groups being planned) need each, and everything else at its
    peak, on top of `base` (the manager, our helpers, the template's pages once); None while none
    of them has been measured enough to tell."""
    warm = [w for w in mine if w.samples >= WARM_SAMPLES]
    if not warm:
        return None
    planned = {id(w) for w in mine}
    return Room(memory.steady_per_worker([cost(w) for w in warm]),
                base + sum(cost(w) for w in workers if id(w) not in planned))


def elastic_room(desired: Mapping[str, tuple[Group, int]], workers: Collection[Worker], base: int,
                 limit: int | None, headroom: float) -> int | None:
    """How many workers the elastic groups can share in memory, the rest at its peaks; None while
    it cannot be told (no limit known, or no elastic worker measured enough)."""
    if limit is None:
        return None
    names = {name for name, (spec, _) in desired.items() if spec.elastic}
    needs = room([w for w in workers if w.group in names and w.stop_sent is None], workers, base)
    if needs is None:
        return None
    return memory.auto_worker_count(limit, headroom, needs.rest_at_peak, needs.per_worker, 0, MAX_COUNT)


def auto_sizes(desired: Mapping[str, tuple[Group, int]], workers: Collection[Worker], base: int,
               limit: int | None, headroom: float) -> list[Resize]:
    """`auto` groups: as many workers as fit under the limit with headroom, judged by warm workers' peaks.

    Every worker counts at its peak (the rest of the pool too), so the coming and going of jobs
    cannot make a group flap between two counts. A group shrinks as soon as its warm workers show
    it does not fit. It grows only once every slot is filled, warm and no worker is still
    growing, and at most doubles at a time: a count taken before any job ran knows nothing of the
    work-horses' memory, and the next samples, with jobs, can still stop it short of the limit.
    """
    if limit is None:
        return []
    resized = []
    for name, (spec, count) in desired.items():
        if not spec.auto:
            continue
        mine = [w for w in workers if w.group == name and w.stop_sent is None]
        needs = room(mine, workers, base)
        if needs is None:
            continue
        fits = memory.auto_worker_count(limit, headroom, needs.rest_at_peak, needs.per_worker, spec.min_count,
                                        spec.max_count)
        settled = (sum(w.samples >= WARM_SAMPLES for w in mine) >= count
                   and not any(w.growing for w in mine))
        if fits < count:
            target = fits
        elif fits > count and settled:
            target = min(fits, max(2 * count, spec.min_count))
        else:
            continue
        resized.append(Resize(name, target, (
            f"auto: {name} {count}->{target} workers ({memory.format_bytes(needs.per_worker)} per worker at "
            f"peak{', not shared with the template' if spec.forked else ''}, "
            f"{memory.format_bytes(needs.rest_at_peak)} for the rest, limit {memory.format_bytes(limit)} "
            f"x {headroom:g}: {fits} fit)")))
    return resized


class MemoryWatch:
    """What the pool measured last, and when it measures next."""

    def __init__(self, limit: memory.MemoryLimit, now: float) -> None:
        self.limit = limit
        self.next_sample = 0.0
        self.next_summary = now + SUMMARY_SECONDS
        self.manager_pss = 0
        self.helpers: dict[str, memory.Footprint] = {}  # our helper processes, by kind: template, monitor
        self.oom_kills_at_start = self.oom_kills_total()

    def check(self, now: float, config: PoolConfig, desired: Mapping[str, tuple[Group, int]],
              workers: Collection[Worker], helpers: Mapping[str, Iterable[int]],
              stopping: bool) -> list[Recycle | Resize | str]:
        """Measure when due, then what to do about it: recycles, resizes and the minute's summary."""
        if now < self.next_sample:
            return []
        per_worker_rules = any(g.auto or g.max_memory for g, _ in desired.values())
        watched = self.limit.bytes is not None or per_worker_rules
        self.next_sample = now + (config.memory_interval if watched else SUMMARY_SECONDS)
        summary_due = now >= self.next_summary
        if not (summary_due or per_worker_rules or self.near_limit(config.memory_headroom)):
            return []
        self.measure(workers, helpers)
        if stopping:
            return []
        total = self.total(workers)
        decisions: list[Recycle | Resize | str] = [*over_ceiling(workers)]
        victim = guard_victim(workers, total, self.limit.bytes, config.memory_headroom)
        if victim is not None:
            decisions.append(victim)
        decisions.extend(auto_sizes(desired, workers, self.base(), self.limit.bytes, config.memory_headroom))
        if summary_due:
            self.next_summary = now + SUMMARY_SECONDS
            decisions.append(self.summary(workers))
        return decisions

    def near_limit(self, headroom: float) -> bool:
        """Per-worker PSS costs a /proc walk: skip it while one cgroup read shows plenty of room."""
        limit = self.limit
        if limit.bytes is None or limit.cgroup_dir is None or limit.cgroup_version is None:
            return limit.bytes is not None
        usage = memory.read_usage(limit.cgroup_version, limit.cgroup_dir)
        return usage is None or usage >= headroom * limit.bytes

    def measure(self, workers: Iterable[Worker], helpers: Mapping[str, Iterable[int]]) -> None:
        """Every worker with its children (one walk over /proc), our helpers by kind, and the manager."""
        index = reaper.children_index(reaper.process_table())
        for worker in workers:
            found = memory.tree_footprint(worker.pid, index)
            worker.pss = None if found is None else found.pss
            if found is not None:
                before = cost(worker)
                worker.private = found.private
                worker.peak_pss = max(worker.peak_pss, found.pss)
                worker.peak_private = max(worker.peak_private, found.own.private)
                worker.peak_children = max(worker.peak_children, found.below.private)
                worker.growing = worker.samples > 0 and cost(worker) > before * STILL_GROWING
                worker.samples += 1
        self.helpers = {kind: sum((memory.read_footprint(pid) or memory.Footprint(0, 0) for pid in pids),
                                  memory.Footprint(0, 0))
                        for kind, pids in helpers.items()}
        self.manager_pss = memory.read_pss(os.getpid()) or 0

    def helper_pss(self, kind: str) -> int:
        found = self.helpers.get(kind)
        return found.pss if found else 0

    def total(self, workers: Iterable[Worker]) -> int:
        """Everything the pool uses: the manager's, our helpers' and every worker's PSS."""
        return self.manager_pss + sum(f.pss for f in self.helpers.values()) + sum(w.pss or 0 for w in workers)

    def base(self) -> int:
        """What the pool uses whatever its worker count, for planning: the manager and our helpers, the
        template with every page it holds, since forked workers share those (each worker's cost is
        only what it holds alone)."""
        template = self.helpers.get("template", memory.Footprint(0, 0))
        return self.manager_pss + sum(f.pss for f in self.helpers.values()) - template.pss + template.rss

    def summary(self, workers: Collection[Worker]) -> str:
        measured = [w for w in workers if w.pss is not None]
        total = self.total(workers)
        line = f"memory: {len(measured)} worker(s) and manager use {memory.format_bytes(total)}"
        if self.limit.bytes:
            line += f" of {memory.format_bytes(self.limit.bytes)} ({100 * total / self.limit.bytes:.0f}%)"
        if measured:
            largest = max(measured, key=lambda w: w.pss or 0)
            line += f"; largest {largest.name} {memory.format_bytes(largest.pss or 0)}"
        oom_kills = self.oom_kills()
        if oom_kills:
            line += f"; the kernel OOM-killed {oom_kills} process(es) in this container"
        return line

    def oom_kills_total(self) -> int:
        if self.limit.cgroup_dir is None or self.limit.cgroup_version is None:
            return 0
        return memory.read_oom_kills(self.limit.cgroup_version, self.limit.cgroup_dir)

    def oom_kills(self) -> int:
        """OOM kills in our cgroup since the pool started."""
        return self.oom_kills_total() - self.oom_kills_at_start
