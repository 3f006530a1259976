"""Spawning a child: give it clean signals, descriptors and its own process group, then exec its command."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from entrypoint.signals import restore_defaults

# Every signal a child may have to reset: Python ignores PIPE and XFSZ, and exec keeps that.
_DEFAULT_ON_EXEC = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}

NOT_FOUND = 127
NOT_EXECUTABLE = 126
# A channel handed to a child (the preload template's) arrives as this descriptor.
CHANNEL_FD = 3


class SpawnError(Exception):
    """The command could not be started; `code` is the shell's 127 or 126."""

    def __init__(self, command: str, error: int) -> None:
        self.command = command
        self.errno = error
        self.code = NOT_FOUND if error == errno.ENOENT else NOT_EXECUTABLE
        reason = "command not found" if self.code == NOT_FOUND else os.strerror(error)
        super().__init__(f"{command}: {reason}")


class Child(NamedTuple):
    pid: int

    @property
    def group(self) -> int:
        """Each child leads its own process group, so the group id is its pid."""
        return self.pid


def mark_inherited_descriptors_cloexec() -> None:
    """Descriptors we inherited above 2 must not leak into our children (catatonit closes them)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                continue  # the descriptor of the listing itself, already closed


def controlling_terminal() -> int | None:
    """Our stdin when it is a terminal we can hand to a child, else None."""
    try:
        if os.isatty(0) and os.tcgetpgrp(0) >= 0:
            return 0
    except OSError:
        return None
    return None


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    terminal: int | None = None,
    output: int | None = None,
    channel: int | None = None,
) -> Child:
    """Start `argv` in a new process group; raise SpawnError when the command cannot be exec'd.

    `output`, when given, becomes the child's stdout and stderr (the pool's per-line
    prefixing); `channel` becomes its descriptor CHANNEL_FD (the preload template's link to us).
    """
    if terminal is None:
        return _posix_spawn(argv, env, output, channel)
    # The fork path, for a terminal: a pipe closed on exec tells us whether exec worked, so
    # "not found" is known at once instead of being guessed later from an exit status of 127.
    pid, read_end, write_end = fork_with_pipe()
    if pid == 0:
        _become(argv, env, terminal, write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        failure = report.read()
    if failure:
        os.waitpid(pid, 0)  # ours alone: it exited at once and nobody else waits for it
        raise SpawnError(argv[0], int(failure))
    return Child(pid)


def fork_with_pipe() -> tuple[int, int, int]:
    """fork() with a close-on-exec pipe made just before: (pid, read end, write end). When fork
    fails, both ends are closed: a retry must not leak two descriptors each time."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        return os.fork(), read_end, write_end
    except OSError:
        os.close(read_end)
        os.close(write_end)
        raise


def _posix_spawn(argv: Sequence[str], env: Mapping[str, str] | None, output: int | None,
                 channel: int | None) -> Child:
    """The fast way (every pool worker): no copy of our memory, and exec errors come back at
    once. Our descriptors above 2 are all close-on-exec; a dup2'd one is not."""
    redirect = [(os.POSIX_SPAWN_DUP2, output, 1), (os.POSIX_SPAWN_DUP2, output, 2)] if output is not None else []
    if channel is not None:
        redirect.append((os.POSIX_SPAWN_DUP2, channel, CHANNEL_FD))
    try:
        pid = os.posix_spawnp(
            argv[0], list(argv), os.environ if env is None else dict(env),
            file_actions=redirect, setpgroup=0, setsigmask=(), setsigdef=_DEFAULT_ON_EXEC,
        )
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.ENOMEM):
            raise  # the fork itself failed (a pids limit, no memory): trouble of the moment
        raise SpawnError(argv[0], error.errno or errno.EACCES) from None
    return Child(pid)


def _take_terminal(terminal: int) -> None:
    """Become the terminal's foreground group, so Ctrl-C, Ctrl-Z and job control reach us."""
    # Signals are still blocked here, so taking the foreground cannot stop us (SIGTTOU).
    # Not our session's terminal after all? Then the child runs in its background.
    with contextlib.suppress(OSError):
        os.tcsetpgrp(terminal, os.getpid())


def _become(argv: Sequence[str], env: Mapping[str, str] | None, terminal: int, report: int) -> None:
    """In the child: never returns; any failure becomes exit status 126/127 and a report."""
    try:
        os.setpgid(0, 0)
        _take_terminal(terminal)
        os.closerange(3, report)
        os.closerange(report + 1, 65536)
        restore_defaults()
        if env is None:
            os.execvp(argv[0], list(argv))
        else:
            os.execvpe(argv[0], list(argv), dict(env))
    except OSError as error:
        os.write(report, str(error.errno or errno.EACCES).encode())
        os._exit(NOT_FOUND if error.errno == errno.ENOENT else NOT_EXECUTABLE)
    except BaseException:
        os._exit(1)
