"""Health: the first thing wrong with a running pool, as one line, judged from what the supervisor already knows."""

from __future__ import annotations

from collections.abc import Mapping

from entrypoint.memory import format_bytes
from entrypoint.pool import SlotHistory, SlotKey, crash_looping


def looping_slots(
    counts: Mapping[str, int],
    uptimes: Mapping[SlotKey, float],
    history: Mapping[SlotKey, SlotHistory],
    reset_after: float,
) -> list[tuple[SlotKey, SlotHistory]]:
    """Wanted slots still in a crash loop, in group order.

    A slot's failures are counted at each exit, so a loop ends in the history only when a worker
    that lived long enough exits: one running for `reset_after` seconds has already ended it.
    """
    found = []
    for name, count in counts.items():
        for slot in range(1, count + 1):
            record = history.get((name, slot))
            if record is not None and crash_looping(record) and uptimes.get((name, slot), 0.0) < reset_after:
                found.append(((name, slot), record))
    return found


def memory_problem(used: int, limit: int | None, guard: float, usage_now: int | None) -> str | None:
    """The pool over its guard (the point where it recycles its largest worker), else None.

    `used` is the PSS total of the last measurement. The pool stops measuring while its cgroup
    shows plenty of room, so `usage_now`, the cgroup's own count read now, under the guard
    clears an older total.
    """
    if limit is None or used < guard * limit:
        return None
    if usage_now is not None and usage_now < guard * limit:
        return None
    return (f"memory: the pool uses {format_bytes(used)} of its {format_bytes(limit)} limit "
            f"({100 * used / limit:.0f}%), over the guard at {100 * guard:g}%")


def first_problem(
    stopping: bool,
    looping: list[tuple[SlotKey, SlotHistory]],
    memory: str | None,
) -> str | None:
    """What --health reports: None when healthy, else the first thing wrong, as one line."""
    if stopping:
        return "the pool is stopping"
    if memory is not None:
        return memory  # first: running out of memory is what makes workers die
    if looping:
        (name, slot), record = looping[0]
        others = [group for group in dict.fromkeys(group for (group, _), _ in looping) if group != name]
        line = (f"group {name} is crash-looping: {name}.{slot} failed {record.failures} times in a row, "
                f"last: {record.last_exit or 'unknown'}")
        if others:
            line += f" (also crash-looping: {', '.join(others)})"
        return line
    return None
