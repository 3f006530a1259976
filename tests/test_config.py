"""Tests for entrypoint.config: resque-pool files, extensions, the environment, hostile input."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entrypoint.config import find_config_file, load_config, read_dotenv
from entrypoint.poolconfig import MAX_COUNT, ConfigError, Group, PoolConfig, Problem

# Most tests name a command so they do not depend on entrypoint.rqworker's default one.
WORKER = {"WORKER_COMMAND": "work {queues}"}


def load(
    tmp_path: Path, text: str, env: dict[str, str] | None = None, name: str = "pool.yml"
) -> PoolConfig:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return load_config(None, WORKER if env is None else {**WORKER, **env}, tmp_path)


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)
    return caught.value.problems


def only_problem(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Problem:
    found = problems(tmp_path, text, env)
    assert len(found) == 1, found
    return found[0]


def counts(config: PoolConfig) -> dict[str, int | None]:
    return {group.name: group.count for group in config.groups}


# --- The Heroku article's examples -----------------------------------------------------------


def test_article_file_with_two_queues(tmp_path: Path) -> None:
    text = "---\nsend_welcome_email: 5\ncrunch_data: 10\n"
    config = load(tmp_path, text, name="config/resque-pool.yml")
    assert config.source == "config/resque-pool.yml"
    assert counts(config) == {"send_welcome_email": 5, "crunch_data": 10}
    assert [group.queues for group in config.groups] == [("send_welcome_email",), ("crunch_data",)]
    assert config.groups[0].argv == ("work", "send_welcome_email")


def test_article_star_with_worker_concurrency_set(tmp_path: Path) -> None:
    config = load(tmp_path, "---\n'*': ${WORKER_CONCURRENCY}\n", {"WORKER_CONCURRENCY": "8"})
    assert config.groups[0].queues == ("*",)
    assert config.groups[0].count == 8


def test_article_star_with_worker_concurrency_unset(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "---\n'*': ${WORKER_CONCURRENCY}\n")
    assert (problem.source, problem.line, problem.key) == ("pool.yml", 2, "*")
    assert "WORKER_CONCURRENCY is not set and has no default" in problem.message


@pytest.mark.parametrize(("env", "expected"), [({}, 5), ({"WORKER_CONCURRENCY": "3"}, 3)])
def test_article_star_with_default(tmp_path: Path, env: dict[str, str], expected: int) -> None:
    config = load(tmp_path, "---\n'*': ${WORKER_CONCURRENCY:-5}\n", env)
    assert config.groups[0].count == expected


def test_default_applies_to_an_empty_variable_as_in_the_shell(tmp_path: Path) -> None:
    config = load(tmp_path, "'*': ${WORKER_CONCURRENCY:-5}\n", {"WORKER_CONCURRENCY": ""})
    assert config.groups[0].count == 5


def test_article_erb_gets_a_hint(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "---\n'*': <%= WORKER_CONCURRENCY %>\n")
    assert (problem.line, problem.key) == (2, "*")
    assert "${VAR:-default}" in problem.message


def test_erb_that_breaks_the_yaml_still_gets_the_hint(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "<% if true %>\nq: 1\n<% end %>\n")
    assert "YAML syntax error" in problem.message
    assert "${VAR:-default}" in problem.message


# --- Grammar ---------------------------------------------------------------------------------


def test_comma_list_is_one_group_serving_queues_in_order(tmp_path: Path) -> None:
    config = load(tmp_path, '"q1, q2": 3\n')
    (group,) = config.groups
    assert (group.name, group.queues, group.count) == ("q1, q2", ("q1", "q2"), 3)


def test_empty_queue_name_in_a_comma_list(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "ok: 1\n'a,,b': 2\n")
    assert (problem.line, problem.key) == (2, "a,,b")


def test_non_string_keys_are_queue_names_as_written(tmp_path: Path) -> None:
    assert counts(load(tmp_path, "5: 3\n")) == {"5": 3}


@pytest.mark.parametrize(
    ("value", "count"),
    [("0", 0), ("1000", 1000), ("'7'", 7), ('" 7 "', 7), ("auto", None), ("AUTO", None)],
)
def test_counts_accepted(tmp_path: Path, value: str, count: int | None) -> None:
    (group,) = load(tmp_path, f"q: {value}\n").groups
    assert group.count == count


@pytest.mark.parametrize("value", ["-1", "2.5", "2.0", "true", "ten", "1001", "0x10", "[1]", ""])
def test_counts_rejected(tmp_path: Path, value: str) -> None:
    problem = only_problem(tmp_path, f"q: {value}\n")
    assert (problem.line, problem.key) == (1, "q")
    assert "expected" in problem.message


def test_count_zero_defines_a_group_that_does_not_run(tmp_path: Path) -> None:
    (group,) = load(tmp_path, "q: 0\n").groups
    assert (group.count, group.min_count, group.max_count) == (0, 0, 0)


def test_fixed_count_bounds_equal_the_count(tmp_path: Path) -> None:
    (group,) = load(tmp_path, "q: 4\n").groups
    assert (group.auto, group.min_count, group.max_count) == (False, 4, 4)


def test_defaults_of_a_plain_file(tmp_path: Path) -> None:
    config = load(tmp_path, "q: 1\n")
    assert config == PoolConfig(source="pool.yml", app_env=None, groups=config.groups)
    group = config.groups[0]
    assert (group.stop_signal, group.term_timeout, group.max_memory, group.env) == (
        signal.SIGTERM,
        None,
        None,
        (),
    )


def test_queue_may_not_be_named_pool(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "q: 1\npool: 3\n")
    assert (problem.line, problem.key) == (2, "pool")
    assert "reserved" in problem.message


# --- Environment sections --------------------------------------------------------------------

SECTIONS = """\
crunch_data: 2
send_welcome_email: 1
production:
  crunch_data: 8
  reports: 1
  pool:
    spawn_delay: 0.5
