"""What the pool reports, as plain values: its start, the rows of --status for every slot, group and helper."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Collection, Iterable, Mapping

from entrypoint import monitoring
from entrypoint.memory import MemoryLimit, format_bytes
from entrypoint.pool import SlotHistory, SlotKey, Worker
from entrypoint.poolconfig import Group, PoolConfig
from entrypoint.preload import Setup, Template

# Why a worker exited. The pool asked it to stop: `stopped` (in its grace) or `killed` (KILLed after
# it); it was not asked: `exited` (status 0), `failed` (another status), `signaled` (a signal the
# pool did not send: kill -9, the OOM killer). The last three are restarts.
UNASKED_EXITS = ("exited", "failed", "signaled")


def startup_lines(pool_id: str, config: PoolConfig, desired: Mapping[str, tuple[Group, int]], term_timeout: float,
                  term_from_platform: bool, limit: MemoryLimit) -> list[str]:
    """What the pool says as it starts: its groups and grace, its memory limit, and what `auto` runs without one."""
    total = sum(count for _, count in desired.values())
    env = f" ({config.app_env})" if config.app_env else ""
    lines = [
        f"pool {pool_id}: {len(desired)} group(s), {total} worker(s) from "
        f"{config.source}{env}; term timeout {term_timeout:g}s"
        + ("; TERM comes from the platform" if term_from_platform else "")
    ]
    if limit.bytes:
        lines.append(f"memory limit: {format_bytes(limit.bytes)} from {limit.source}")
    else:
        lines.append(f"memory limit: none ({limit.source})")
    for name, (spec, count) in desired.items():
        if spec.auto and limit.bytes is None:
            lines.append(f"auto: {name} runs {count} workers (no memory limit known: 2 x CPUs + 1, "
                         f"within {spec.min_count}-{spec.max_count})")
    return lines


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


def exit_reason(status: int, asked: bool) -> str:
    """Why a worker with this wait status exited (see UNASKED_EXITS)."""
    if asked:
        return "killed" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL else "stopped"
    if os.WIFSIGNALED(status):
        return "signaled"
    return "exited" if os.waitstatus_to_exitcode(status) == 0 else "failed"


def backlog_entry(reading: monitoring.Reading | None, now: float) -> dict | None:
    """A group's backlog for --status: None when unknown (not an RQ group, or nothing read yet)."""
    if reading is None:
        return None
    return {"waiting": reading.waiting, "oldest": reading.oldest, "age": round(now - reading.read_at, 1),
            "stale": monitoring.stale(reading, now)}


def group_entries(wanted: Mapping[str, tuple[Group, int]], workers: Iterable[Worker], looping: Collection[str],
                  readings: Mapping[str, monitoring.Reading], shares: Callable[[str], dict[str, float | None] | None],
                  now: float) -> dict[str, dict]:
    """One entry per group: its workers running and wanted, how many are busy now and their share of
    busy time (None where its command cannot tell), its memory, whether it is crash-looping, its
    backlog, an elastic group's bounds, and what its workers run."""
    running: dict[str, list[Worker]] = {}
    for worker in workers:
        if worker.stop_sent is None:
            running.setdefault(worker.group, []).append(worker)
    entries = {}
    for name, (spec, count) in wanted.items():
        mine = running.get(name, [])
        utilization = shares(name)
        entries[name] = {
            "running": len(mine), "wanted": count, "crash_looping": name in looping,
            "busy": sum(bool(w.busy) for w in mine) if utilization is not None else None,
            "utilization": utilization,
            "memory": sum(w.pss or 0 for w in mine),
            "backlog": backlog_entry(readings.get(name), now),
            "elastic": {"min": spec.min_count, "max": spec.max_count} if spec.elastic else None,
            # what its workers run: a command line (exec'd, or run in a fork of the template), or a callable
            "command": list(spec.argv) if spec.call is None else None, "call": spec.call, "forked": spec.forked,
        }
    return entries


def monitor_row(monitors: monitoring.Monitoring, memory: int, now: float) -> dict | None:
    """The monitor process's row: None when the pool needs none."""
    current = monitors.current
    if current is None and monitors.setup is None:
        return None
    history = monitors.history
    if current is not None:
        state = "running"
    elif history.not_before > now:
        state = f"backoff {history.not_before - now:.0f}s"
    else:
        state = "starting"
    return {
        "pid": current.pid if current else None, "state": state,
        "uptime": round(now - current.started, 1) if current else None,
        "restarts": history.restarts, "last_exit": history.last_exit,
        "memory": memory if current else None,
        "error": monitors.error, "metrics": monitors.metrics,
    }
