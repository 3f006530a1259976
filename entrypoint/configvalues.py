"""Config values: ${VAR} substitution, every value parser, and worker commands with their placeholders.

Every parser takes the text (after ${VAR} substitution) and raises ValueError saying what was
expected. Text rather than YAML's typed values, so "5" and 5 mean the same, as they must once
${WORKER_CONCURRENCY} has been substituted into a count.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping

from entrypoint.memory import parse_size
from entrypoint.poolconfig import ELASTIC_AUTO, MAX_COUNT, MAX_SECONDS, Group, Problem

_REFERENCE = re.compile(r"\$(?:(\$)|\{([^}]*)(\}?))")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Only {identifier} is a placeholder, so braces in JSON arguments or `{}` stay as written.
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLACEHOLDERS = ("queues", "queues_csv", "group")
_WHOLE = re.compile(r"[0-9]{1,9}")
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
# YAML 1.1's boolean words, which resque-pool's Ruby YAML also reads as booleans.
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
ERB_HINT = (
    "ERB (<%= ... %>) is not supported; use ${VAR:-default} instead, e.g. ${WORKER_CONCURRENCY:-5}"
)


def _got(text: str) -> str:
    return "nothing" if not text.strip() else repr(text)


def substitute(text: str, env: Mapping[str, str]) -> str:
    """${VAR}, ${VAR:-default} and $$ replaced from `env`."""

    def value(match: re.Match[str]) -> str:
        if match[1]:
            return "$"
        body, closed = match[2], match[3]
        if not closed:
            raise ValueError(f"unterminated ${{{body}: expected ${{NAME}} or ${{NAME:-default}}")
        name, has_default, default = body.partition(":-")
        if not _VARIABLE.fullmatch(name):
            raise ValueError(f"${{{body}}} is not ${{NAME}} or ${{NAME:-default}}")
        if has_default:
            return env.get(name) or default
        if name not in env:
            raise ValueError(f"environment variable {name} is not set and has no default")
        return env[name]

    return _REFERENCE.sub(value, text)


def _whole(text: str, low: int, high: int, alternative: str = "") -> int:
    word = text.strip()
    if _WHOLE.fullmatch(word) and low <= int(word) <= high:
        return int(word)
    raise ValueError(f"expected a whole number from {low} to {high}{alternative}, got {_got(text)}")


def count(text: str) -> int | None:
    """A group's count; None for auto."""
    if text.strip().lower() == "auto":
        return None
    return _whole(text, 0, MAX_COUNT, " or auto")


def group_count(text: str) -> int | str | None:
    """A group's count in a file: a number, auto (None) or elastic."""
    if text.strip().lower() == "elastic":
        return "elastic"
    try:
        return count(text)
    except ValueError as err:
        raise ValueError(str(err).replace(" or auto,", ", auto or elastic,")) from None


def elastic_total(text: str) -> int:
    """pool.elastic: how many workers the elastic groups share, or auto (ELASTIC_AUTO)."""
    if text.strip().lower() == "auto":
        return ELASTIC_AUTO
    return _whole(text, 1, MAX_COUNT, " or auto")


def bound(text: str) -> int:
    """An auto group's min or max."""
    return _whole(text, 0, MAX_COUNT)


def max_workers(text: str) -> int:
    return _whole(text, 1, MAX_COUNT)


def seconds(text: str) -> float:
    word = text.strip()
    if _DECIMAL.fullmatch(word) and float(word) <= MAX_SECONDS:
        return float(word)
    raise ValueError(f"expected a number of seconds from 0 to {MAX_SECONDS:g}, got {_got(text)}")


def _interval(text: str) -> float:
    word = text.strip()
    if _DECIMAL.fullmatch(word) and 0.1 <= float(word) <= MAX_SECONDS:
        return float(word)
    raise ValueError(f"expected a number of seconds from 0.1 to {MAX_SECONDS:g}, got {_got(text)}")


def _fraction(text: str) -> float:
    word = text.strip()
    if _DECIMAL.fullmatch(word) and 0 < float(word) <= 1:
        return float(word)
    raise ValueError(f"expected a fraction above 0 and at most 1 (e.g. 0.85), got {_got(text)}")


