"""What the pool reports: the rows of --status for every slot and for the preload template, as plain values."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

from entrypoint.pool import SlotHistory, SlotKey, Worker
from entrypoint.poolconfig import Group
from entrypoint.preload import Setup, Template


def slot_rows(wanted: Mapping[str, tuple[Group, int]], desired: Mapping[str, tuple[Group, int]],
              workers: Iterable[Worker], history: Mapping[SlotKey, SlotHistory], forking: Collection[SlotKey],
              now: float) -> list[dict]:
    """One row per slot that is wanted now or has a worker, in group and slot order."""
    running = {w.key: w for w in workers}
    keys = set(running) | {(name, slot) for name, (_, count) in wanted.items() for slot in range(1, count + 1)}
    rows = []
    for key in sorted(keys):
        worker = running.get(key)
        spec = worker.spec if worker is not None else desired[key[0]][0]
        past = history.get(key, SlotHistory())
        if worker is not None:
            state = "stopping" if worker.stop_sent is not None else "running"
        elif past.not_before > now:
            state = f"backoff {past.not_before - now:.0f}s"
        else:
            state = "forking" if key in forking else "starting"
        rows.append({
            "group": key[0], "slot": key[1], "pid": worker.pid if worker else None,
            "state": state, "uptime": round(now - worker.started, 1) if worker else None,
            "restarts": past.restarts, "last_exit": past.last_exit,
            "memory": worker.pss if worker else None,
            "forked": spec.forked,
            "busy": worker.busy if worker else None,
        })
    return rows


def group_rows(desired: Mapping[str, tuple[Group, int]], workers: Iterable[Worker],
               shares: Callable[[str], dict[str, float | None] | None]) -> dict[str, dict]:
    """Per group: workers wanted and running, how many are busy now and their share of busy time
    (None where the command cannot tell), memory, and an elastic group's bounds."""
    running: dict[str, list[Worker]] = {}
    for worker in workers:
        if worker.stop_sent is None:
            running.setdefault(worker.group, []).append(worker)
    rows = {}
    for name, (spec, count) in desired.items():
        mine = running.get(name, [])
        utilization = shares(name)
        rows[name] = {
            "wanted": count, "running": len(mine),
            "busy": sum(bool(w.busy) for w in mine) if utilization is not None else None,
            "utilization": utilization,
            "memory": sum(w.pss or 0 for w in mine),
            "elastic": {"min": spec.min_count, "max": spec.max_count} if spec.elastic else None,
            # what its workers run: a command line (exec'd, or run in a fork of the template), or a callable
            "command": list(spec.argv) if spec.call is None else None, "call": spec.call, "forked": spec.forked,
        }
    return rows


def template_row(template: Template | None, setup: Setup | None, history: SlotHistory, memory: int,
                 now: float) -> dict | None:
    """The preload template's row: None when every group execs its command."""
    if template is None and setup is None:
        return None
    if template is not None:
        state = "ready" if template.ready else "importing"
    elif history.not_before > now:
        state = f"backoff {history.not_before - now:.0f}s"
    else:
        state = "starting"
    return {
        "pid": template.pid if template else None, "generation": template.generation if template else None,
        "state": state, "uptime": round(now - template.started, 1) if template else None,
        "restarts": history.restarts, "last_exit": history.last_exit,
        "memory": memory if template else None,
        "modules": list(setup.modules + setup.calls) if setup else [],
    }


def work_line(groups: Mapping[str, dict]) -> str | None:
    """The minute's summary of the work: each group that can tell, busy now and over 1 and 5 minutes."""
    parts = []
    for name, group in groups.items():
        shares = group["utilization"]
        if shares is None:
            continue
        over = ", ".join(f"{100 * share:.0f}% over {label.replace('m', ' min')}"
                         for label, share in shares.items() if share is not None)
        parts.append(f"{name} {group['busy']}/{group['running']} busy" + (f" ({over})" if over else ""))
    return "work: " + "; ".join(parts) if parts else None
