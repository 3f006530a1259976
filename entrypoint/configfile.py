"""Reading a resque-pool YAML file into a PoolConfig, every problem with the line it is on."""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn, TypeVar

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from entrypoint import configvalues as values
from entrypoint.configyaml import NULL_TAG, compose, kind_of, line_of
from entrypoint.poolconfig import MAX_COUNT, ConfigError, Group, PoolConfig, Problem
from entrypoint.signals import parse_signal

# A pool file is a few dozen lines; these bounds keep hostile files (alias bombs, merge chains)
# from costing more than a moment or the stack.
_MAX_NODES = 10_000
_MAX_MERGE_DEPTH = 32

_APP_ENV_VARIABLES = ("APP_ENV", "RACK_ENV", "RAILS_ENV", "RESQUE_ENV")
_GROUP_KEYS = ("call", "command", "count", "env", "max", "max_memory", "min", "requeue_on_shutdown", "stop_signal",
               "term_timeout")
_POOL_KEYS = (
    "after_fork",
    "backoff_max",
    "backoff_min",
    "backoff_reset",
    "command",
    "elastic",
    "env",
    "exit_on_crash_loop",
    "grow_after",
    "fleet",
    "max_memory",
    "max_workers",
    "memory_headroom",
    "memory_interval",
    "memory_limit",
    "prefix_output",
    "preload",
    "requeue_on_shutdown",
    "shrink_after",
    "spawn_delay",
    "stop_signal",
    "term_timeout",
)
_MERGE_TAG = "tag:yaml.org,2002:merge"

_T = TypeVar("_T")
_D = TypeVar("_D")

_DEFAULT = PoolConfig(source="", app_env=None, groups=())


def from_file(path: Path, shown: str, env: Mapping[str, str],
              preload: tuple[str, ...] | None = None) -> PoolConfig:
    """The pool described by the file at `path` (named `shown` in problems); ConfigError lists every problem.

    `preload` (--preload), else WORKER_PRELOAD, replaces the file's pool.preload.
    """
    root = compose(path, shown)
    reader = _FileReader(shown, env)
    try:
        settings, templates = reader.read(root)
    except _TooManyNodes as err:
        reader.problem(err.line, "", f"more than {_MAX_NODES} YAML nodes once aliases are expanded")
        raise ConfigError(_in_order(reader.problems)) from None
    override = values.preload_override(preload, env, reader.problems)
    if reader.problems:
        raise ConfigError(_in_order(reader.problems))
    if override is not None:
        settings = settings._replace(preload=override)
    # Commands are built only now, so default_worker_argv is imported only for a pool that will run.
    groups = tuple(
        values.with_argv(group, template, env, preloaded=bool(settings.preload))
        for group, template in zip(settings.groups, templates, strict=True)
    )
    return settings._replace(groups=groups)


def _in_order(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda problem: problem.line or 0)


