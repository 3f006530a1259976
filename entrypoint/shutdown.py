"""Stopping with grace: the term timeout, the drain delay, the platform's TERM-to-all, and the deadline."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import NamedTuple

# Heroku KILLs 30 s after its TERM, Docker 10 s after `docker stop`: leave a margin for our sweep.
HEROKU_TERM_TIMEOUT = 25.0
DOCKER_TERM_TIMEOUT = 8.0
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# After the deadline's KILL, look again this soon: a process forked during the sweep escaped it.
KILL_RETRY_SECONDS = 0.1


class StopPolicy(NamedTuple):
    term_timeout: float  # from the first TERM/INT until everything left gets KILL
    term_delay: float = 0.0  # wait this long before passing TERM on (drain time), inside the timeout
    term_sent_to_all: bool = False  # the platform TERMs every process itself (Heroku): never repeat it
    timeout_given: bool = False  # term_timeout came from --term-timeout or TERM_TIMEOUT, not a default

    def grace(self, own: float | None = None, pool_file: float | None = None) -> float:
        """A pool worker's grace: its group's own term_timeout; else --term-timeout/TERM_TIMEOUT;
        else the file's pool.term_timeout; else the default."""
        if own is not None:
            return own
        if pool_file is not None and not self.timeout_given:
            return pool_file
        return self.term_timeout


def on_heroku(env: Mapping[str, str]) -> bool:
    return bool(env.get("DYNO"))


def default_term_timeout(env: Mapping[str, str]) -> float:
    """Stay inside the platform's own KILL: Heroku's 30 s when $DYNO is set, else Docker's 10 s."""
    return HEROKU_TERM_TIMEOUT if on_heroku(env) else DOCKER_TERM_TIMEOUT


def parse_seconds(text: str, what: str) -> float:
    """A non-negative number of seconds, or ValueError naming `what`."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}: expected a number of seconds, got {text!r}") from None
    if not 0 <= value < 86400 * 365:
        raise ValueError(f"{what}: expected a number of seconds from 0, got {text!r}")
    return value


def parse_switch(text: str, what: str) -> bool:
    """1/0, true/false, yes/no, on/off."""
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{what}: expected 1/0, true/false, yes/no or on/off, got {text!r}")


def earliest(deadline: float | None, candidate: float) -> float:
    """A deadline only ever moves closer: a second TERM never restarts the clock."""
    return candidate if deadline is None else min(deadline, candidate)
