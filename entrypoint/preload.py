"""Preloaded workers, the manager's side: what the template imports; starting, replacing and asking it for forks."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import Mapping
from typing import NamedTuple

from entrypoint import channel as channels
from entrypoint import pool, reaper
from entrypoint.console import Log
from entrypoint.pool import Backoff, SlotHistory
from entrypoint.poolconfig import Group, PoolConfig

TEMPLATE_ARGV = (sys.executable, "-m", "entrypoint.template")
# What a default RQ worker imports on its first connection (the IDNA codec for a host name,
# redis-py's `secrets`): imported in the template, these pages stay shared.
RQ_FIRST_CONNECTION = ("encodings.idna", "secrets")
# RQ's variables that name a class (module.Class) or a settings module its CLI imports.
RQ_CLASS_VARIABLES = ("RQ_WORKER_CLASS", "RQ_JOB_CLASS", "RQ_QUEUE_CLASS", "RQ_CONNECTION_CLASS")
# A template that has not answered a fork request after this long is hung: KILL and replace it.
FORK_TIMEOUT = 10.0
# An exit we reaped before the template told us the pid was a worker's is kept this long.
UNCLAIMED_SECONDS = 30.0


class Setup(NamedTuple):
    """What a template imports before it forks anything."""

    modules: tuple[str, ...]
    calls: tuple[str, ...]
    after_fork: str | None

    def message(self) -> dict:
        return {"modules": list(self.modules), "calls": list(self.calls), "after_fork": self.after_fork}


def setup_for(config: PoolConfig, env: Mapping[str, str]) -> Setup | None:
    """The template a config needs: None when every group execs its command.

    Everything a worker will run is imported in the template, so it is shared and a bad name
    fails once, at start, not in every worker: the preload list, each `call:`'s module, and for
    the default RQ worker the module it runs (`python -m MODULE`), the classes it is told to
    use (by --worker-class or RQ's own variables) and what its first connection imports.
    """
    forked = [group for group in config.groups if group.forked]
    if not forked:
        return None
    modules = list(config.preload)
    calls = []
    for group in forked:
        if group.call is not None:
            calls.append(group.call)
            continue
        target = fork_target(group)
        args = target["args"]
        named = {**env, **dict(group.env)}
        classes = [named[v] for v in RQ_CLASS_VARIABLES if named.get(v)]
        if "--worker-class" in args[:-1]:
            classes.append(args[args.index("--worker-class") + 1])
        modules.extend([target["module"], *(c.rpartition(".")[0] for c in classes if "." in c),
                        *RQ_FIRST_CONNECTION])
    return Setup(tuple(dict.fromkeys(modules)), tuple(dict.fromkeys(calls)), config.after_fork)


def fork_target(spec: Group) -> dict:
    """What the template runs in a forked worker: the group's callable, or `python -m MODULE ARGS`."""
    if spec.call is not None:
        return {"call": spec.call}
    _python, flag, module, *args = spec.argv
    assert flag == "-m", f"a forked group runs a module: {spec.argv}"
    return {"module": module, "args": args}


def stamped(desired: Mapping[str, tuple[Group, int]], generation: int) -> dict[str, tuple[Group, int]]:
    """Forked groups carry the template that forks them: a new template means new code, so every
    worker of an older one no longer matches its group and is replaced, one slot at a time."""
    return {name: (spec._replace(template=generation) if spec.forked else spec, count)
            for name, (spec, count) in desired.items()}


class Pending(NamedTuple):
    """A fork we asked for and whose pid we do not know yet."""

    spec: Group
    slot: int
    sent: float


class Template:
    """One template process and what we asked of it."""

    __slots__ = ("channel", "closed", "generation", "pending", "pid", "ready", "retiring", "started")

    def __init__(self, pid: int, generation: int, channel: socket.socket, started: float, *,
                 ready: bool = False) -> None:
        self.pid = pid
        self.generation = generation
        self.channel = channel
        self.started = started
        self.ready = ready
        self.retiring = False  # asked to go: its exit is expected
        self.closed = False  # it closed its end: no more messages
        self.pending: dict[int, Pending] = {}  # request id -> the fork we asked for

    def __repr__(self) -> str:
        return f"Template({self.generation} pid {self.pid})"

    def fileno(self) -> int:
        return self.channel.fileno()


class Ready(NamedTuple):
    template: Template
    report: dict


class Failed(NamedTuple):
    """The template could not import what it was given: the app's error and traceback."""

    template: Template
    report: dict


class Forked(NamedTuple):
    spec: Group
    slot: int
    pid: int
    started: float
    exited: int | None  # its wait status, when we had reaped it before we knew it was a worker


class ForkFailed(NamedTuple):
    spec: Group
    slot: int
    error: str


Event = Ready | Failed | Forked | ForkFailed


class Reloaded(NamedTuple):
    """A reload's template is ready and forks from now on: its config applies."""

    config: PoolConfig


class Preloaded(NamedTuple):
    """The first template is ready: forked groups carry its generation, and workers start."""

    generation: int


class GaveUp(NamedTuple):
    """The first template could not import the app: no worker has started, and the pool exits."""


Verdict = Reloaded | Preloaded | GaveUp | None


class Templates:
    """The template processes of one pool: at most one current and one candidate (a reload's)."""

    def __init__(self, env: Mapping[str, str], log: Log, backoff: Backoff) -> None:
        self.env = dict(env)
        self.log = log
        self.backoff = backoff
        self.current: Template | None = None
        self.candidate: Template | None = None
        self.retired: list[Template] = []
        self.setup: Setup | None = None  # what the current template imports
        self.history = SlotHistory()
        self.generation = 0
        self.next_id = 0
        self.unclaimed: dict[int, tuple[int, float]] = {}  # pid -> (wait status, when reaped)
        self.reported_loop = False
        self.preloading = False  # the first template is importing: no worker starts before its verdict
        self.pending: PoolConfig | None = None  # a reload's config, waiting for its candidate to be ready

    # -- starting and retiring -----------------------------------------------------------------

    def start(self, setup: Setup, now: float, output: int | None = None) -> Template:
        """A new template process, told what to import; it answers Ready or Failed."""
        child, ours = channels.spawn_helper(TEMPLATE_ARGV, self.env, output)
        self.generation += 1
        template = Template(child.pid, self.generation, ours, now)
        self.send(template, setup.message())
        self.log.info(f"template {template.generation} pid {template.pid}: importing "
                      f"{', '.join(setup.modules + setup.calls) or 'nothing'}")
        return template

    def retire(self, template: Template | None) -> None:
        """Closing its channel ends a ready template, once it has answered the forks under way (a
        worker whose pid never reached us would run unknown, never stopped); one still importing
        is KILLed, its work unwanted."""
        if template is None or template.retiring:
            return
        template.retiring = True
        if not template.pending:
            self.hang_up(template)
        if not template.ready:
            reaper.send([template.pid], signal.SIGKILL)
        if template is self.current:
            self.current = None
        if template is self.candidate:
            self.candidate = None
        self.retired.append(template)

    @staticmethod
    def hang_up(template: Template) -> None:
        template.channel.close()
        template.closed = True

    def promote(self, template: Template, setup: Setup) -> None:
        """The candidate is ready: it forks from now on; the old one goes."""
        old = self.current
        self.current, self.candidate, self.setup = template, None, setup
        if old is not None:
            self.retire(old)

    def alive(self) -> list[Template]:
        return [t for t in (self.current, self.candidate, *self.retired) if t is not None]

    def listening(self) -> list[Template]:
        """Templates whose channel may still bring a message: what the loop waits on."""
        return [t for t in self.alive() if not t.closed]

    # -- forks ---------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.current is not None and self.current.ready and not self.current.closed

    def request_fork(self, spec: Group, slot: int, env: Mapping[str, str], now: float,
                     output: int | None = None) -> None:
        template = self.current
        assert template is not None and template.ready
        self.next_id += 1
        request = {"id": self.next_id, "env": dict(env), **fork_target(spec)}
        template.pending[self.next_id] = Pending(spec, slot, now)
        self.send(template, request, output)

    def starting(self) -> set[pool.SlotKey]:
        """Slots whose worker is being forked: occupied, though no pid is known yet."""
        return {(p.spec.name, p.slot) for t in self.alive() for p in t.pending.values()}

    def hung(self, now: float) -> list[Template]:
        return [t for t in self.alive()
                if any(now - p.sent > FORK_TIMEOUT for p in t.pending.values())]

    def kill_hung(self, now: float) -> None:
        for template in self.hung(now):
            self.log.warning(f"template pid {template.pid} did not answer a fork request within "
                             f"{FORK_TIMEOUT:g}s: KILL")
            reaper.send([template.pid], signal.SIGKILL)

    def send(self, template: Template, message: dict, fd: int | None = None) -> None:
        try:
            channels.send(template.channel, message, fd)
        except OSError as error:
            # It is gone or wedged: its exit (or our KILL) brings the replacement.
            self.log.warning(f"template pid {template.pid}: cannot send ({error.strerror}): KILL")
            reaper.send([template.pid], signal.SIGKILL)

    # -- what the templates said ---------------------------------------------------------------

    def read(self, template: Template, now: float) -> list[Event]:
        messages, closed = channels.receive(template.channel)
        template.closed = template.closed or closed
        events = [event for message in messages for event in self.interpret(template, message, now)]
        if template.retiring and not template.pending and not template.closed:
            self.hang_up(template)  # its last answer came
        return events

    def interpret(self, template: Template, message: dict, now: float) -> list[Event]:
        if message.get("ready"):
            template.ready = True
            return [Ready(template, message)]
        if "failed" in message:
            return [Failed(template, message)]
        pending = template.pending.pop(message.get("forked", message.get("fork_failed")), None)
        if pending is None:
            return []
        if "fork_failed" in message:
            return [ForkFailed(pending.spec, pending.slot, str(message.get("error")))]
        pid = int(message["pid"])
        exited = self.unclaimed.pop(pid, (None, 0.0))[0]
        return [Forked(pending.spec, pending.slot, pid, pending.sent, exited)]

    # -- the app's verdict ---------------------------------------------------------------------

    def on_ready(self, template: Template, report: dict) -> Verdict:
        """A template imported the app: a reload's candidate takes over, the first one lets workers start."""
        self.log.info(describe_ready(template, report))
        warning = thread_warning(report)
        if warning:
            self.log.warning(warning)
        if template is self.candidate and self.pending is not None:
            config, self.pending = self.pending, None
            setup = setup_for(config, self.env)
            assert setup is not None
            self.promote(template, setup)
            return Reloaded(config)
        if template is self.current and self.preloading:
            self.preloading = False
            return Preloaded(template.generation)
        return None

    def on_failed(self, template: Template, report: dict) -> Verdict:
        """A template could not import the app: a reload changes nothing, the first one gives up the pool."""
        line, trace = failure_lines(report)
        self.log.error(line)
        self.log.write_line(trace.rstrip("\n"))  # the app's own traceback: the user needs its frames
        if template is self.candidate:
            self.pending = None
            self.retire(template)
            self.log.error("reload failed: the running pool is unchanged")
        elif self.preloading:
            self.retire(template)
            return GaveUp()
        return None

    def on_gone(self, template: Template, status: int, now: float, jitter: float, *, stopping: bool) -> Verdict:
        """A template exited: the first one, while importing, gives up the pool; a reload's fails the reload."""
        gave_up = self.preloading and template is self.current
        if gave_up:
            self.log.error(f"preload: the template {reaper.describe(status)} while importing")
        was_candidate = template is self.candidate
        line = self.on_exit(template, status, now, jitter)
        if was_candidate:
            self.pending = None
            self.log.error(f"{line}: reload failed, the running pool is unchanged")
        elif line is not None and not (stopping or gave_up):  # a pool that gives up is stopping
            self.log.warning(line)
        return GaveUp() if gave_up else None

    # -- exits ---------------------------------------------------------------------------------

    def owner(self, pid: int) -> Template | None:
        return next((t for t in self.alive() if t.pid == pid), None)

    def on_exit(self, template: Template, status: int, now: float, jitter: float) -> str | None:
        """Forget a template that exited; a warning line when it was not asked to go."""
        template.channel.close()
        if template in self.retired:
            self.retired.remove(template)
            return None
        expected = template.retiring
        if template is self.candidate:
            self.candidate = None
            return f"template {template.generation} pid {template.pid} {reaper.describe(status)} while importing"
        self.current = None
        lived = now - template.started
        self.history = pool.after_exit(self.history, lived, expected=expected, now=now,
                                       backoff=self.backoff, jitter=jitter,
                                       description=reaper.describe(status))
        if self.history.failures == 0:
            self.reported_loop = False
        wait = max(0.0, self.history.not_before - now)
        line = (f"template {template.generation} pid {template.pid} {reaper.describe(status)} after "
                f"{lived:.1f}s; running workers keep running; a new template "
                + (f"in {wait:.1f}s" if wait else "now"))
        if pool.crash_looping(self.history) and not self.reported_loop:
            self.reported_loop = True
            line += f" ({self.history.failures} quick exits in a row: backing off up to {self.backoff.maximum:g}s)"
        return line

    def keep_unclaimed(self, pid: int, status: int, now: float) -> bool:
        """An exit of a pid we do not know, while forks are pending: perhaps a worker whose pid is
        still on its way to us. Kept for a while; True when kept."""
        self.unclaimed = {p: v for p, v in self.unclaimed.items() if now - v[1] < UNCLAIMED_SECONDS}
        if not any(t.pending for t in self.alive()):
            return False
        self.unclaimed[pid] = (status, now)
        return True

    def due_restart(self, now: float) -> bool:
        """No current template, one is wanted, and its backoff has run out."""
        return (self.setup is not None and self.current is None and self.candidate is None
                and self.history.not_before <= now)

    def next_wakeup(self, *, restarting: bool) -> float | None:
        """When a fork request times out, or (restarting: the pool still wants a template) when a
        dead template's backoff ends."""
        moments = [p.sent + FORK_TIMEOUT for t in self.alive() for p in t.pending.values()]
        if restarting and self.setup is not None and self.current is None and self.candidate is None:
            moments.append(self.history.not_before)
        return min(moments, default=None)

    def close(self) -> None:
        for template in self.alive():
            with contextlib.suppress(OSError):
                template.channel.close()


def describe_ready(template: Template, report: dict) -> str:
    line = f"template {template.generation} pid {template.pid} ready in {report.get('seconds', 0):g}s"
    if report.get("sockets_closed"):
        line += (f"; it closed {report['sockets_closed']} connection(s) the app opened while importing "
                 "(each worker opens its own: redis-py does by itself, others in after_fork)")
    return line


def thread_warning(report: dict) -> str | None:
    threads = report.get("threads", 0)
    if not threads:
        return None
    return (f"the preloaded app started {threads} thread(s) while importing: a forked worker has only "
            "the thread that forked it, and a lock another thread held stays locked in the worker. "
            "Start threads in after_fork instead")


def failure_lines(report: dict) -> tuple[str, str]:
    """The one line naming what failed to import, and the app's own traceback."""
    return (f"preload: cannot import {report.get('failed')}: {report.get('error')}",
            str(report.get("traceback", "")))

