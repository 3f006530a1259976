"""Signals: their names, the rewrite rules, and receiving them all through one signalfd."""

from __future__ import annotations

import ctypes
import os
import signal
import struct
from typing import NamedTuple

# Faults the kernel raises in the faulting process itself. We forward them only when another
# process sent them with kill(); a real fault in our own process must kill us, as it does tini.
SYNCHRONOUS = frozenset(
    {
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGILL,
        signal.SIGFPE,
        signal.SIGABRT,
        signal.SIGTRAP,
        signal.SIGSYS,
    }
)
UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})
# Every signal 1-31 an init can catch and pass on; SIGCHLD is ours (it means "reap").
FORWARDABLE = tuple(
    s for s in range(1, 32) if s not in UNCATCHABLE and s != signal.SIGCHLD
)

_SIGINFO = struct.Struct("=IiiI")  # ssi_signo, ssi_errno, ssi_code, ssi_pid of signalfd_siginfo
_SIGINFO_SIZE = 128
_READ_SIZE = _SIGINFO_SIZE * 32
_SFD_NONBLOCK = os.O_NONBLOCK
_SFD_CLOEXEC = os.O_CLOEXEC
_SIGSET_BYTES = 128


def signal_name(signum: int) -> str:
    """SIGTERM for 15; a number we have no name for stays a number."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def parse_signal(text: str | int, *, allow_zero: bool = False) -> int:
    """Accept TERM, SIGTERM, sigterm or 15; ValueError names what was expected."""
    if isinstance(text, int) and not isinstance(text, bool):
        number = text
    else:
        word = str(text).strip()
        if word.lstrip("-").isdigit():
            number = int(word)
        else:
            upper = word.upper()
            name = upper if upper.startswith("SIG") else "SIG" + upper
            member = signal.Signals.__members__.get(name)
            if member is None or name.startswith("SIG_"):
                raise ValueError(f"{text!r} is not a signal name or number (e.g. TERM, QUIT, 15)")
            number = int(member)
    if number == 0 and allow_zero:
        return 0
    if not 1 <= number <= 31:
        raise ValueError(f"{text!r} is not a signal between 1 and 31")
    return number


def parse_rewrite(text: str) -> tuple[int, int]:
    """Parse dumb-init's FROM:TO; TO = 0 means the signal is dropped."""
    source, sep, target = text.partition(":")
    if not sep:
        raise ValueError(f"{text!r} is not FROM:TO (e.g. TERM:QUIT, or 1:0 to drop SIGHUP)")
    return parse_signal(source), parse_signal(target, allow_zero=True)


class Received(NamedTuple):
    """One signal as the kernel reported it: who sent it and how."""

    signum: int
    code: int  # si_code: <= 0 when a process sent it (kill, sigqueue, tgkill)
    sender: int

    @property
    def from_process(self) -> bool:
        return self.code <= 0

    def forwardable(self) -> bool:
        """A fault the kernel raised in us is not something to pass on."""
        if self.signum not in FORWARDABLE:
            return False
        if self.signum in SYNCHRONOUS:
            return self.from_process and self.sender != os.getpid()
        return True


def child_changed(received: list[Received]) -> bool:
    """A SIGCHLD among them: some child exited or stopped, so it is time to reap (and only then)."""
    return any(r.signum == signal.SIGCHLD for r in received)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class SignalInbox:
    """Blocks every signal and reads them, in the order the kernel hands them over, from a signalfd.

    Blocked signals are never ignored by the kernel, so even as PID 1 of a namespace we receive
    signals that have no handler, from inside and outside the namespace.
    """

    def __init__(self) -> None:
        libc = _libc()
        mask = ctypes.create_string_buffer(_SIGSET_BYTES)
        libc.sigemptyset(mask)
        for signum in signal.valid_signals():
            if signum not in UNCATCHABLE:
                libc.sigaddset(mask, int(signum))
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        fd = libc.signalfd(-1, mask, _SFD_NONBLOCK | _SFD_CLOEXEC)
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"signalfd: {os.strerror(errno)}")
        self.fd: int = fd

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[Received]:
        """Every signal pending now; empty when there is none."""
        received = []
        while True:
            try:
                chunk = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return received
            for offset in range(0, len(chunk), _SIGINFO_SIZE):
                signum, _errno, code, sender = _SIGINFO.unpack_from(chunk, offset)
                received.append(Received(signum, code, sender))
            if len(chunk) < _READ_SIZE:
                return received  # a short read took everything pending: no second read for EAGAIN

    def close(self) -> None:
        os.close(self.fd)


def restore_defaults() -> None:
    """For a freshly forked child: default dispositions for every signal and an empty mask.

    Python ignores SIGPIPE and SIGXFSZ and we block everything; exec keeps both, so a worker
    would otherwise start deaf to signals and blind to broken pipes.
    """
    for signum in range(1, signal.NSIG):
        if signum in UNCATCHABLE:
            continue
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            continue  # signals reserved by the C library (32, 33) cannot be set
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
