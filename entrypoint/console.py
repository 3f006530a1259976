"""Console output: one line per event with our prefix; rich colour and tables only where they help."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO, TextIO

from entrypoint.text import one_line

if TYPE_CHECKING:  # imported by the pool's --check only
    from rich.console import Console

    from entrypoint.poolconfig import PoolConfig
    from entrypoint.shutdown import StopPolicy

PREFIX = "entrypoint"

ERROR, WARNING, INFO, DEBUG, TRACE = range(5)
_STYLES = {ERROR: "bold red", WARNING: "yellow", INFO: "", DEBUG: "dim", TRACE: "dim"}


class Log:
    """Plain lines on stderr: what the init writes, with nothing heavy imported.

    Verbosity 0 shows warnings and errors, 1 (-v) adds start-up and lifecycle events,
    2 (-vv) every reap and forward, 3 (-vvv) every signal received.
    """

    def __init__(self, verbosity: int = 0, stream: TextIO | None = None) -> None:
        self.verbosity = verbosity
        self.stream = stream or sys.stderr

    def error(self, message: str) -> None:
        self.emit(ERROR, f"error: {message}")

    def warning(self, message: str) -> None:
        self.emit(WARNING, f"warning: {message}")

    def info(self, message: str) -> None:
        if self.verbosity >= 1:
            self.emit(INFO, message)

    @property
    def debugging(self) -> bool:
        """Check before building a costly message on a hot path (every signal, every reap)."""
        return self.verbosity >= 2

    @property
    def tracing(self) -> bool:
        return self.verbosity >= 3

    def debug(self, message: str) -> None:
        if self.debugging:
            self.emit(DEBUG, message)

    def trace(self, message: str) -> None:
        if self.tracing:
            self.emit(TRACE, message)

    def emit(self, level: int, message: str) -> None:
        self.write_line(f"{PREFIX}: {one_line(message)}")

    def write_line(self, line: str) -> None:
        # A closed log pipe must not take the init down with it.
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(line + "\n")
            self.stream.flush()


class PoolLog(Log):
    """The pool's events on stdout through rich: colour on a terminal, plain text in a log drain.

    The pool is the product's face, so lifecycle events show without -v; -v adds the detail.
    """

    def __init__(self, verbosity: int = 0, stream: TextIO | None = None) -> None:
        super().__init__(verbosity + 1, stream or sys.stdout)
        # rich costs 2 MB and 12 ms: only a terminal gets it, a log drain gets plain lines.
        self._console = make_console(self.stream) if self.stream.isatty() else None

    def emit(self, level: int, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        message = one_line(message)
        if self._console is None:
            self.write_line(f"{stamp} {PREFIX}: {message}")
            return
        from rich.text import Text

        line = Text.assemble((f"{stamp} {PREFIX}: ", "dim"), (message, _STYLES[level]))
        with contextlib.suppress(OSError, ValueError):
            self._console.print(line, soft_wrap=True)


def make_console(stream: TextIO) -> Console:
    from rich.console import Console

    # Heroku's log drain and `docker logs` are not terminals: no colour codes, no wrapping.
    terminal = stream.isatty()
    return Console(file=stream, highlight=False, markup=False, soft_wrap=True,
                   width=None if terminal else 10_000, no_color="NO_COLOR" in os.environ)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]],
                stream: TextIO | None = None) -> None:
    """A table for --check and --status: aligned on a terminal, still readable in a log."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    make_console(stream or sys.stdout).print(table)


def print_config(config: PoolConfig, stop: StopPolicy) -> None:
    """The pool as it will run: every group, its queues, count and command, then the settings."""
    import shlex

    from entrypoint.signals import signal_name

    rows = []
    for group in config.groups:
        count = f"auto ({group.min_count}-{group.max_count})" if group.auto else group.count
        runs = f"call {group.call}" if group.call else shlex.join(group.argv)
        rows.append((
            group.name, ", ".join(group.queues), count, "fork" if group.forked else "exec", runs,
            signal_name(group.stop_signal).removeprefix("SIG"),
            f"{stop.grace(group.term_timeout, config.term_timeout):g}s",
            " ".join(f"{k}={v}" for k, v in group.env) or "-",
        ))
    env = f", environment {config.app_env}" if config.app_env else ""
    print_table(f"pool from {config.source}{env}",
                ("group", "queues", "count", "how", "command", "stop", "term timeout", "env"), rows)
    settings = (
        f"spawn delay {config.spawn_delay:g}s; backoff {config.backoff_min:g}s-"
        f"{config.backoff_max:g}s (reset after {config.backoff_reset:g}s); "
        f"term delay {stop.term_delay:g}s; TERM from the platform: "
        f"{'yes' if stop.term_sent_to_all else 'no'}; exit on crash loop: "
        f"{'yes' if config.exit_on_crash_loop else 'no'}"
    )
    if any(group.forked for group in config.groups):
        settings += (f"; preload: {', '.join(config.preload) or 'nothing but what the groups run'}; "
                     f"after_fork: {config.after_fork or '-'}")
    print(settings)


