"""How the pool gets its config: .env and the file read at start and on reload, in a short-lived child of ours.

PID 1 never imports PyYAML, python-dotenv or the file walker: a fork of it reads the file and
sends the result back over a pipe as built-in values (marshal: already loaded, unlike pickle's
0.4 MB), then exits. --check is not PID 1 and reads in its own process.
"""

from __future__ import annotations

import marshal
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from entrypoint import reaper
from entrypoint.poolconfig import ConfigError, PoolConfig, Problem


class Started(NamedTuple):
    """The config at start, the file every reload reads (None: the environment), what .env added."""

    config: PoolConfig
    path: str | None
    dotenv: dict[str, str]


def read_at_start(explicit: str | None, cwd: str) -> Started:
    """.env (never overriding what is set), then the file it and the flags point to, or the environment."""
    from collections import ChainMap
    from pathlib import Path

    from entrypoint.config import find_config_file, load_config, read_dotenv

    added: dict[str, str] = {}
    env = ChainMap(added, os.environ)  # what .env sets lands in `added`
    read_dotenv(Path(cwd), env)
    found = find_config_file(explicit, env, Path(cwd))
    path = None if found is None else str(found)
    return Started(load_config(path, env, Path(cwd)), path, added)


def start_in_child(explicit: str | None, cwd: str) -> Started:
    """read_at_start in a child; its ConfigError is raised here."""

    def read() -> tuple[Any, ...]:
        started = read_at_start(explicit, cwd)
        return started.config.to_plain(), started.path, started.dotenv

    plain_config, path, dotenv = _in_child(read, "config")
    return Started(PoolConfig.from_plain(plain_config), path, dotenv)


def reload_in_child(path: str | None, cwd: str) -> PoolConfig:
    """The file found at start (or the environment) read again in a child; its ConfigError is raised here."""

    def read() -> dict[str, Any]:
        from pathlib import Path

        from entrypoint.config import load_config

        return load_config(path, os.environ, Path(cwd)).to_plain()

    return PoolConfig.from_plain(_in_child(read, path or "environment"))


def _in_child(read: Callable[[], Any], source: str) -> Any:
    """`read()`'s value, computed in a fork of ours that we wait for ourselves.

    The child is reaped here, by its pid, before the pool's loop runs again: the loop's
    waitpid(-1) never sees it, so it is never taken for a worker or an orphan.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as error:
        os.close(read_end)
        os.close(write_end)
        raise ConfigError.one(source, None, "", f"cannot start a process to read it ({error.strerror})") from None
    if pid == 0:
        os.close(read_end)
        _answer(read, write_end)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read()
    finally:
        _, status = os.waitpid(pid, 0)
    try:
        kind, value = marshal.loads(answer)
    except (EOFError, ValueError, TypeError):
        raise ConfigError.one(
            source, None, "", f"could not be read: the process reading it {reaper.describe(status)}"
        ) from None
    if kind == "problems":
        raise ConfigError(Problem(*problem) for problem in value)
    return value


def _answer(read: Callable[[], Any], pipe: int) -> None:
    """In the child: never returns. A bug of ours shows its traceback and leaves the pipe empty."""
    code = 0
    try:
        try:
            answer = ("config", read())
        except ConfigError as error:
            answer = ("problems", [tuple(problem) for problem in error.problems])
        with os.fdopen(pipe, "wb") as out:
            out.write(marshal.dumps(answer))
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import sys
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        code = 1
    finally:
        os._exit(code)