def flag(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError(f"expected true or false, got {_got(text)}")


def size(text: str) -> int:
    try:
        return parse_size(text)
    except OverflowError:
        raise ValueError(f"{text!r} is too large a size") from None


# The pool-wide settings that are plain values, and how each is read.
POOL_SETTINGS: dict[str, Callable[[str], object]] = {
    "spawn_delay": seconds,
    "backoff_min": seconds,
    "backoff_max": seconds,
    "backoff_reset": seconds,
    "exit_on_crash_loop": flag,
    "prefix_output": flag,
    "memory_headroom": _fraction,
    "memory_limit": size,
    "memory_interval": _interval,
    "elastic": elastic_total,
    "grow_after": seconds,
    "shrink_after": seconds,
    "fleet": flag,
}


def queues(text: str) -> tuple[str, ...]:
    """A group's name as its queues: `high,low` is two queues in that priority order."""
    names = tuple(part.strip() for part in text.split(","))
    if not all(names):
        raise ValueError(f"expected queue names separated by commas, got {_got(text)}")
    if any(not c.isprintable() and c != " " for c in text):
        raise ValueError("a queue name cannot contain control characters (NUL, newline, tab ...)")
    return names


def modules(text: str) -> tuple[str, ...]:
    """`a.b, c`: module names to import, in that order."""
    names = tuple(part.strip() for part in text.split(","))
    for name in names:
        if not _MODULE.fullmatch(name):
            raise ValueError(f"expected module names such as myapp.jobs, separated by commas, got {_got(text)}")
    return names


def reference(text: str) -> str:
    """`package.module:function`: something to call, named the way entry points are."""
    module, colon, attribute = text.strip().partition(":")
    if not colon or not _MODULE.fullmatch(module) or not _MODULE.fullmatch(attribute):
        raise ValueError(f"expected module:function, such as myapp.workers:main, got {_got(text)}")
    return text.strip()


def split_command(command: str | list[str]) -> tuple[str, ...]:
    """A command split into its arguments, placeholders checked but not yet filled in."""
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as err:
            raise ValueError(
                f"cannot split the command ({err}); fix its quoting or give a list"
            ) from None
    else:
        argv = command
    if not argv:
        raise ValueError("expected a command, got an empty one")
    for arg in argv:
        for match in _PLACEHOLDER.finditer(arg):
            if match[1] not in _PLACEHOLDERS:
                raise ValueError(
                    f"unknown placeholder {match[0]}; "
                    "expected {queues}, {queues_csv} or {group}"
                )
            if match[1] == "queues" and arg != "{queues}":
                raise ValueError(
                    f"{{queues}} must be a whole argument, got {arg!r}; "
                    "use {queues_csv} inside one"
                )
    return tuple(argv)


def _fill(template: tuple[str, ...], group: Group) -> tuple[str, ...]:
    # Each queue name becomes exactly one argument and is never re-split or re-scanned, so names
    # with spaces, quotes or braces reach the worker as written.
    values = {"queues_csv": ",".join(group.queues), "group": group.name}
    argv: list[str] = []
    for arg in template:
        if arg == "{queues}":
            argv.extend(group.queues)
        else:
            argv.append(_PLACEHOLDER.sub(lambda match: values[match[1]], arg))
    return tuple(argv)


def with_argv(group: Group, template: tuple[str, ...] | None, env: Mapping[str, str], preloaded: bool) -> Group:
    """The group with what it runs: its `call` in a fork; else its command; else the default RQ
    worker, which runs in a fork of the preloaded app when there is one."""
    if group.call is not None:
        return group._replace(forked=True)
    if template is not None:
        return group._replace(argv=_fill(template, group))
    # Imported here: RQ is an optional dependency, and a pool that gives all its commands never
    # needs it.
    from entrypoint.rqworker import default_worker_argv

    return group._replace(argv=default_worker_argv(group.queues, env), forked=preloaded)


def preload_override(explicit: tuple[str, ...] | None, env: Mapping[str, str],
                     problems: list[Problem]) -> tuple[str, ...] | None:
    """--preload, else WORKER_PRELOAD: they replace the file's pool.preload; None when neither is set."""
    if explicit:
        return explicit
    text = env.get("WORKER_PRELOAD", "").strip()
    if not text:
        return None
    try:
        return modules(text)
    except ValueError as err:
        problems.append(Problem("environment", None, "WORKER_PRELOAD", str(err)))
        return None


def env_command(env: Mapping[str, str], problems: list[Problem]) -> tuple[str, ...] | None:
    """WORKER_COMMAND as a template, None when unset; a bad one adds its problem."""
    command = env.get("WORKER_COMMAND")
    if not command:
        return None
    if "\0" in command:
        problems.append(Problem("environment", None, "WORKER_COMMAND", "contains a NUL character"))
        return None
    try:
        return split_command(command)
    except ValueError as err:
        problems.append(Problem("environment", None, "WORKER_COMMAND", str(err)))
        return None