def print_reply(command: str, reply: dict, *, as_json: bool) -> None:
    """What the running pool answered to --status, --scale or --reload."""
    import json

    if as_json or command != "status":
        print(json.dumps(reply, indent=2 if as_json else None))
        return
    from entrypoint.memory import format_bytes

    job = {True: "busy", False: "idle"}
    # Helpers' rows first, marked so no queue name can be mistaken for them.
    helpers = [{**row, "group": f"({name})", "slot": row.get("generation") or "-"}
               for name in ("template", "monitor") if (row := reply.get(name))]
    rows = [
        (w["group"], w["slot"], w["pid"] or "-", w["state"], job.get(w.get("busy"), "-"),
         f"{w['uptime']:.0f}s" if w["uptime"] is not None else "-", w["restarts"],
         w["last_exit"] or "-", format_bytes(w["memory"]) if w["memory"] else "-")
        for w in helpers + reply["workers"]
    ]
    title = f"pool {reply['pool_id']} (manager pid {reply['manager_pid']})"
    if reply.get("stopping"):
        title += ": stopping"
    elif reply.get("paused"):
        title += ": paused (WINCH; HUP resumes)"
    print_table(title, ("group", "slot", "pid", "state", "job", "uptime", "restarts", "last exit", "memory"), rows)
    print_table("groups", ("group", "workers", "busy", "busy 1 min", "busy 5 min", "backlog", "memory", "elastic"),
                [group_row(name, group) for name, group in reply.get("groups", {}).items()])
    used = reply["memory"]
    limit = f"of {format_bytes(used['limit'])} from {used['limit_source']}" if used["limit"] else "no limit known"
    helpers_memory = "".join(f", the {name} {format_bytes(used[name])}" for name in ("template", "monitor")
                             if used.get(name))
    print(f"memory: {format_bytes(used['total'])} in all, the manager {format_bytes(used['manager'])}"
          f"{helpers_memory}; {limit}")
    monitor = reply.get("monitor")
    for line in (monitor or {}).get("error"), (monitor or {}).get("metrics"):
        if line:
            print(f"monitor: {one_line(line)}")


def describe_backlog(backlog: dict) -> str:
    """`412 waiting, oldest 40s`, and how old the reading is once it is stale."""
    text = f"{backlog['waiting']} waiting"
    if backlog.get("oldest") is not None:
        text += f", oldest {backlog['oldest']:.0f}s"
    if backlog.get("stale"):
        text += f" (stale: read {backlog['age']:.0f}s ago)"
    return text


def print_fleet(pools: list[dict], *, as_json: bool) -> None:
    """--fleet: one row per pool, its groups in one cell."""
    import json

    if as_json:
        print(json.dumps(pools, indent=2))
        return
    from entrypoint.memory import format_bytes

    now = time.time()
    rows = []
    for entry in pools:
        groups = entry.get("groups", {})
        cells = []
        for name, group in groups.items():
            cell = f"{one_line(name)} {group.get('running', '?')}/{group.get('wanted', '?')}"
            if group.get("backlog"):
                cell += f", {describe_backlog(group['backlog'])}"
            if group.get("crash_looping"):
                cell += ", crash-looping"
            cells.append(cell)
        used = entry.get("memory", {})
        memory = format_bytes(used["total"]) if used.get("total") else "-"
        if used.get("limit"):
            memory += f" of {format_bytes(used['limit'])}"
        published = entry.get("published")
        rows.append((one_line(str(entry["pool_id"])), entry.get("state", "-"), "\n".join(cells) or "-", memory,
                     entry.get("restarts", "-"), f"{now - published:.0f}s ago" if published else "-"))
    print_table(f"{len(pools)} pool(s)", ("pool", "state", "groups: running/wanted, backlog", "memory",
                                         "restarts", "updated"), rows)


def group_row(name: str, group: dict) -> tuple:
    """A --status groups line: workers, busy now and over time, backlog, memory, elastic bounds."""
    from entrypoint.memory import format_bytes

    shares = group["utilization"] or {}

    def percent(label: str) -> str:
        share = shares.get(label)
        return "-" if share is None else f"{100 * share:.0f}%"

    bounds, backlog = group["elastic"], group["backlog"]
    return (name, f"{group['running']}/{group['wanted']}", "-" if group["busy"] is None else group["busy"],
            percent("1m"), percent("5m"), describe_backlog(backlog) if backlog else "-",
            format_bytes(group["memory"]) if group["memory"] else "-",
            f"{bounds['min']}-{bounds['max']}" if bounds else "-")


class PrefixedOutput:
    """Worker output read from pipes and written a line at a time behind the worker's name, as honcho does."""

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self.stream = stream or sys.stdout.buffer
        self.pipes: dict[int, tuple[str, bytearray]] = {}
        self.width = 0

    def open(self, label: str) -> int:
        """A pipe for one worker; returns the end to give the worker as its stdout and stderr."""
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(read_end, False)
        self.pipes[read_end] = (label, bytearray())
        self.width = max(self.width, len(label))
        return write_end

    def fds(self) -> list[int]:
        return list(self.pipes)

    def drain(self, fd: int) -> None:
        """Everything readable now; complete lines go out, a partial one waits for its end."""
        label, pending = self.pipes[fd]
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:  # every writer has exited
                if pending:
                    pending.extend(b"\n")
                self._write(label, pending)
                os.close(fd)
                del self.pipes[fd]
                return
            pending.extend(chunk)
        end = pending.rfind(b"\n") + 1
        if end:
            self._write(label, pending[:end])
            del pending[:end]

    def _write(self, label: str, lines: bytes | bytearray) -> None:
        prefix = f"{label:<{self.width}} | ".encode()
        text = b"".join(prefix + line + b"\n" for line in bytes(lines).splitlines())
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()
