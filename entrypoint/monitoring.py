"""The monitor process, the manager's side: whether one is needed, starting and replacing it, the backlog it reads.

The monitor (`python -m entrypoint.monitor`) holds redis-py and prometheus_client, which PID 1 never
imports. It sends one message per interval; the manager reads it only when its channel is readable
and never waits for it, so a Redis that is down or slow changes nothing here but how old the last
reading is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import NamedTuple

from entrypoint import channel as link
from entrypoint import pool, reaper
from entrypoint.console import Log, PrefixedOutput
from entrypoint.elastic import Backlog
from entrypoint.pool import Backoff, SlotHistory
from entrypoint.poolconfig import PoolConfig
from entrypoint.rqworker import rq_worker_url
from entrypoint.spawn import SpawnError

MONITOR_ARGV = (sys.executable, "-m", "entrypoint.monitor")
INTERVAL = 2.0  # seconds between two readings of the backlog, and two updates of the fleet entry
# A reading older than this is stale: Redis (or the monitor) has not answered for a few rounds.
STALE_AFTER = 3 * INTERVAL
# The fleet entry outlives a few missed updates, and a pool gone without a word drops out after it.
FLEET_TTL = 5 * INTERVAL
# A retired monitor exits as soon as its Redis calls return (each fails within a second); one still
# there after this long is wedged, and a stopping pool does not wait for it: KILL.
RETIRE_GRACE = 5.0


def parse_port(text: str, what: str) -> int:
    """--metrics-port, METRICS_PORT: a TCP port, or ValueError naming `what`."""
    word = text.strip()
    if word.isdigit() and 1 <= int(word) <= 65535:
        return int(word)
    raise ValueError(f"{what}: expected a port number from 1 to 65535, got {text!r}")


class GroupQueues(NamedTuple):
    """An RQ group: where its workers find Redis, and the queues they serve ('*': every queue)."""

    name: str
    url: str
    queues: tuple[str, ...]


class Setup(NamedTuple):
    """What the monitor is told to do."""

    pool_id: str
    groups: tuple[GroupQueues, ...]
    fleet_url: str | None  # where to publish the pool's fleet entry; None: not published
    metrics_port: int | None
    socket_path: str | None  # the control socket, which metrics ask for the pool's status

    def message(self) -> dict:
        return {"setup": {
            "pool_id": self.pool_id, "interval": INTERVAL, "fleet_ttl": FLEET_TTL,
            "groups": [{"name": g.name, "url": g.url, "queues": list(g.queues)} for g in self.groups],
            "fleet_url": self.fleet_url, "metrics_port": self.metrics_port, "socket": self.socket_path,
        }}


def setup_for(config: PoolConfig, env: Mapping[str, str], pool_id: str, metrics_port: int | None,
              socket_path: str | None) -> Setup | None:
    """The monitor a pool needs: for its RQ groups' backlog, its fleet entry (a $REDIS_URL, and
    pool.fleet not false) or its metrics port; None when it needs none."""
    groups = []
    for group in config.groups:
        if group.call is not None:
            continue  # a callable's queues, if any, are its own business
        url = rq_worker_url(group.argv, {**env, **dict(group.env)})
        if url is not None:
            groups.append(GroupQueues(group.name, url, group.queues))
    fleet_url = env.get("REDIS_URL") if config.fleet else None
    if not (groups or fleet_url or metrics_port):
        return None
    return Setup(pool_id, tuple(groups), fleet_url or None, metrics_port, socket_path)


class Reading(NamedTuple):
    """A group's backlog as the monitor last read it, on the manager's clock."""

    waiting: int
    oldest: float | None  # seconds the oldest waiting job had waited when read
    read_at: float
    since: float | None  # since when jobs have waited in its queues; None while empty


def updated(before: Reading | None, waiting: int, oldest: float | None, now: float) -> Reading:
    """The new reading. Jobs have been waiting since the pool first saw them, or since the oldest
    of them was enqueued if that is earlier: it is still waiting, so the queue was never empty
    since then, and a backlog that began between two readings has lasted that long already."""
    if not waiting:
        since = None
    else:
        seen = before.since if before is not None and before.since is not None else now
        since = seen if oldest is None else min(seen, now - oldest)
    return Reading(waiting, oldest, now, since)


def stale(reading: Reading, now: float) -> bool:
    return now - reading.read_at > STALE_AFTER


def for_elastic(readings: Mapping[str, Reading], now: float) -> dict[str, Backlog]:
    """The readings as elastic.plan takes them. A stale one is left out: a group's backlog is then
    unknown, and no slot moves on numbers Redis can no longer confirm."""
    return {name: Backlog(r.waiting, r.oldest, r.read_at if r.since is None else r.since)
            for name, r in readings.items() if not stale(r, now)}


def summary(readings: Mapping[str, Reading], now: float) -> str | None:
    """The backlog part of the minute's summary line: `backlog: crunch_data 412 waiting (oldest 40s), ...`."""
    if not readings:
        return None
    parts = []
    for name, reading in readings.items():
        part = f"{name} {reading.waiting} waiting"
        if reading.oldest is not None:
            part += f" (oldest {reading.oldest:.0f}s)"
        if stale(reading, now):
            part += f" [stale: read {now - reading.read_at:.0f}s ago]"
        parts.append(part)
    return "backlog: " + ", ".join(parts)


