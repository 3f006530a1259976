"""Reaping: collect every child's exit status, adopt orphans, and find and kill what is left."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Iterable, Mapping, Sequence

from entrypoint.signals import signal_name

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphans of our descendants come to us when something else is PID 1.

    Under `docker run --init`, compose `init: true` or Kubernetes' pause process we are not
    PID 1; as a child subreaper we still adopt and reap every orphan below us. Returns whether
    the kernel agreed (it always does on Linux >= 3.4).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def reap(*, stops: bool = False) -> list[tuple[int, int]]:
    """Every child that has exited (and, with `stops`, stopped), as (pid, wait status), without blocking.

    The only waitpid in the program: it takes every child, so statuses are routed by pid to
    whoever started the child and none is stolen (never mix this with subprocess).
    """
    flags = os.WNOHANG | (os.WUNTRACED if stops else 0)
    exited = []
    while True:
        try:
            pid, status = os.waitpid(-1, flags)
        except ChildProcessError:
            return exited
        if pid == 0:
            return exited
        exited.append((pid, status))


def exit_code(status: int) -> int:
    """The shell's convention: the exit code, or 128+N when signal N killed the process."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def describe(status: int) -> str:
    """'exited with status 3' or 'killed by SIGKILL', for one log line."""
    if os.WIFSIGNALED(status):
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return f"killed by {signal_name(os.WTERMSIG(status))}{core}"
    return f"exited with status {os.WEXITSTATUS(status)}"


def stat_fields(pid: int | str, proc: str | os.PathLike[str] = "/proc") -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), None when it is gone.

    comm (field 2) may hold spaces and ")"; the fields after the last ")" do not.
    """
    try:
        with open(f"{os.fspath(proc)}/{pid}/stat", "rb") as stat:
            text = stat.read().decode("ascii", "replace")
    except OSError:
        return None  # exited while we looked
    return text[text.rfind(")") + 1 :].split()


def process_table(proc: str | os.PathLike[str] = "/proc") -> list[tuple[int, int, str]]:
    """(pid, ppid, state) of every process we can see, from one pass over /proc/*/stat."""
    table = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        fields = stat_fields(entry, proc)
        if fields is not None and len(fields) >= 2 and fields[1].isdigit():
            table.append((int(entry), int(fields[1]), fields[0]))
    return table


def children_index(table: Iterable[tuple[int, int, str]]) -> dict[int, list[int]]:
    """ppid -> child pids."""
    index: dict[int, list[int]] = {}
    for pid, ppid, _state in table:
        index.setdefault(ppid, []).append(pid)
    return index


def below(root: int, index: Mapping[int, Sequence[int]]) -> set[int]:
    """Every descendant of root in the index, however deep."""
    found: set[int] = set()
    pending = [root]
    while pending:
        for child in index.get(pending.pop(), ()):
            # /proc is read while processes come and go: a stale index must not loop us
            if child not in found and child != root:
                found.add(child)
                pending.append(child)
    return found


def has_children() -> bool:
    """Whether we have any child at all: one small read instead of a walk over /proc."""
    try:
        tasks = os.listdir("/proc/self/task")
        return any(open(f"/proc/self/task/{tid}/children").read().strip() for tid in tasks)
    except OSError:
        return True  # no such file on this kernel: assume so and look properly


def descendants(root: int | None = None) -> set[int]:
    """Live (non-zombie) processes below `root` (default: us), however deep."""
    if root is None and not has_children():
        return set()  # every orphan below us is reparented to us, so no child means no descendant
    table = process_table()
    alive = {pid for pid, _ppid, state in table if state not in ("Z", "X")}
    return below(os.getpid() if root is None else root, children_index(table)) & alive


def send(pids: Iterable[int], signum: int) -> list[int]:
    """Signal each pid (a negative one is a process group); returns those that still existed."""
    reached = []
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue
        except PermissionError:
            continue  # a setuid child we may not signal; the final sweep still waits for it
        reached.append(pid)
    return reached


def kill_everything_below(extra_groups: Iterable[int] = ()) -> None:
    """SIGKILL the given process groups and every live descendant, the last step of a stop."""
    send([-group for group in extra_groups], signal.SIGKILL)
    send(descendants(), signal.SIGKILL)
