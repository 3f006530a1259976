"""How the pool gets its config: .env and the file read at start and on reload, in a short-lived child of ours.

PID 1 never imports PyYAML, python-dotenv or the file walker: the child reads the file and
sends back the config as built-in values. --check is not PID 1 and reads in its own process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

from entrypoint import reaper
from entrypoint.childcall import NoAnswer, call_in_child
from entrypoint.poolconfig import ConfigError, PoolConfig, Problem


class Started(NamedTuple):
    """The config at start, the file every reload reads (None: the environment), what .env added."""

    config: PoolConfig
    path: str | None
    dotenv: dict[str, str]


def read_at_start(explicit: str | None, cwd: str, preload: tuple[str, ...] | None = None) -> Started:
    """.env (never overriding what is set), then the file it and the flags point to, or the environment.

    `preload` (--preload) replaces the file's pool.preload, as WORKER_PRELOAD does.
    """
    from collections import ChainMap
    from pathlib import Path

    from entrypoint.config import find_config_file, load_config, read_dotenv

    added: dict[str, str] = {}
    env = ChainMap(added, os.environ)  # what .env sets lands in `added`
    read_dotenv(Path(cwd), env)
    found = find_config_file(explicit, env, Path(cwd))
    path = None if found is None else str(found)
    return Started(load_config(path, env, Path(cwd), preload), path, added)


def start_in_child(explicit: str | None, cwd: str, preload: tuple[str, ...] | None = None) -> Started:
    """read_at_start in a child; its ConfigError is raised here."""

    def read() -> tuple[Any, ...]:
        started = read_at_start(explicit, cwd, preload)
        return started.config.to_plain(), started.path, started.dotenv

    plain_config, path, dotenv = _in_child(read, "config")
    return Started(PoolConfig.from_plain(plain_config), path, dotenv)


def reload_in_child(path: str | None, cwd: str, preload: tuple[str, ...] | None = None) -> PoolConfig:
    """The file found at start (or the environment) read again in a child; its ConfigError is raised here."""

    def read() -> dict[str, Any]:
        from pathlib import Path

        from entrypoint.config import load_config

        return load_config(path, os.environ, Path(cwd), preload).to_plain()

    return PoolConfig.from_plain(_in_child(read, path or "environment"))


def _in_child(read: Callable[[], Any], source: str) -> Any:
    """`read()`'s value, computed in a short-lived child; its ConfigError is raised here."""

    def answer() -> tuple[str, Any]:
        try:
            return "config", read()
        except ConfigError as error:
            return "problems", [tuple(problem) for problem in error.problems]

    try:
        kind, value = call_in_child(answer)
    except OSError as error:
        raise ConfigError.one(source, None, "", f"cannot start a process to read it ({error.strerror})") from None
    except NoAnswer as failed:
        raise ConfigError.one(
            source, None, "", f"could not be read: the process reading it {reaper.describe(failed.status)}"
        ) from None
    if kind == "problems":
        raise ConfigError(Problem(*problem) for problem in value)
    return value
