"""Shared machinery: statistics, /proc readings, and launching contenders (always cleaned up)."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import select
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROBES = HERE / "probes"
# --kill-child: if we die, so does the namespace's PID 1, and with it every process inside.
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
# Every process we start carries this variable, so a test can prove none is left running.
MARK_VARIABLE = "ENTRYPOINT_BENCH_MARK"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(Exception):
    """A measurement that could not be taken (a timeout, a contender that did not start)."""


# -- contenders ---------------------------------------------------------------------------------


@dataclass
class Contender:
    """One program in a comparison: ours, a peer we compare against, or a floor (a baseline)."""

    name: str
    kind: str  # "ours", "peer" or "floor"
    argv: list[str]  # the prefix; the child command follows
    argv_pid1: list[str] | None = None  # a different prefix when it runs as PID 1
    note: str = ""
    display: str = ""  # how to show the command, when it is not "argv CHILD..."

    def command(self, child: Sequence[str], *, pid1: bool = False) -> list[str]:
        prefix = self.argv_pid1 if pid1 and self.argv_pid1 is not None else self.argv
        return [*prefix, *child]


def clean_env(mark: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The same small environment for every contender: nothing that changes their behaviour
    (no $DYNO, TERM_TIMEOUT, POOL_*, WORKER_*...), only PATH, HOME, a locale and our mark."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        MARK_VARIABLE: mark,
    }
    env.update(extra or {})
    return env


# -- statistics ---------------------------------------------------------------------------------


def summarize(samples: Sequence[float | None]) -> dict | None:
    """Median, min and max of the samples that were taken (None = failed), with the raw samples."""
    taken = [s for s in samples if s is not None]
    if not taken:
        return None
    return {
        "median": statistics.median(taken),
        "min": min(taken),
        "max": max(taken),
        "n": len(taken),
        "failed": len(samples) - len(taken),
        "samples": [round(s, 6) for s in taken],
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 1000 values is the 990th smallest)."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered) - 1e-9)))
    return ordered[rank - 1]


# -- /proc --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    comm: str
    state: str
    ppid: int
    utime: int
    stime: int

    @property
    def cpu_ms(self) -> float:
        return (self.utime + self.stime) * 1000.0 / CLOCK_TICKS


def schedstat_ms(pid: int) -> float:
    """Time on CPU (ns precision, every thread) from /proc/PID/task/*/schedstat, in ms."""
    total = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total / 1e6


def read_stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    close = text.rfind(")")
    fields = text[close + 2 :].split()
    return Stat(text[text.find("(") + 1 : close], fields[0], int(fields[1]),
                int(fields[11]), int(fields[12]))


def children(pid: int) -> list[int]:
    """Direct children (zombies included) of every thread of pid."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return found


def tree(root: int) -> list[tuple[int, Stat]]:
    """Every descendant of root (not root itself) with its stat."""
    found = []
    stack = [root]
    seen = {root}
    while stack:
        for child in children(stack.pop()):
            if child in seen:
                continue
            seen.add(child)
            stat = read_stat(child)
            if stat is not None:
                found.append((child, stat))
                stack.append(child)
    return found


def status_kb(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, VmHWM... of /proc/PID/status, in kB."""
    values = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                values[key] = int(rest.split()[0])
    return values


def pss_kb(pid: int) -> int | None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return None


def exists(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat.state not in ("Z", "X")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.002,
             alive: subprocess.Popen | None = None):
    """Poll until predicate() is truthy; BenchError after timeout, or at once when the
    process `alive` has exited (a contender that crashed is not worth waiting for)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            raise BenchError(f"{' '.join(map(str, alive.args))} exited {alive.returncode} "
                             f"while we waited for {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# -- launching ----------------------------------------------------------------------------------


def wait_exit(popen: subprocess.Popen, timeout: float) -> bool:
    """Wait for the process to exit, waking the moment it does (a pidfd, not Popen.wait's
    polling with sleeps of up to 50 ms); False on timeout."""
    if popen.poll() is not None:
        return True
    try:
        pidfd = os.pidfd_open(popen.pid)
    except ProcessLookupError:
        popen.wait()
        return True
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        return False
    popen.wait()
    return True


def terminate(popen: subprocess.Popen, timeout: float) -> None:
    """TERM, then KILL its whole session if it is still there after `timeout` seconds."""
    with contextlib.suppress(ProcessLookupError):
        popen.send_signal(signal.SIGTERM)
    if not wait_exit(popen, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()


def kill_tree(root: int) -> None:
    """SIGKILL root's descendants (deepest last found first), then root."""
    for pid, _stat in reversed(tree(root)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(root, signal.SIGKILL)


def _die_with_us() -> None:
    """In the forked child before exec: SIGKILL unshare if the benchmark itself is killed, so
    even then its namespace goes (unshare --kill-child takes PID 1 along, the kernel the rest)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


class Launch:
    """A process started in its own session, optionally as PID 1 of a new PID namespace.

    Use as a context manager: on exit everything it started is killed and reaped, whatever
    happened. In a namespace, killing unshare kills PID 1 (--kill-child) and the kernel kills
    the rest of the namespace.
    """

    def __init__(self, argv: Sequence[str], *, env: dict[str, str], namespace: bool,
                 cwd: str | Path | None = None, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL) -> None:
        self.namespace = namespace
        self.argv = [*UNSHARE, *argv] if namespace else list(argv)
        self.started_ns = time.monotonic_ns()
        self.popen = subprocess.Popen(
            self.argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            start_new_session=True, preexec_fn=_die_with_us if namespace else None,
        )
        self._buffer = b""

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, *_exc) -> None:
        self.kill()

    def kill(self) -> None:
        if self.popen.poll() is None:
            if not self.namespace:
                kill_tree(self.popen.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def inner_pid(self, timeout: float = 10.0) -> int:
        """The host pid of the namespace's PID 1 (unshare's only child), or our own pid."""
        if not self.namespace:
            return self.popen.pid
        return wait_for(lambda: (children(self.popen.pid) or [0])[0], timeout,
                        "the namespace's PID 1 to start", alive=self.popen)

    def _next_chunk(self, deadline: float, silence: str) -> bytes:
        """The next bytes of the process's stdout (b"" at end of file); BenchError(silence) when
        nothing comes before the deadline."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise BenchError(silence)
        return os.read(fd, 65536)

    def read_line(self, timeout: float) -> bytes:
        """One line of the process's stdout (a pipe); BenchError on timeout or end of file."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            chunk = self._next_chunk(deadline, f"no output within {timeout:g}s from {self.argv}")
            if not chunk:
                raise BenchError(f"{self.argv} closed its output (exit {self.popen.poll()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def read_all(self, timeout: float) -> bytes:
        """Everything the process writes to stdout (a pipe) until it closes it."""
        deadline = time.monotonic() + timeout
        data = self._buffer
        while True:
            chunk = self._next_chunk(deadline, f"{self.argv} still writing after {timeout:g}s")
            if not chunk:
                self._buffer = b""
                return data
            data += chunk


@contextlib.contextmanager
def launched(argv: Sequence[str], **kwargs) -> Iterator[Launch]:
    launch = Launch(argv, **kwargs)
    try:
        yield launch
    finally:
        launch.kill()
