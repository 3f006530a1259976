"""Where the pool's configuration comes from: the file to read, the .env file, or the environment alone."""

from __future__ import annotations

import io
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from entrypoint import configvalues as values
from entrypoint.poolconfig import MAX_COUNT, ConfigError, Group, PoolConfig, Problem

_DEFAULT_FILES = ("pool.yml", "config/resque-pool.yml", "resque-pool.yml")


def find_config_file(explicit: str | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    """The pool file to read, or None when the environment alone describes the pool."""
    found = _locate(explicit, env, cwd)
    return None if found is None else found[0]


def load_config(explicit: str | None, env: Mapping[str, str], cwd: Path,
                preload: tuple[str, ...] | None = None) -> PoolConfig:
    """Read and check the pool file (or the environment); ConfigError lists every problem.

    `preload` (--preload), else WORKER_PRELOAD, replaces the file's pool.preload.
    """
    found = _locate(explicit, env, cwd)
    if found is None:
        return _from_environment(env, preload)
    path, shown = found
    # Imported here: PyYAML is needed only when there is a file to read.
    from entrypoint.configfile import from_file

    return from_file(path, shown, env, preload)


def read_dotenv(cwd: Path, environ: MutableMapping[str, str]) -> Path | None:
    """Fill `environ` from cwd/.env, never overriding what is set; the .env path, or None."""
    path = cwd / ".env"
    if not path.exists():
        return None
    from dotenv import dotenv_values  # only a project that has a .env pays for the import

    # Read here, not by python-dotenv, which quietly treats a .env it cannot open as empty.
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError.one(".env", None, "", f"cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError.one(".env", None, "", "cannot read: not UTF-8 text") from None
    # Literal values, as Docker's --env-file reads them: python-dotenv would interpolate from
    # os.environ rather than from the environment we were handed.
    unparsable = _unparsable_dotenv_lines(text)
    if unparsable:  # before python-dotenv reads it, or it warns on stderr in its own words
        raise ConfigError(Problem(".env", line, "", "cannot parse this line (expected NAME=value)")
                          for line in unparsable)
    variables = dotenv_values(stream=io.StringIO(text), interpolate=False)
    problems = []
    for name, value in variables.items():
        if value is None or name in environ:
            continue
        if not name or "=" in name or "\0" in name or "\0" in value:
            problems.append(Problem(".env", None, name, "not a usable environment variable"))
            continue
        environ[name] = value
    if problems:
        raise ConfigError(problems)
    return path


def _unparsable_dotenv_lines(text: str) -> list[int]:
    """Lines python-dotenv would skip with a warning of its own (unprefixed, on stderr)."""
    from dotenv.parser import parse_stream

    return [binding.original.line for binding in parse_stream(io.StringIO(text)) if binding.error]


def _locate(explicit: str | None, env: Mapping[str, str], cwd: Path) -> tuple[Path, str] | None:
    # Lookup order: --config FILE, then POOL_CONFIG, then resque-pool's RESQUE_POOL_CONFIG (a path
    # given but unusable is an error, never a fall-through); then the first of pool.yml (ours),
    # config/resque-pool.yml and resque-pool.yml (resque-pool's) that exists; else None, and the
    # environment describes the pool. Empty values count as unset, as `docker run -e POOL_CONFIG=`
    # is the usual way to clear one.
    given = [("config", explicit)] + [
        (name, env.get(name)) for name in ("POOL_CONFIG", "RESQUE_POOL_CONFIG")
    ]
    for key, value in given:
        if value:
            return _usable(cwd / value, value, key)
    for name in _DEFAULT_FILES:
        if (cwd / name).exists():
            return _usable(cwd / name, name, "config")
    return None


def _usable(path: Path, shown: str, key: str) -> tuple[Path, str]:
    try:
        if path.is_dir():
            raise ConfigError.one(shown, None, key, "is a directory")
        with path.open("rb"):
            return path, shown
    except FileNotFoundError:
        raise ConfigError.one(shown, None, key, "no such file") from None
    except OSError as err:
        raise ConfigError.one(shown, None, key, f"cannot read: {err.strerror}") from None


# ---------------------------------------------------------------------------------------------
# No file: WORKER_CONCURRENCY, QUEUES and WORKER_COMMAND make one group. WORKER_CONCURRENCY is
# read only here; a file that wants it says ${WORKER_CONCURRENCY}.


def _from_environment(env: Mapping[str, str], preload: tuple[str, ...] | None) -> PoolConfig:
    problems: list[Problem] = []
    preload = values.preload_override(preload, env, problems) or ()
    name = env.get("QUEUES", "").strip() or "*"
    queues: tuple[str, ...] = ()
    count: int | None = 1
    try:
        queues = values.queues(name)
    except ValueError as err:
        problems.append(Problem("environment", None, "QUEUES", str(err)))
    try:
        count = values.count(env.get("WORKER_CONCURRENCY", "").strip() or "1")
    except ValueError as err:
        problems.append(Problem("environment", None, "WORKER_CONCURRENCY", str(err)))
    template = values.env_command(env, problems)
    if problems:
        raise ConfigError(problems)
    group = Group(
        name=name,
        queues=queues,
        count=count,
        min_count=1 if count is None else count,
        max_count=MAX_COUNT if count is None else count,
        argv=(),
    )
    return PoolConfig(
        source="environment", app_env=None, preload=preload,
        groups=(values.with_argv(group, template, env, preloaded=bool(preload)),),
    )