class Monitor:
    """One monitor process and its channel."""

    __slots__ = ("channel", "closed", "kill_at", "pid", "started")

    def __init__(self, pid: int, channel: socket.socket, started: float) -> None:
        self.pid = pid
        self.channel = channel
        self.started = started
        self.kill_at: float | None = None  # retired: KILLed if still there then
        self.closed = False  # it closed its end: no more messages

    def __repr__(self) -> str:
        return f"Monitor(pid {self.pid})"

    def fileno(self) -> int:
        return self.channel.fileno()


class Heard(NamedTuple):
    """What the monitor's messages asked of the manager: lines to log; `ticked` when a round ended."""

    warnings: list[str]
    notes: list[str]
    ticked: bool


class Monitoring:
    """The pool's monitor process (at most one alive, plus one retiring) and the latest of what it read."""

    def __init__(self, env: Mapping[str, str], log: Log, backoff: Backoff, output: PrefixedOutput | None) -> None:
        self.env = dict(env)
        self.log = log
        self.backoff = backoff
        self.output = output  # the pool's prefixed output, when on: the monitor's lines say `monitor`
        self.setup: Setup | None = None
        self.current: Monitor | None = None
        self.retired: list[Monitor] = []
        self.history = SlotHistory()
        self.readings: dict[str, Reading] = {}
        self.error: str | None = None  # why the last round read nothing (Redis down, slow, refusing)
        self.metrics: str | None = None  # where the metrics are served, or why they are not

    # -- starting, reconfiguring and retiring ---------------------------------------------------

    def configure(self, setup: Setup | None, now: float) -> None:
        """Move to a new setup: start a monitor, tell the running one, or retire it when none is needed."""
        self.setup = setup
        if setup is None:
            self.retire(now)
            self.readings.clear()
            return
        names = {g.name for g in setup.groups}
        self.readings = {name: r for name, r in self.readings.items() if name in names}
        if self.current is not None:
            self.send(setup.message(), essential=True)
        elif self.history.not_before <= now:
            self.start(now)

    def start(self, now: float) -> None:
        assert self.setup is not None
        output = self.output.open("monitor") if self.output else None
        try:
            child, channel = link.spawn_helper(MONITOR_ARGV, self.env, output)
        except (OSError, SpawnError) as error:
            self.log.error(f"cannot start the monitor: {error}")
            self.history = pool.after_spawn_failure(self.history, now, self.backoff, str(error), hopeless=False)
            return
        finally:
            if output is not None:
                os.close(output)
        self.current = Monitor(child.pid, channel, now)
        self.metrics = None  # until this one says where it serves them
        self.send(self.setup.message(), essential=True)
        what = [f"backlog of {', '.join(g.name for g in self.setup.groups)}"] if self.setup.groups else []
        what += ["the fleet entry"] if self.setup.fleet_url else []
        what += [f"metrics on port {self.setup.metrics_port}"] if self.setup.metrics_port else []
        self.log.info(f"monitor pid {child.pid}: {', '.join(what)}")

    def retire(self, now: float) -> None:
        """Closing its channel ends the monitor: it takes the fleet entry away and exits."""
        monitor = self.current
        if monitor is None:
            return
        monitor.kill_at = now + RETIRE_GRACE
        monitor.closed = True
        monitor.channel.close()
        self.current = None
        self.retired.append(monitor)

    def alive(self) -> list[Monitor]:
        return [m for m in (self.current, *self.retired) if m is not None]

    def listening(self) -> list[Monitor]:
        return [m for m in self.alive() if not m.closed]

    def owner(self, pid: int) -> Monitor | None:
        return next((m for m in self.alive() if m.pid == pid), None)

    def publishing(self) -> bool:
        return self.current is not None and self.setup is not None and self.setup.fleet_url is not None

    # -- talking to it --------------------------------------------------------------------------

    def send(self, message: dict, *, essential: bool = False) -> None:
        """Never waits. A snapshot that finds the monitor's queue full is dropped (the next one
        replaces it); a setup it cannot take means the monitor is wedged: KILL, and a new one gets it."""
        monitor = self.current
        if monitor is None:
            return
        try:
            link.send(monitor.channel, message)
        except BlockingIOError:
            if essential:
                self.log.warning(f"monitor pid {monitor.pid} is not reading its messages: KILL")
                reaper.send([monitor.pid], signal.SIGKILL)
        except OSError:
            pass  # it is gone: its exit brings the replacement

    def read(self, monitor: Monitor, now: float) -> Heard:
        messages, closed = link.receive(monitor.channel)
        monitor.closed = monitor.closed or closed
        heard = Heard([], [], ticked=False)
        for message in messages:
            if "metrics" in message:
                self.metrics = str(message["metrics"])
                heard.notes.append(self.metrics)
            if "metrics_error" in message:
                self.metrics = str(message["metrics_error"])
                heard.warnings.append(self.metrics)
            if "backlog" in message:
                self.on_round(message, now, heard)
        return heard._replace(ticked=any("backlog" in m for m in messages))

    def on_round(self, message: dict, now: float, heard: Heard) -> None:
        wanted = {g.name for g in self.setup.groups} if self.setup else set()
        for name, found in message["backlog"].items():
            if name in wanted:
                self.readings[name] = updated(self.readings.get(name), int(found["waiting"]),
                                              found.get("oldest"), now)
        error = message.get("error")
        if error and not self.error:
            heard.warnings.append(f"monitor: {error}; the backlog shown is the last one read")
        elif self.error and not error:
            heard.notes.append("monitor: Redis answers again")
        self.error = error

    # -- its exit -------------------------------------------------------------------------------

    def on_exit(self, monitor: Monitor, status: int, now: float, jitter: float) -> str | None:
        """Forget a monitor that exited; a warning line when it was not asked to go."""
        with contextlib.suppress(OSError):
            monitor.channel.close()
        if monitor in self.retired:
            self.retired.remove(monitor)
            return None
        self.current = None
        lived = now - monitor.started
        self.history = pool.after_exit(self.history, lived, expected=False, now=now, backoff=self.backoff,
                                       jitter=jitter, description=reaper.describe(status))
        wait = max(0.0, self.history.not_before - now)
        return (f"monitor pid {monitor.pid} {reaper.describe(status)} after {lived:.1f}s; workers are not "
                "affected; a new monitor " + (f"in {wait:.1f}s" if wait else "now"))

    def due_restart(self, now: float) -> bool:
        return self.setup is not None and self.current is None and self.history.not_before <= now

    def kill_overdue(self, now: float) -> None:
        for monitor in self.retired:
            if monitor.kill_at is not None and monitor.kill_at <= now:
                self.log.warning(f"monitor pid {monitor.pid} still running {RETIRE_GRACE:g}s after it was "
                                 "retired: KILL")
                reaper.send([monitor.pid], signal.SIGKILL)
                monitor.kill_at = None

    def next_wakeup(self, *, restarting: bool) -> float | None:
        """When a retired monitor is overdue, or (restarting: the pool still wants a monitor) when
        a dead one's backoff ends."""
        moments = [m.kill_at for m in self.retired if m.kill_at is not None]
        if restarting and self.setup is not None and self.current is None:
            moments.append(self.history.not_before)
        return min(moments, default=None)

    def close(self) -> None:
        for monitor in self.alive():
            with contextlib.suppress(OSError):
                monitor.channel.close()



# Of a group's --status entry, what the fleet may see: numbers, never its command (which may hold
# the Redis URL or a secret).
PUBLISHED_GROUP_KEYS = ("running", "wanted", "busy", "utilization", "backlog", "crash_looping", "memory", "elastic")


def fleet_entry(pool_id: str, started_at: float, state: str, groups: Mapping[str, dict], memory_total: int,
                memory_limit: int | None, restarts: int) -> dict:
    """What the pool publishes for `entrypoint --fleet`: its numbers only, never its environment,
    commands or Redis URL."""
    numbers = {name: {key: group[key] for key in PUBLISHED_GROUP_KEYS if key in group}
               for name, group in groups.items()}
    return {"pool_id": pool_id, "host": pool_id.rpartition(":")[0], "started": round(started_at, 3),
            "state": state, "groups": numbers, "memory": {"total": memory_total, "limit": memory_limit},
            "restarts": restarts}
