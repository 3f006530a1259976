"""Prometheus metrics: the pool's --status as a text exposition, served over HTTP by the monitor process.

Imported only when a metrics port is set, in the monitor, never in PID 1. Each scrape asks the pool's
control socket for `status` (the request --status makes, memory measured then), so what Prometheus
sees is what `entrypoint --status --json` says at that moment.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from entrypoint.control import request
from entrypoint.report import UNASKED_EXITS

# A scrape waits this long for the pool; Prometheus' own default timeout is 10 s.
STATUS_TIMEOUT = 5.0

Family = GaugeMetricFamily | CounterMetricFamily


def families(status: dict | None) -> list[Family]:
    """The metrics of one --status reply; None (the pool did not answer) leaves entrypoint_pool_up 0."""
    up = GaugeMetricFamily("entrypoint_pool_up", "1 when the pool answered this scrape on its control socket",
                           labels=["pool_id"])
    if status is None:
        up.add_metric([""], 0)
        return [up]
    up.add_metric([status["pool_id"]], 1)
    groups: dict[str, dict] = status.get("groups", {})

    def per_group(name: str, text: str, value_of, kind=GaugeMetricFamily) -> Family:
        family = kind(name, text, labels=["group"])
        for group, entry in groups.items():
            value = value_of(entry)
            if value is not None:
                family.add_metric([group], value)
        return family

    memory_by_group: dict[str, int] = {}
    for row in status["workers"]:
        memory_by_group[row["group"]] = memory_by_group.get(row["group"], 0) + (row["memory"] or 0)
    group_memory = GaugeMetricFamily("entrypoint_group_memory_bytes", "PSS of the group's workers, their "
                                     "children included", labels=["group"])
    for group, used in sorted(memory_by_group.items()):
        group_memory.add_metric([group], used)
    exits = CounterMetricFamily("entrypoint_worker_exits", "Worker exits since the pool started, by reason: "
                                "stopped or killed (after the pool asked), exited (status 0), failed (another "
                                "status) or signaled (a signal the pool did not send)", labels=["group", "reason"])
    restarts = CounterMetricFamily("entrypoint_worker_restarts", "Workers that exited without being asked "
                                   "and were replaced", labels=["group"])
    for group, reasons in status.get("exits", {}).items():
        for reason, count in sorted(reasons.items()):
            exits.add_metric([group, reason], count)
        restarts.add_metric([group], sum(n for reason, n in reasons.items() if reason in UNASKED_EXITS))
    helpers = CounterMetricFamily("entrypoint_helper_restarts", "Restarts of the pool's helper processes",
                                  labels=["process"])
    memory = status["memory"]
    processes = GaugeMetricFamily("entrypoint_process_memory_bytes", "PSS of the manager and its helper "
                                  "processes", labels=["process"])
    processes.add_metric(["manager"], memory["manager"])
    for helper in ("template", "monitor"):
        row = status.get(helper)
        if row is not None:
            helpers.add_metric([helper], row["restarts"])
            processes.add_metric([helper], memory.get(helper) or 0)
    utilization = GaugeMetricFamily("entrypoint_utilization_ratio", "Share of the time a group's workers were "
                                    "busy, over the window", labels=["group", "window"])
    for group, entry in groups.items():
        for window, ratio in _windows(entry.get("utilization")):
            utilization.add_metric([group, window], ratio)
    result = [
        up,
        per_group("entrypoint_workers_running", "Workers running (not stopping)", lambda e: e["running"]),
        per_group("entrypoint_workers_wanted", "Workers the group should have now", lambda e: e["wanted"]),
        per_group("entrypoint_workers_busy", "Workers running a job, where known",
                  lambda e: e.get("busy") if isinstance(e.get("busy"), int) else None),
        utilization,
        per_group("entrypoint_group_crash_looping", "1 while the group is crash-looping",
                  lambda e: int(bool(e.get("crash_looping")))),
        exits, restarts, helpers,
        per_group("entrypoint_backlog_waiting_jobs", "Jobs waiting in the group's queues, as last read",
                  lambda e: e["backlog"]["waiting"] if e.get("backlog") else None),
        per_group("entrypoint_backlog_oldest_seconds", "How long the oldest waiting job had waited, as last read",
                  lambda e: e["backlog"]["oldest"] if e.get("backlog") else None),
        per_group("entrypoint_backlog_age_seconds", "Seconds since the backlog was last read (stale when Redis "
                  "does not answer)", lambda e: e["backlog"]["age"] if e.get("backlog") else None),
        GaugeMetricFamily("entrypoint_pool_memory_bytes", "PSS of the whole pool: workers, manager, helpers",
                          value=memory["total"]),
        processes,
        group_memory,
        CounterMetricFamily("entrypoint_oom_kills", "Processes the kernel OOM-killed in the pool's cgroup since "
                            "it started", value=memory["oom_kills"]),
    ]
    if memory["limit"] is not None:
        result.append(GaugeMetricFamily("entrypoint_memory_limit_bytes", "The memory limit the pool works within",
                                        value=memory["limit"]))
    return result


def _windows(utilization: object) -> Iterator[tuple[str, float]]:
    """A group's utilization as (window, ratio): a mapping of windows (`1m`, `5m`), or one ratio."""
    if isinstance(utilization, dict):
        for window, ratio in utilization.items():
            if isinstance(ratio, int | float):
                yield str(window), float(ratio)
    elif isinstance(utilization, int | float):
        yield "", float(utilization)


class PoolCollector(Collector):
    def __init__(self, socket_path: str | None) -> None:
        self.socket_path = socket_path

    def collect(self) -> Iterator[Family]:
        status = None
        if self.socket_path is not None:
            try:
                status = request(self.socket_path, {"command": "status"}, timeout=STATUS_TIMEOUT)
            except (OSError, ValueError):
                status = None
        if status is not None and "error" in status:
            status = None
        yield from families(status)


def serve(port: int, socket_path: str | None) -> object:
    """Listen on every address at `port` in a thread of this process; OSError when the port is taken."""
    registry = CollectorRegistry()
    registry.register(PoolCollector(socket_path))
    server, _thread = start_http_server(port, registry=registry)
    return server