staging:
  crunch_data: ${ONLY_SET_ON_STAGING}
pool:
  spawn_delay: 0.1
  backoff_max: 10
"""


@pytest.mark.parametrize("variable", ["APP_ENV", "RACK_ENV", "RAILS_ENV", "RESQUE_ENV"])
def test_section_chosen_by_each_variable(tmp_path: Path, variable: str) -> None:
    config = load(tmp_path, SECTIONS, {variable: "production"})
    assert config.app_env == "production"
    # Replaced groups keep their place, new ones come after, as Ruby's Hash#merge! orders them.
    assert counts(config) == {"crunch_data": 8, "send_welcome_email": 1, "reports": 1}
    # pool: is merged key by key.
    assert (config.spawn_delay, config.backoff_max) == (0.5, 10.0)


@pytest.mark.parametrize(
    ("first", "second"),
    [("APP_ENV", "RACK_ENV"), ("RACK_ENV", "RAILS_ENV"), ("RAILS_ENV", "RESQUE_ENV")],
)
def test_section_variable_precedence(tmp_path: Path, first: str, second: str) -> None:
    text = "q: 1\nfirst: {q: 2}\nsecond: {q: 3}\n"
    assert load(tmp_path, text, {first: "first", second: "second"}).app_env == "first"


def test_empty_section_variable_is_skipped(tmp_path: Path) -> None:
    config = load(tmp_path, SECTIONS, {"APP_ENV": "", "RACK_ENV": "production"})
    assert config.app_env == "production"


def test_no_environment_ignores_every_section(tmp_path: Path) -> None:
    config = load(tmp_path, SECTIONS)
    assert config.app_env is None
    assert counts(config) == {"crunch_data": 2, "send_welcome_email": 1}
    assert config.spawn_delay == 0.1


def test_environment_without_a_section_uses_the_top_level(tmp_path: Path) -> None:
    config = load(tmp_path, SECTIONS, {"RAILS_ENV": "development"})
    assert config.app_env is None
    assert counts(config) == {"crunch_data": 2, "send_welcome_email": 1}


def test_only_sections_and_none_chosen(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "production:\n  q: 4\n")
    assert "no worker groups" in problem.message
    assert "production" in problem.message


def test_sections_cannot_nest(tmp_path: Path) -> None:
    text = "q: 1\nproduction:\n  eu:\n    q: 2\n"
    problem = only_problem(tmp_path, text, {"APP_ENV": "production"})
    assert (problem.line, problem.key) == (3, "production.eu")


def test_problem_inside_the_chosen_section_names_it(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "q: 1\nproduction:\n  q: lots\n", {"APP_ENV": "production"})
    assert (problem.line, problem.key) == (3, "production.q")


# --- Finding the file ------------------------------------------------------------------------

LOOKUP = [
    ("explicit", "explicit.yml"),
    ("POOL_CONFIG", "from_pool_config.yml"),
    ("RESQUE_POOL_CONFIG", "from_resque_pool_config.yml"),
    (None, "pool.yml"),
    (None, "config/resque-pool.yml"),
    (None, "resque-pool.yml"),
]


def test_lookup_order(tmp_path: Path) -> None:
    for _, name in LOOKUP:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("q: 1\n")
    named = {key: name for key, name in LOOKUP if key}
    for key, name in LOOKUP:
        explicit = named.get("explicit")
        env = {k: v for k, v in named.items() if k != "explicit"}
        assert find_config_file(explicit, env, tmp_path) == tmp_path / name
        assert load_config(explicit, {**env, **WORKER}, tmp_path).source == name
        if key:
            del named[key]
        else:
            (tmp_path / name).unlink()
    assert find_config_file(None, {}, tmp_path) is None


def test_absolute_explicit_path(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.yml"
    path.write_text("q: 1\n")
    assert find_config_file(str(path), {}, Path("/")) == path


def test_empty_pool_config_counts_as_unset(tmp_path: Path) -> None:
    (tmp_path / "pool.yml").write_text("q: 1\n")
    assert find_config_file(None, {"POOL_CONFIG": ""}, tmp_path) == tmp_path / "pool.yml"


@pytest.mark.parametrize(
    ("explicit", "env", "key"),
    [
        ("missing.yml", {}, "config"),
        (None, {"POOL_CONFIG": "missing.yml"}, "POOL_CONFIG"),
        (None, {"RESQUE_POOL_CONFIG": "missing.yml"}, "RESQUE_POOL_CONFIG"),
    ],
)
def test_named_file_missing_is_a_problem_not_a_fallback(
    tmp_path: Path, explicit: str | None, env: dict[str, str], key: str
) -> None:
    (tmp_path / "pool.yml").write_text("q: 1\n")
    with pytest.raises(ConfigError) as caught:
        find_config_file(explicit, env, tmp_path)
    assert caught.value.problems == [Problem("missing.yml", None, key, "no such file")]


def test_named_file_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    with pytest.raises(ConfigError, match="conf: config: is a directory"):
        load_config("conf", {}, tmp_path)


# --- Extensions ------------------------------------------------------------------------------

EXTENDED = """\
pool:
  command: [work, --url, "${REDIS_URL:-redis://localhost}", "{queues}"]
  env: {SHARED: one, LEVEL: pool}
  stop_signal: QUIT
  term_timeout: 25
  max_memory: 512M
  spawn_delay: 0.25
  backoff_min: 2
  backoff_max: 30
  backoff_reset: 45
  exit_on_crash_loop: yes
  prefix_output: true
  memory_headroom: 0.9
  memory_limit: 1G
  max_workers: 12
