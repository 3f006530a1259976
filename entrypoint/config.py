"""Pool configuration: find the file, read resque-pool YAML or the environment, and report every problem."""

from __future__ import annotations

import io
import re
import shlex
import signal
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from entrypoint.console import one_line
from entrypoint.memory import parse_size
from entrypoint.signals import parse_signal

MAX_COUNT = 1000  # the documented cap on workers in one group

# A pool file is a few dozen lines; these bounds keep hostile files (huge, alias bombs, merge
# chains) from costing more than a moment or the stack.
_MAX_FILE_BYTES = 1024 * 1024
_MAX_NODES = 10_000
_MAX_MERGE_DEPTH = 32
# Longer than any platform waits before SIGKILL, and small enough that no timer overflows.
_MAX_SECONDS = 7 * 24 * 3600.0

_DEFAULT_FILES = ("pool.yml", "config/resque-pool.yml", "resque-pool.yml")
_APP_ENV_VARIABLES = ("APP_ENV", "RACK_ENV", "RAILS_ENV", "RESQUE_ENV")
_GROUP_KEYS = ("command", "count", "env", "max", "max_memory", "min", "stop_signal", "term_timeout")
_POOL_KEYS = (
    "backoff_max",
    "backoff_min",
    "backoff_reset",
    "command",
    "env",
    "exit_on_crash_loop",
    "max_memory",
    "max_workers",
    "memory_headroom",
    "memory_interval",
    "memory_limit",
    "prefix_output",
    "spawn_delay",
    "stop_signal",
    "term_timeout",
)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"
_ERB_HINT = (
    "ERB (<%= ... %>) is not supported; use ${VAR:-default} instead, e.g. ${WORKER_CONCURRENCY:-5}"
)

_REFERENCE = re.compile(r"\$(?:(\$)|\{([^}]*)(\}?))")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Only {identifier} is a placeholder, so braces in JSON arguments or `{}` stay as written.
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLACEHOLDERS = ("queues", "queues_csv", "group")
_WHOLE = re.compile(r"[0-9]{1,9}")
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
# YAML 1.1's boolean words, which resque-pool's Ruby YAML also reads as booleans.
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})

_T = TypeVar("_T")
_D = TypeVar("_D")


@dataclass(frozen=True)
class Problem:
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


@dataclass(frozen=True)
class Group:
    """Workers that serve the same queues with the same command."""

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

    @property
    def auto(self) -> bool:
        return self.count is None


@dataclass(frozen=True)
class PoolConfig:
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


_DEFAULT = PoolConfig(source="", app_env=None, groups=())