def _app_env(env: Mapping[str, str]) -> str | None:
    return next((env[name] for name in _APP_ENV_VARIABLES if env.get(name)), None)


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
    elastic: int | None = None  # pool.elastic: an elastic group's default max when it is a number
    elastic_named: bool = False  # pool.elastic is in the file (perhaps unreadable: reported there)
    requeue_on_shutdown: bool = True


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
        self.problem(line_of(node), path, message)
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
            shared = values.env_command(self.env, self.problems)
        groups = tuple(group for group, _ in built)
        self.check_elastic(settings, groups, pool.get("elastic"))
        templates = [shared if template is None else template for _, template in built]
        return settings._replace(app_env=chosen, groups=groups), templates

    def check_elastic(self, settings: PoolConfig, groups: tuple[Group, ...], entry: _Entry | None) -> None:
        """pool.elastic needs elastic groups, and room for each one's minimum."""
        if entry is None or settings.elastic is None:
            return
        elastic = [g for g in groups if g.elastic]
        if not elastic:
            self.problem(entry.line, entry.path, "no group has count: elastic")
        minimums = sum(g.min_count for g in elastic)
        if settings.elastic and minimums > settings.elastic:
            self.problem(entry.line, entry.path, f"the elastic groups' minimums add up to {minimums}, "
                         f"more than the {settings.elastic} they share")

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
            term_timeout=self.get(entries, "term_timeout", self.scalar(values.seconds), None),
            max_memory=self.get(entries, "max_memory", self.scalar(values.size), None),
            max_workers=self.get(
                entries, "max_workers", self.scalar(values.max_workers), base.max_workers
            ),
            requeue_on_shutdown=self.get(entries, "requeue_on_shutdown", self.scalar(values.flag), True),
        )
        settings = PoolConfig(
            source=self.source,
            app_env=None,
            groups=(),
            term_timeout=defaults.term_timeout,
            preload=self.get(entries, "preload", self.modules, ()),
            after_fork=self.get(entries, "after_fork", self.scalar(values.reference), None),
            **{
                key: self.get(entries, key, self.scalar(parse), getattr(_DEFAULT, key))
                for key, parse in values.POOL_SETTINGS.items()
            },
        )
        defaults = replace(defaults, elastic=settings.elastic, elastic_named="elastic" in entries)
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
            self.problem(entry.line, entry.path, values.ERB_HINT)
        else:
            try:
                queues = values.queues(name)
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
        count = self.get(fields, "count", self.scalar(values.group_count), None)
        elastic = count == "elastic"
        if elastic:
            count = None
            if not defaults.elastic_named:
                self.problem(fields["count"].line, fields["count"].path,
                             "elastic needs pool.elastic: how many workers the elastic groups share")
        shared = defaults.elastic if elastic and defaults.elastic else defaults.max_workers
        low = self.get(fields, "min", self.scalar(values.bound), 1)
        high = self.get(fields, "max", self.scalar(values.bound), shared)
        if count is not None:
            for key in ("min", "max"):
                if key in fields:
                    self.problem(
                        fields[key].line, fields[key].path, "applies only when count is auto or elastic"
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
            # Only the group's own: the pool's applies at run time, where TERM_TIMEOUT beats it.
            term_timeout=self.get(fields, "term_timeout", self.scalar(values.seconds), None),
            max_memory=self.get(fields, "max_memory", self.scalar(values.size), defaults.max_memory),
            call=self.get(fields, "call", self.scalar(values.reference), None),
            elastic=elastic,
            requeue_on_shutdown=self.get(fields, "requeue_on_shutdown", self.scalar(values.flag),
                                         defaults.requeue_on_shutdown),
        )
        if "call" in fields and "command" in fields:
            blamed = fields["command"]
            self.problem(blamed.line, blamed.path, "a group runs a command or a call, not both")
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
            self.problem(line_of(node), path, "a merge key (<<) includes the mapping it is in")
            return {}
        if depth > _MAX_MERGE_DEPTH:
            self.problem(
                line_of(node), path, f"merge keys (<<) nested more than {_MAX_MERGE_DEPTH} deep"
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
                self.problem(line_of(key), path, f"expected a name as key, got {kind_of(key)}")
            elif key.value in own:
                self.problem(
                    line_of(key),
                    _join(path, key.value),
                    f"duplicate key, first at line {own[key.value]}",
                )
            else:
                own[key.value] = line_of(key)
                entries[key.value] = _Entry(line_of(key), _join(path, key.value), value)
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
            line_of(node), _join(path, "<<"), "a merge key (<<) takes a mapping or a list of mappings"
        )
        return []

    def spend(self, node: Node) -> None:
        self._budget -= 1
        if self._budget < 0:
            raise _TooManyNodes(line_of(node))

    def text(self, node: Node, path: str) -> str:
        """The scalar's text with ${VAR} substituted."""
        if not isinstance(node, ScalarNode):
            self.fail(node, path, f"expected a single value, got {kind_of(node)}")
        # A YAML null (`key:` or `~`) is empty text, not the word "null".
        raw = "" if node.tag == NULL_TAG else node.value
        if "<%" in raw:
            self.fail(node, path, values.ERB_HINT)
        try:
            text = values.substitute(raw, self.env)
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
            return values.split_command(command)
        except ValueError as err:
            self.fail(node, path, str(err))

    def modules(self, node: Node, path: str) -> tuple[str, ...]:
        """A list of module names, or one string of them separated by commas."""
        items = node.value if isinstance(node, SequenceNode) else [node]
        names: list[str] = []
        for item in items:
            self.spend(item)
            names.extend(self.scalar(values.modules)(item, path))
        return tuple(names)

    def environment(self, node: Node, path: str) -> dict[str, str]:
        if not isinstance(node, MappingNode):
            self.fail(node, path, f"expected a mapping of NAME: value, got {kind_of(node)}")
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