critical,high:
  count: 2
  command: urgent --queues={queues_csv} --name={group}
  env: {LEVEL: group, DEBUG: 1}
  stop_signal: SIGINT
  term_timeout: 5.5
  max_memory: 300mb
elastic:
  count: auto
  min: 2
low: auto
"""


def test_pool_settings(tmp_path: Path) -> None:
    config = load(tmp_path, EXTENDED)
    assert config == PoolConfig(
        source="pool.yml",
        app_env=None,
        groups=config.groups,
        term_timeout=25.0,
        spawn_delay=0.25,
        backoff_min=2.0,
        backoff_max=30.0,
        backoff_reset=45.0,
        exit_on_crash_loop=True,
        prefix_output=True,
        memory_headroom=0.9,
        memory_limit=1024**3,
    )


def test_group_settings_override_pool_defaults(tmp_path: Path) -> None:
    group = load(tmp_path, EXTENDED).groups[0]
    assert group == Group(
        name="critical,high",
        queues=("critical", "high"),
        count=2,
        min_count=2,
        max_count=2,
        argv=("urgent", "--queues=critical,high", "--name=critical,high"),
        env=(("DEBUG", "1"), ("LEVEL", "group"), ("SHARED", "one")),
        stop_signal=signal.SIGINT,
        term_timeout=5.5,
        max_memory=300 * 1024**2,
    )


def test_groups_inherit_pool_defaults(tmp_path: Path) -> None:
    low = load(tmp_path, EXTENDED, {"REDIS_URL": "redis://r:6379"}).groups[2]
    assert low.argv == ("work", "--url", "redis://r:6379", "low")
    assert low.env == (("LEVEL", "pool"), ("SHARED", "one"))
    assert low.stop_signal == signal.SIGQUIT
    assert low.max_memory == 512 * 1024**2
    # The pool's term_timeout stays the pool's: TERM_TIMEOUT beats it at run time, not a group's own.
    assert (low.term_timeout, load(tmp_path, EXTENDED).term_timeout) == (None, 25.0)


def test_auto_bounds(tmp_path: Path) -> None:
    _, elastic, low = load(tmp_path, EXTENDED).groups
    assert (elastic.auto, elastic.count) == (True, None)
    assert (elastic.min_count, elastic.max_count) == (2, 12)
    assert (low.min_count, low.max_count) == (1, 12)  # max from pool.max_workers


def test_auto_default_max_is_the_cap(tmp_path: Path) -> None:
    (group,) = load(tmp_path, "q: auto\n").groups
    assert (group.min_count, group.max_count) == (1, MAX_COUNT)


def test_min_above_max(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "q:\n  count: auto\n  min: 5\n  max: 2\n")
    assert (problem.line, problem.key) == (4, "q.max")


def test_min_and_max_need_auto(tmp_path: Path) -> None:
    found = problems(tmp_path, "q:\n  count: 3\n  min: 1\n  max: 4\n")
    assert [(p.line, p.key) for p in found] == [(3, "q.min"), (4, "q.max")]


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    text = "high: &worker\n  count: 2\n  stop_signal: QUIT\nlow:\n  <<: *worker\n  count: 1\n"
    high, low = load(tmp_path, text).groups
    assert (high.count, low.count) == (2, 1)
    assert low.stop_signal == signal.SIGQUIT


def test_env_values_are_text_as_written(tmp_path: Path) -> None:
    # Quoted: in a flow mapping `{` is YAML syntax.
    text = "q:\n  count: 1\n  env: {A: 1.50, B: true, C: ~, D: '${X:-x}'}\n"
    (group,) = load(tmp_path, text).groups
    assert group.env == (("A", "1.50"), ("B", "true"), ("C", ""), ("D", "x"))


# --- Every problem at once -------------------------------------------------------------------

BROKEN = """\
send_welcome_email: 5
crunch_data:
  count: ten
  colour: blue