def find_config_file(explicit: str | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    """The pool file to read, or None when the environment alone describes the pool."""
    found = _locate(explicit, env, cwd)
    return None if found is None else found[0]


def load_config(explicit: str | None, env: Mapping[str, str], cwd: Path) -> PoolConfig:
    """Read and check the pool file (or the environment); ConfigError lists every problem."""
    found = _locate(explicit, env, cwd)
    if found is None:
        return _from_environment(env)
    path, shown = found
    return _from_file(path, shown, env)


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
        raise _one(".env", None, "", f"cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise _one(".env", None, "", "cannot read: not UTF-8 text") from None
    # Literal values, as Docker's --env-file reads them: python-dotenv would interpolate from
    # os.environ rather than from the environment we were handed.
    unparsable = _unparsable_dotenv_lines(text)
    if unparsable:  # before python-dotenv reads it, or it warns on stderr in its own words
        raise ConfigError(Problem(".env", line, "", "cannot parse this line (expected NAME=value)")
                          for line in unparsable)
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    problems = []
    for name, value in values.items():
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
            raise _one(shown, None, key, "is a directory")
        with path.open("rb"):
            return path, shown
    except FileNotFoundError:
        raise _one(shown, None, key, "no such file") from None
    except OSError as err:
        raise _one(shown, None, key, f"cannot read: {err.strerror}") from None


def _one(source: str, line: int | None, key: str, message: str) -> ConfigError:
    return ConfigError([Problem(source, line, key, message)])


def _in_order(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda problem: problem.line or 0)


def _app_env(env: Mapping[str, str]) -> str | None:
    return next((env[name] for name in _APP_ENV_VARIABLES if env.get(name)), None)


# ---------------------------------------------------------------------------------------------
# Values: every parser takes the text (after ${VAR} substitution) and raises ValueError saying
# what was expected. Text rather than YAML's typed values, so "5" and 5 mean the same, as they
# must once ${WORKER_CONCURRENCY} has been substituted into a count.


def _got(text: str) -> str:
    return "nothing" if not text.strip() else repr(text)


def _substitute(text: str, env: Mapping[str, str]) -> str:
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


def _count(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    return _whole(text, 0, MAX_COUNT, " or auto")


def _bound(text: str) -> int:
    return _whole(text, 0, MAX_COUNT)


def _max_workers(text: str) -> int:
    return _whole(text, 1, MAX_COUNT)


def _seconds(text: str) -> float:
    word = text.strip()
    if _DECIMAL.fullmatch(word) and float(word) <= _MAX_SECONDS:
        return float(word)
    raise ValueError(f"expected a number of seconds from 0 to {_MAX_SECONDS:g}, got {_got(text)}")


def _interval(text: str) -> float:
    word = text.strip()
    if _DECIMAL.fullmatch(word) and 0.1 <= float(word) <= _MAX_SECONDS:
        return float(word)
    raise ValueError(f"expected a number of seconds from 0.1 to {_MAX_SECONDS:g}, got {_got(text)}")


def _fraction(text: str) -> float:
    word = text.strip()
    if _DECIMAL.fullmatch(word) and 0 < float(word) <= 1:
        return float(word)
    raise ValueError(f"expected a fraction above 0 and at most 1 (e.g. 0.85), got {_got(text)}")



def _flag(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError(f"expected true or false, got {_got(text)}")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except OverflowError:
        raise ValueError(f"{text!r} is too large a size") from None


# The pool-wide settings that are plain values, and how each is read.
_POOL_SETTINGS: dict[str, Callable[[str], object]] = {
    "spawn_delay": _seconds,
    "backoff_min": _seconds,
    "backoff_max": _seconds,
    "backoff_reset": _seconds,
    "exit_on_crash_loop": _flag,
    "prefix_output": _flag,
    "memory_headroom": _fraction,
    "memory_limit": _size,
    "memory_interval": _interval,
}


def _queues(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(","))
    if not all(names):
        raise ValueError(f"expected queue names separated by commas, got {_got(text)}")
    if any(not c.isprintable() and c != " " for c in text):
        raise ValueError("a queue name cannot contain control characters (NUL, newline, tab ...)")
    return names


def _template(command: str | list[str]) -> tuple[str, ...]:
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


def _with_argv(group: Group, template: tuple[str, ...] | None, env: Mapping[str, str]) -> Group:
    if template is not None:
        return replace(group, argv=_fill(template, group))
    # Imported here: RQ is an optional dependency, and a pool that gives all its commands never
    # needs it.
    from entrypoint.rqworker import default_worker_argv

    return replace(group, argv=default_worker_argv(group.queues, env))


def _env_command(env: Mapping[str, str], problems: list[Problem]) -> tuple[str, ...] | None:
    command = env.get("WORKER_COMMAND")
    if not command:
        return None
    if "\0" in command:
        problems.append(Problem("environment", None, "WORKER_COMMAND", "contains a NUL character"))
        return None
    try:
        return _template(command)
    except ValueError as err:
        problems.append(Problem("environment", None, "WORKER_COMMAND", str(err)))
        return None


# ---------------------------------------------------------------------------------------------
# No file: WORKER_CONCURRENCY, QUEUES and WORKER_COMMAND make one group. WORKER_CONCURRENCY is
# read only here; a file that wants it says ${WORKER_CONCURRENCY}.


def _from_environment(env: Mapping[str, str]) -> PoolConfig:
    problems: list[Problem] = []
    name = env.get("QUEUES", "").strip() or "*"
    queues: tuple[str, ...] = ()
    count: int | None = 1
    try:
        queues = _queues(name)
    except ValueError as err:
        problems.append(Problem("environment", None, "QUEUES", str(err)))
    try:
        count = _count(env.get("WORKER_CONCURRENCY", "").strip() or "1")
    except ValueError as err:
        problems.append(Problem("environment", None, "WORKER_CONCURRENCY", str(err)))
    template = _env_command(env, problems)
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
        source="environment", app_env=None, groups=(_with_argv(group, template, env),)
    )


# ---------------------------------------------------------------------------------------------
# The file.


def _from_file(path: Path, shown: str, env: Mapping[str, str]) -> PoolConfig:
    root = _compose(path, shown)
    reader = _FileReader(shown, env)
    try:
        settings, templates = reader.read(root)
    except _TooManyNodes as err:
        reader.problem(err.line, "", f"more than {_MAX_NODES} YAML nodes once aliases are expanded")
        raise ConfigError(_in_order(reader.problems)) from None
    if reader.problems:
        raise ConfigError(_in_order(reader.problems))
    # Commands are built only now, so default_worker_argv is imported only for a pool that will run.
    groups = tuple(
        _with_argv(group, template, env)
        for group, template in zip(settings.groups, templates, strict=True)
    )
    return replace(settings, groups=groups)


def _compose(path: Path, shown: str) -> MappingNode:
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_FILE_BYTES + 1)
    except OSError as err:
        raise _one(shown, None, "", f"cannot read: {err.strerror}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise _one(shown, None, "", "larger than 1 MiB; a pool file is a few lines of queue: count")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise _one(
            shown, line, "", "not UTF-8 text (a binary or differently encoded file?)"
        ) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        message = f"YAML syntax error: {err.problem or err.context}"
        if "<%" in text:
            message += f" ({_ERB_HINT})"
        raise _one(shown, None if mark is None else mark.line + 1, "", message) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        raise _one(
            shown, line, "", f"character U+{err.character:04X} is not allowed in YAML"
        ) from None
    except RecursionError:
        raise _one(shown, None, "", "nested too deeply for a pool file") from None
    if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL_TAG):
        raise _one(shown, None, "", "empty file: expected queue: count entries")
    if not isinstance(root, MappingNode):
        raise _one(shown, _line(root), "", f"expected queue: count entries, got {_kind(root)}")
    return root


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    return "a list" if isinstance(node, SequenceNode) else "a single value"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Invalid(Exception):
    """The value is wrong and its Problem is already recorded."""


class _TooManyNodes(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


@dataclass(frozen=True)
class _Entry:
    line: int  # of the key
    path: str  # the dotted key the user would look for, e.g. production.crunch_data.count
    value: Node


@dataclass(frozen=True)
class _GroupDefaults:
    """What pool: gives every group that does not say otherwise."""

    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    stop_signal: int = int(signal.SIGTERM)
    term_timeout: float | None = None
    max_memory: int | None = None
    max_workers: int = MAX_COUNT


class _FileReader:
    """Walks the composed node tree itself, so every problem keeps the line it is on."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.problems: list[Problem] = []
        self._budget = _MAX_NODES
        # Flattened once per node: an alias used a thousand times costs its size once.
        self._flattened: dict[int, dict[str, _Entry]] = {}
        self._flattening: set[int] = set()

    def problem(self, line: int | None, key: str, message: str) -> None:
        self.problems.append(Problem(self.source, line, key, message))

    def fail(self, node: Node, path: str, message: str) -> NoReturn:
        self.problem(_line(node), path, message)
        raise _Invalid

    def read(self, root: MappingNode) -> tuple[PoolConfig, list[tuple[str, ...] | None]]:
        """The settings with groups (argv still empty) and each group's command template."""
        top = self.mapping(root, "")
        sections = [
            name for name, entry in top.items() if name != "pool" and self.is_section(entry)
        ]
        app_env = _app_env(self.env)
        chosen = app_env if app_env in sections else None
        layers = [top]
        if chosen is not None:
            # resque-pool semantics: the chosen section's keys replace the top level's.
            layers.append(self.mapping(top[chosen].value, chosen))
        pool: dict[str, _Entry] = {}
        group_entries: dict[str, _Entry] = {}
        for layer in layers:
            for name, entry in layer.items():
                # `pool` is reserved for settings, so no queue may be named pool.
                if name == "pool":
                    pool.update(self.pool_entries(entry))
                elif not self.is_section(entry):
                    group_entries[name] = entry
                elif layer is not top:
                    self.problem(
                        entry.line,
                        entry.path,
                        "expected a count, or a mapping with count (sections cannot nest)",
                    )
        # Other sections are never read: they may name variables set only in their environment.
        settings, defaults = self.settings(pool)
        built = [self.group(name, entry, defaults) for name, entry in group_entries.items()]
        if not built:
            hint = (
                f" (sections {', '.join(sections)}: set one of {', '.join(_APP_ENV_VARIABLES)})"
                if sections
                else ""
            )
            self.problem(None, "", f"no worker groups{hint}")
        shared = defaults.command
        if shared is None and any(template is None for _, template in built):
            shared = _env_command(self.env, self.problems)
        groups = tuple(group for group, _ in built)
        templates = [shared if template is None else template for _, template in built]
        return replace(settings, app_env=chosen, groups=groups), templates

    def is_section(self, entry: _Entry) -> bool:
        return isinstance(entry.value, MappingNode) and "count" not in self.mapping(
            entry.value, entry.path
        )

    def pool_entries(self, entry: _Entry) -> dict[str, _Entry]:
        if isinstance(entry.value, MappingNode):
            return self.mapping(entry.value, entry.path)
        self.problem(
            entry.line,
            entry.path,
            "expected a mapping of settings (pool is reserved: no queue may be named pool)",
        )
        return {}

    def settings(self, entries: dict[str, _Entry]) -> tuple[PoolConfig, _GroupDefaults]:
        self.unknown(entries, _POOL_KEYS)
        base = _GroupDefaults()
        defaults = _GroupDefaults(
            command=self.get(entries, "command", self.command, None),
            env=self.get(entries, "env", self.environment, base.env),
            stop_signal=self.get(
                entries, "stop_signal", self.scalar(parse_signal), base.stop_signal
            ),
            term_timeout=self.get(entries, "term_timeout", self.scalar(_seconds), None),
            max_memory=self.get(entries, "max_memory", self.scalar(_size), None),
            max_workers=self.get(
                entries, "max_workers", self.scalar(_max_workers), base.max_workers
            ),
        )
        settings = PoolConfig(
            source=self.source,
            app_env=None,
            groups=(),
            term_timeout=defaults.term_timeout,
            **{
                key: self.get(entries, key, self.scalar(parse), getattr(_DEFAULT, key))
                for key, parse in _POOL_SETTINGS.items()
            },
        )
        if settings.backoff_min > settings.backoff_max:
            blamed = entries.get("backoff_max") or entries["backoff_min"]
            self.problem(
                blamed.line,
                blamed.path,
                f"backoff_min ({settings.backoff_min:g}) must not exceed "
                f"backoff_max ({settings.backoff_max:g})",
            )
        return settings, defaults

    def group(
        self, name: str, entry: _Entry, defaults: _GroupDefaults
    ) -> tuple[Group, tuple[str, ...] | None]:
        queues: tuple[str, ...] = ()
        if "<%" in name:
            self.problem(entry.line, entry.path, _ERB_HINT)
        else:
            try:
                queues = _queues(name)
            except ValueError as err:
                self.problem(entry.line, entry.path, str(err))
        # `queue: 5` is shorthand for `queue: {count: 5}`.
        fields = (
            self.mapping(entry.value, entry.path)
            if isinstance(entry.value, MappingNode)
            else {"count": entry}
        )
        self.unknown(fields, _GROUP_KEYS)
        # An unreadable count reads as auto, so it raises no second problem about min and max.
        count = self.get(fields, "count", self.scalar(_count), None)
        low = self.get(fields, "min", self.scalar(_bound), 1)
        high = self.get(fields, "max", self.scalar(_bound), defaults.max_workers)
        if count is not None:
            for key in ("min", "max"):
                if key in fields:
                    self.problem(
                        fields[key].line, fields[key].path, "applies only when count is auto"
                    )
            low = high = count
        elif low > high:
            blamed = fields.get("max") or fields["min"]
            self.problem(blamed.line, blamed.path, f"min ({low}) must not exceed max ({high})")
        env = {**defaults.env, **self.get(fields, "env", self.environment, {})}
        group = Group(
            name=name,
            queues=queues,
            count=count,
            min_count=low,
            max_count=high,
            argv=(),
            env=tuple(sorted(env.items())),
            stop_signal=self.get(
                fields, "stop_signal", self.scalar(parse_signal), defaults.stop_signal
            ),
            term_timeout=self.get(
                fields, "term_timeout", self.scalar(_seconds), defaults.term_timeout
            ),
            max_memory=self.get(fields, "max_memory", self.scalar(_size), defaults.max_memory),
        )
        return group, self.get(fields, "command", self.command, None)

    def unknown(self, entries: dict[str, _Entry], known: tuple[str, ...]) -> None:
        for name, entry in entries.items():
            if name not in known:
                self.problem(
                    entry.line, entry.path, f"unknown key; expected one of {', '.join(known)}"
                )

    def get(
        self, entries: Mapping[str, _Entry], key: str, read: Callable[[Node, str], _T], default: _D
    ) -> _T | _D:
        entry = entries.get(key)
        if entry is None:
            return default
        try:
            return read(entry.value, entry.path)
        except _Invalid:
            return default

    def mapping(self, node: MappingNode, path: str, depth: int = 0) -> dict[str, _Entry]:
        """Keys in order with `<<` merges expanded: own keys win, then earlier merged mappings."""
        done = self._flattened.get(id(node))
        if done is not None:
            return done
        if id(node) in self._flattening:
            self.problem(_line(node), path, "a merge key (<<) includes the mapping it is in")
            return {}
        if depth > _MAX_MERGE_DEPTH:
            self.problem(
                _line(node), path, f"merge keys (<<) nested more than {_MAX_MERGE_DEPTH} deep"
            )
            return {}
        self._flattening.add(id(node))
        entries: dict[str, _Entry] = {}
        own: dict[str, int] = {}
        for key, value in node.value:
            self.spend(key)
            if key.tag == _MERGE_TAG:
                for source in self.merge_sources(value, path):
                    self.spend(source)
                    for name, entry in self.mapping(source, path, depth + 1).items():
                        self.spend(entry.value)
                        if name not in own:
                            entries.setdefault(name, entry)
            elif not isinstance(key, ScalarNode):
                self.problem(_line(key), path, f"expected a name as key, got {_kind(key)}")
            elif key.value in own:
                self.problem(
                    _line(key),
                    _join(path, key.value),
                    f"duplicate key, first at line {own[key.value]}",
                )
            else:
                own[key.value] = _line(key)
                entries[key.value] = _Entry(_line(key), _join(path, key.value), value)
        self._flattening.discard(id(node))
        self._flattened[id(node)] = entries
        return entries

    def merge_sources(self, node: Node, path: str) -> list[MappingNode]:
        if isinstance(node, MappingNode):
            return [node]
        if isinstance(node, SequenceNode) and all(
            isinstance(item, MappingNode) for item in node.value
        ):
            return node.value
        self.problem(
            _line(node), _join(path, "<<"), "a merge key (<<) takes a mapping or a list of mappings"
        )
        return []

    def spend(self, node: Node) -> None:
        self._budget -= 1
        if self._budget < 0:
            raise _TooManyNodes(_line(node))

    def text(self, node: Node, path: str) -> str:
        """The scalar's text with ${VAR} substituted."""
        if not isinstance(node, ScalarNode):
            self.fail(node, path, f"expected a single value, got {_kind(node)}")
        # A YAML null (`key:` or `~`) is empty text, not the word "null".
        raw = "" if node.tag == _NULL_TAG else node.value
        if "<%" in raw:
            self.fail(node, path, _ERB_HINT)
        try:
            text = _substitute(raw, self.env)
        except ValueError as err:
            self.fail(node, path, str(err))
        if "\0" in text:
            self.fail(node, path, "contains a NUL character")
        return text

    def scalar(self, parse: Callable[[str], _T]) -> Callable[[Node, str], _T]:
        def read(node: Node, path: str) -> _T:
            text = self.text(node, path)
            try:
                return parse(text)
            except ValueError as err:
                self.fail(node, path, str(err))

        return read

    def command(self, node: Node, path: str) -> tuple[str, ...]:
        command: str | list[str]
        if isinstance(node, SequenceNode):
            command = []
            for item in node.value:
                self.spend(item)
                command.append(self.text(item, path))
        else:
            command = self.text(node, path)
        try:
            return _template(command)
        except ValueError as err:
            self.fail(node, path, str(err))

    def environment(self, node: Node, path: str) -> dict[str, str]:
        if not isinstance(node, MappingNode):
            self.fail(node, path, f"expected a mapping of NAME: value, got {_kind(node)}")
        env = {}
        for name, entry in self.mapping(node, path).items():
            if not name or "=" in name or "\0" in name:
                self.problem(entry.line, entry.path, "not a usable environment variable name")
                continue
            try:
                env[name] = self.text(entry.value, entry.path)
            except _Invalid:
                continue
        return env
