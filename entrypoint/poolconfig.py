"""The pool's configuration as plain values: groups, pool-wide settings, their defaults and caps, and problems."""

from __future__ import annotations

import signal
from collections.abc import Iterable
from typing import Any, NamedTuple

from entrypoint.text import one_line

# NamedTuples rather than dataclasses: PID 1 holds these, and dataclasses would bring inspect,
# ast and dis with it (1.3 MB of a manager that must stay under 15 MB).

MAX_COUNT = 1000  # the documented cap on workers in one group
ELASTIC_AUTO = 0  # pool.elastic: auto
# Longer than any platform waits before SIGKILL, and small enough that no timer overflows.
MAX_SECONDS = 7 * 24 * 3600.0


class Problem(NamedTuple):
    """One thing wrong with the configuration, and where it is."""

    source: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        text = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        return one_line(text)


class ConfigError(Exception):
    """Every problem at once, so one failed start shows all there is to fix."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(map(str, self.problems)))

    @classmethod
    def one(cls, source: str, line: int | None, key: str, message: str) -> ConfigError:
        return cls([Problem(source, line, key, message)])


class Group(NamedTuple):
    """Workers that serve the same queues with the same command (or callable)."""

    name: str
    queues: tuple[str, ...]
    count: int | None
    min_count: int
    max_count: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    stop_signal: int = int(signal.SIGTERM)
    term_timeout: float | None = None
    max_memory: int | None = None
    call: str | None = None  # `module:function` run in a forked worker instead of a command
    forked: bool = False  # forked from the preload template rather than exec'd
    template: int = 0  # the template that forks this group's workers (the pool sets it)
    elastic: bool = False  # count: elastic: min..max of the pool's shared workers, following the backlog
    requeue_on_shutdown: bool = True  # the default RQ worker requeues a job a shutdown interrupts

    @property
    def auto(self) -> bool:
        """count: auto: as many as memory allows, within min..max."""
        return self.count is None and not self.elastic


class PoolConfig(NamedTuple):
    """The whole pool: its groups and the settings that apply to all of them."""

    source: str
    app_env: str | None
    groups: tuple[Group, ...]
    term_timeout: float | None = None
    spawn_delay: float = 0.0
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    backoff_reset: float = 30.0
    exit_on_crash_loop: bool = False
    prefix_output: bool = False
    memory_headroom: float = 0.85
    memory_limit: int | None = None
    memory_interval: float = 2.0  # seconds between two measurements of every worker's memory
    preload: tuple[str, ...] = ()  # modules the template imports once for every forked worker
    after_fork: str | None = None  # `module:function` called in each forked worker before its work
    elastic: int | None = None  # workers the elastic groups share; ELASTIC_AUTO: what memory allows
    grow_after: float = 3.0  # seconds a backlog lasts before its elastic group grows
    shrink_after: float = 30.0  # seconds a worker is idle before its elastic slot can go
    fleet: bool = True  # publish the pool's status to $REDIS_URL for `entrypoint --fleet`

    def to_plain(self) -> dict[str, Any]:
        """Built-in types only (marshal's), to cross a pipe from the process that read the file."""
        return {**self._asdict(), "groups": tuple(group._asdict() for group in self.groups)}

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> PoolConfig:
        return cls(**{**plain, "groups": tuple(Group(**group) for group in plain["groups"])})