pool:
  term_timeout: -3
  memory_headroom: 1.5
  stop_signal: TERMINATE
  exit_on_crash_loop: maybe
'*': ${WORKER_CONCURRENCY}
reports: {count: 1, max_memory: lots, command: "run 'unclosed"}
"""


def test_every_problem_listed_with_its_line(tmp_path: Path) -> None:
    found = [(p.line, p.key) for p in problems(tmp_path, BROKEN)]
    assert found == [
        (3, "crunch_data.count"),
        (4, "crunch_data.colour"),
        (6, "pool.term_timeout"),
        (7, "pool.memory_headroom"),
        (8, "pool.stop_signal"),
        (9, "pool.exit_on_crash_loop"),
        (10, "*"),
        (11, "reports.max_memory"),
        (11, "reports.command"),
    ]


def test_error_text_is_one_problem_per_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BROKEN)
    lines = str(caught.value).splitlines()
    assert len(lines) == len(caught.value.problems)
    assert lines[0] == (
        "pool.yml:3: crunch_data.count: expected a whole number from 0 to 1000, auto or elastic, got 'ten'"
    )


def test_problem_text_without_a_line() -> None:
    assert str(Problem("environment", None, "QUEUES", "bad")) == "environment: QUEUES: bad"


def test_duplicate_keys(tmp_path: Path) -> None:
    found = problems(tmp_path, "q: 1\nr:\n  count: 1\n  count: 2\nq: 3\n")
    assert [(p.line, p.key, p.message) for p in found] == [
        (4, "r.count", "duplicate key, first at line 3"),
        (5, "q", "duplicate key, first at line 1"),
    ]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", None, "empty file"),
        ("# only a comment\n", None, "empty file"),
        ("---\n", None, "empty file"),
        ("- a\n- b\n", 1, "got a list"),
        ("q: 1\nr: [\n", 3, "YAML syntax error"),
        ("q: 1\nr: 2\n  s: 3\n", 3, "YAML syntax error"),
        ("q: 1\n---\nr: 2\n", 2, "YAML syntax error"),
        ("q: 1\nr: \x07\n", 2, "not allowed in YAML"),
        ("q: " + "[" * 5000, 1, "brackets open on one line"),
        ("{}\n", None, "no worker groups"),
    ],
)
def test_file_level_problems(tmp_path: Path, text: str, line: int | None, words: str) -> None:
    problem = only_problem(tmp_path, text)
    assert problem.line == line
    assert words in problem.message


def test_undecodable_bytes(tmp_path: Path) -> None:
    (tmp_path / "pool.yml").write_bytes(b"q: 1\nr: \xff\xfe\n")
    with pytest.raises(ConfigError) as caught:
        load_config(None, WORKER, tmp_path)
    assert [(p.line, p.message.split(" (")[0]) for p in caught.value.problems] == [
        (2, "not UTF-8 text")
    ]


def test_file_over_one_mebibyte(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "q: 1\n" + "#" * 1024 * 1024)
    assert "larger than 1 MiB" in problem.message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("q:\n  count: 1\n  queues: [a]\n", "q.queues"),
        ("q: 1\npool:\n  workers: 3\n", "pool.workers"),
    ],
)
def test_unknown_keys(tmp_path: Path, text: str, key: str) -> None:
    problem = only_problem(tmp_path, text)
    assert (problem.line, problem.key) == (3, key)
    assert problem.message.startswith("unknown key; expected one of ")


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("memory_headroom", "0"),
        ("memory_headroom", "1.5"),
        ("prefix_output", "sometimes"),
        ("spawn_delay", ".nan"),
        ("backoff_reset", "1e999"),
        ("memory_limit", "9" * 400),
        ("max_workers", "0"),
        ("env", "[A, B]"),
        ("command", "''"),
        ("command", "[work, [nested]]"),
    ],
)
def test_bad_pool_settings(tmp_path: Path, setting: str, value: str) -> None:
    problem = only_problem(tmp_path, f"q: 1\npool:\n  {setting}: {value}\n")
    assert (problem.line, problem.key) == (3, f"pool.{setting}")


def test_backoff_min_above_max(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "q: 1\npool:\n  backoff_min: 90\n")
    assert (problem.line, problem.key) == (3, "pool.backoff_min")
    assert "must not exceed backoff_max (60)" in problem.message


# --- Hostile YAML: aliases and merges ---------------------------------------------------------


def billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for this, previous in zip("bcdefghi", "abcdefgh", strict=True):
        lines.append(f"{this}: &{this} [{', '.join(['*' + previous] * 9)}]")
    lines.append("pool: {command: *i}")
    return "\n".join(lines) + "\n"


def merge_bomb() -> str:
    lines = ["m0: &m0 {k0: 1, k1: 2, k2: 3}"]
    for level in range(1, 30):
        lines.append(f"m{level}: &m{level} {{<<: [{', '.join([f'*m{level - 1}'] * 10)}]}}")
    lines.append("q: {count: 1, env: {<<: *m29}}")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_rejected_quickly(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"pool\.command: expected a single value, got a list"):
        load(tmp_path, billion_laughs())
    assert time.monotonic() - started < 2


def test_merge_bomb_costs_its_size_not_its_expansion(tmp_path: Path) -> None:
    # 10**29 merge paths, but each mapping is flattened once and merged keys collapse.
    started = time.monotonic()
    (group,) = load(tmp_path, merge_bomb()).groups
    assert group.env == (("k0", "1"), ("k1", "2"), ("k2", "3"))
    assert time.monotonic() - started < 2


def test_too_many_nodes(tmp_path: Path) -> None:
    text = "".join(f"q{n}: 1\n" for n in range(12_000))
    problem = only_problem(tmp_path, text)
    assert "more than 10000 YAML nodes" in problem.message


def test_merge_of_itself(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "q: &q {count: 1, <<: *q}\n")
    assert (problem.line, problem.key) == (1, "q")
    assert "includes the mapping it is in" in problem.message


def test_deep_merge_chain_is_cut_short(tmp_path: Path) -> None:
    # Anchors kept in a section no environment chooses, so only the chain itself is at fault.
    chain = "".join(f"    - &m{n} {{<<: *m{n - 1}}}\n" for n in range(1, 200))
    text = "unused:\n  anchors:\n    - &m0 {A: b}\n" + chain + "q:\n  count: 1\n  env: *m199\n"
    problem = only_problem(tmp_path, text)
    assert "nested more than" in problem.message


def test_merge_of_a_scalar(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "q:\n  count: 1\n  <<: 5\n")
    assert (problem.line, problem.key) == (3, "q.<<")


# --- ${VAR} substitution ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "argv"),
    [
        ("'work $$HOME {queues}'", ("work", "$HOME", "q")),
        ("'work $HOME {queues}'", ("work", "$HOME", "q")),
        ("'work ${ARGS} {queues}'", ("work", "--burst", "-v", "q")),
        ("'work \"${ARGS}\" {queues}'", ("work", "--burst -v", "q")),
    ],
)
def test_substitution_in_commands(tmp_path: Path, value: str, argv: tuple[str, ...]) -> None:
    config = load(tmp_path, f"q:\n  count: 1\n  command: {value}\n", {"ARGS": "--burst -v"})
    assert config.groups[0].argv == argv


@pytest.mark.parametrize("value", ["'${1BAD}'", "'${A-b}'", "'${UNCLOSED'", "'${}'"])
def test_bad_references(tmp_path: Path, value: str) -> None:
    problem = only_problem(tmp_path, f"q: {value}\n")
    assert (problem.line, problem.key) == (1, "q")
    assert "${NAME}" in problem.message


# --- Commands --------------------------------------------------------------------------------

ODD_NAMES = [
    "with space",
    "it's",
    'say "hi"',
    "a;b",
    "$(rm -rf /)",
    "`id`",
    "ünïcødé-队列",
    "{group}",
    "back\\slash",
    "*",
]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_queue_names_arrive_verbatim(tmp_path: Path, name: str) -> None:
    text = f"{json.dumps(name)}:\n  count: 1\n  command: work {{queues}} --csv={{queues_csv}}\n"
    (group,) = load(tmp_path, text).groups
    assert group.queues == (name,)
    assert group.argv == ("work", name, f"--csv={name}")


def test_queues_expand_to_one_argument_each(tmp_path: Path) -> None:
    (group,) = load(tmp_path, "'high, low prio': {count: 1, command: [w, '{queues}', x]}\n").groups
    assert group.argv == ("w", "high", "low prio", "x")


def test_template_without_queues_appends_nothing(tmp_path: Path) -> None:
    (group,) = load(tmp_path, "q: {count: 1, command: bin/worker}\n").groups
    assert group.argv == ("bin/worker",)


def test_braces_that_are_not_placeholders_stay(tmp_path: Path) -> None:
    text = "q: {count: 1, command: ['run', '{\"a\": {}}', '{queues}']}\n"
    assert load(tmp_path, text).groups[0].argv == ("run", '{"a": {}}', "q")


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("'work {queue}'", "unknown placeholder {queue}"),
        ("'work --q={queues}'", "must be a whole argument"),
        ("'work \"open'", "cannot split the command"),
        ("''", "empty"),
    ],
)
def test_bad_commands(tmp_path: Path, command: str, words: str) -> None:
    problem = only_problem(tmp_path, f"q:\n  count: 1\n  command: {command}\n")
    assert (problem.line, problem.key) == (3, "q.command")
    assert words in problem.message


def test_command_precedence(tmp_path: Path) -> None:
    text = "pool: {command: pool-cmd}\nown: {count: 1, command: own-cmd}\nshared: 1\n"
    own, shared = load(tmp_path, text, {"WORKER_COMMAND": "env-cmd"}).groups
    assert (own.argv, shared.argv) == (("own-cmd",), ("pool-cmd",))
    (shared,) = load(tmp_path, "shared: 1\n", {"WORKER_COMMAND": "env-cmd {queues}"}).groups
    assert shared.argv == ("env-cmd", "shared")


def test_bad_worker_command_in_file_mode(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "q: 1\n", {"WORKER_COMMAND": "work {nope}"})
    assert (problem.source, problem.line, problem.key) == ("environment", None, "WORKER_COMMAND")


def test_unused_worker_command_is_not_checked(tmp_path: Path) -> None:
    config = load(tmp_path, "pool: {command: w}\nq: 1\n", {"WORKER_COMMAND": "'"})
    assert config.groups[0].argv == ("w",)


def test_default_command_comes_from_rqworker(tmp_path: Path) -> None:
    rqworker = pytest.importorskip("entrypoint.rqworker")
    env = {"REDIS_URL": "redis://example:6379/0"}
    (tmp_path / "pool.yml").write_text("'high,low': 2\n")
    (group,) = load_config(None, env, tmp_path).groups
    assert group.argv == rqworker.default_worker_argv(("high", "low"), env)


# --- No file: the environment ----------------------------------------------------------------


def test_environment_defaults(tmp_path: Path) -> None:
    config = load_config(None, WORKER, tmp_path)
    assert config.source == "environment"
    assert config.app_env is None
    (group,) = config.groups
    assert (group.name, group.queues, group.count, group.argv) == ("*", ("*",), 1, ("work", "*"))


def test_environment_group(tmp_path: Path) -> None:
    env = {**WORKER, "QUEUES": "high,low", "WORKER_CONCURRENCY": "4"}
    (group,) = load_config(None, env, tmp_path).groups
    assert (group.name, group.queues, group.count) == ("high,low", ("high", "low"), 4)
    assert group.argv == ("work", "high", "low")


def test_environment_auto(tmp_path: Path) -> None:
    (group,) = load_config(None, {**WORKER, "WORKER_CONCURRENCY": "auto"}, tmp_path).groups
    assert (group.auto, group.min_count, group.max_count) == (True, 1, MAX_COUNT)


def test_environment_problems_all_at_once(tmp_path: Path) -> None:
    env = {"QUEUES": "a,,b", "WORKER_CONCURRENCY": "-2", "WORKER_COMMAND": "work 'x"}
    with pytest.raises(ConfigError) as caught:
        load_config(None, env, tmp_path)
    found = [(p.source, p.line, p.key) for p in caught.value.problems]
    assert found == [
        ("environment", None, "QUEUES"),
        ("environment", None, "WORKER_CONCURRENCY"),
        ("environment", None, "WORKER_COMMAND"),
    ]


def test_worker_concurrency_is_ignored_when_there_is_a_file(tmp_path: Path) -> None:
    assert load(tmp_path, "q: 2\n", {"WORKER_CONCURRENCY": "9"}).groups[0].count == 2


def test_environment_default_command_comes_from_rqworker(tmp_path: Path) -> None:
    rqworker = pytest.importorskip("entrypoint.rqworker")
    env = {"QUEUES": "default"}
    (group,) = load_config(None, env, tmp_path).groups
    assert group.argv == rqworker.default_worker_argv(("default",), env)


# --- .env ------------------------------------------------------------------------------------


def test_dotenv_fills_only_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("WORKER_CONCURRENCY=4\nQUEUES=from-file\nURL=${HOME}/x\n")
    environ = {"QUEUES": "from-environment"}
    assert read_dotenv(tmp_path, environ) == tmp_path / ".env"
    assert environ == {"QUEUES": "from-environment", "WORKER_CONCURRENCY": "4", "URL": "${HOME}/x"}


def test_no_dotenv(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    assert read_dotenv(tmp_path, environ) is None
    assert environ == {}


def test_unreadable_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").mkdir()
    with pytest.raises(ConfigError) as caught:
        read_dotenv(tmp_path, {})
    assert caught.value.problems == [Problem(".env", None, "", "cannot read: Is a directory")]


def test_dotenv_not_utf8(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"A=\xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_dotenv(tmp_path, {})


def test_dotenv_value_with_nul(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("GOOD=1\nBAD=a\0b\n")
    with pytest.raises(ConfigError, match="BAD"):
        read_dotenv(tmp_path, {})


# --- Property tests: hostile input never escapes as anything but ConfigError ------------------

FRAGMENTS = [
    "'*': ",
    "q1,q2: ",
    "pool:",
    "production:",
    "  ",
    "    ",
    "count: ",
    "auto",
    "5",
    "-1",
    "${WORKER_CONCURRENCY}",
    "${X:-3}",
    "$$",
    "${",
    "<%= x %>",
    "&a ",
    "*a",
    "<<: ",
    "[",
    "]",
    "{",
    "}",
    ", ",
    "command: ",
    "'{queues}'",
    "{nope}",
    "env: ",
    "min: ",
    "max: ",
    "term_timeout: ",
    "max_memory: ",
    "stop_signal: ",
    "'",
    '"',
    "\n",
    "- ",
    "? ",
    "!!merge ",
    "~",
    "\x00",
    "#",
]

# The file is rewritten by every example, so sharing tmp_path between them is harmless.
PROPERTY = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def loads_or_reports(tmp_path: Path, data: bytes, env: dict[str, str]) -> None:
    (tmp_path / "pool.yml").write_bytes(data)
    try:
        config = load_config(None, env, tmp_path)
    except ConfigError as err:
        assert err.problems
        assert all(isinstance(problem, Problem) for problem in err.problems)
    else:
        assert isinstance(config, PoolConfig)


@PROPERTY
@given(st.text())
def test_any_text_loads_or_reports(tmp_path: Path, text: str) -> None:
    loads_or_reports(tmp_path, text.encode("utf-8"), WORKER)


@PROPERTY
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join))
def test_yaml_like_text_loads_or_reports(tmp_path: Path, text: str) -> None:
    loads_or_reports(tmp_path, text.encode("utf-8"), {**WORKER, "APP_ENV": "production"})


@PROPERTY
@given(st.binary())
def test_any_bytes_load_or_report(tmp_path: Path, data: bytes) -> None:
    loads_or_reports(tmp_path, data, WORKER)


@PROPERTY
@given(
    st.fixed_dictionaries(
        {"WORKER_COMMAND": st.text(min_size=1)},
        optional={"WORKER_CONCURRENCY": st.text(), "QUEUES": st.text()},
    )
)
def test_any_environment_loads_or_reports(tmp_path: Path, env: dict[str, str]) -> None:
    try:
        config = load_config(None, env, tmp_path)
    except ConfigError as err:
        assert all(problem.source == "environment" for problem in err.problems)
    else:
        (group,) = config.groups
        assert group.count is None or 0 <= group.count <= MAX_COUNT


def test_requeue_on_shutdown_is_read_for_the_pool_and_each_group(tmp_path: Path) -> None:
    (tmp_path / "pool.yml").write_text("pool:\n  requeue_on_shutdown: false\nonce: 1\n"
                                       "again:\n  count: 1\n  requeue_on_shutdown: yes\n")
    once, again = load_config(None, WORKER, tmp_path).groups
    assert (once.requeue_on_shutdown, again.requeue_on_shutdown) == (False, True)
    (tmp_path / "pool.yml").write_text("q:\n  count: 1\n  requeue_on_shutdown: maybe\n")
    with pytest.raises(ConfigError) as raised:
        load_config(None, WORKER, tmp_path)
    assert [str(p) for p in raised.value.problems] == [
        "pool.yml:3: q.requeue_on_shutdown: expected true or false, got 'maybe'"]
