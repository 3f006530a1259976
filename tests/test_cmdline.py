"""Heroku's one-string command line: entrypoint.cmdline.parse_line / scan_line and
entrypoint.cli.parse, as plain values (nothing is run)."""

from __future__ import annotations

import pytest

from entrypoint.cli import UsageError, parse
from entrypoint.cmdline import SHELL, Command, Word, parse_line, scan_line

ENV = {"QUEUE": "high", "EMPTY": "", "SPACED": "a b", "URL": "redis://h:6379/0", "T": "3"}


def direct(*argv: str) -> Command:
    return Command(tuple(argv), via_shell=False)


def shell(line: str) -> Command:
    return Command((SHELL, "-c", line), via_shell=True)


# ---------------------------------------------------------------- words, quotes and escapes


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        ("rq worker high low", ["rq", "worker", "high", "low"]),
        ("  rq   worker\thigh  ", ["rq", "worker", "high"]),
        ("echo 'a b' c", ["echo", "a b", "c"]),
        ('echo "a b" c', ["echo", "a b", "c"]),
        ("echo a\\ b", ["echo", "a b"]),
        ("echo \\'x\\'", ["echo", "'x'"]),
        ("echo a'b'\"c\"d", ["echo", "abcd"]),
        ("echo '' \"\"", ["echo", "", ""]),
        ("echo 'it\"s'", ["echo", 'it"s']),
        ('echo "it\'s"', ["echo", "it's"]),
        ('echo "a\\"b"', ["echo", 'a"b']),
        ('echo "a\\\\b"', ["echo", "a\\b"]),
        ('echo "a\\$b"', ["echo", "a$b"]),
        ('echo "a\\nb"', ["echo", "a\\nb"]),  # other escapes keep their backslash in "..."
        ("echo '$QUEUE' '\\n'", ["echo", "$QUEUE", "\\n"]),  # nothing happens inside '...'
        ("echo 100$", ["echo", "100$"]),
        ("echo $ x", ["echo", "$", "x"]),
        ("python3 -m app.worker --queues=a,b", ["python3", "-m", "app.worker", "--queues=a,b"]),
        ("echo a=b", ["echo", "a=b"]),  # an assignment is only one as the first word
        ("echo x~", ["echo", "x~"]),  # ~ expands only at the start of a word
    ],
)
def test_words_quotes_and_escapes_run_directly(line: str, argv: list[str]) -> None:
    scan = scan_line(line, ENV)
    assert [w.text for w in scan.words] == argv
    assert not scan.needs_shell
    assert parse_line(line, ENV) == direct(*argv)


# ---------------------------------------------------------------- $VAR expansion


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        ("rq worker $QUEUE", ["rq", "worker", "high"]),
        ("rq worker ${QUEUE}", ["rq", "worker", "high"]),
        ("rq worker ${QUEUE}_x $QUEUE.y", ["rq", "worker", "high_x", "high.y"]),
        ("rq worker --url $URL", ["rq", "worker", "--url", "redis://h:6379/0"]),
        ("rq worker ${MISSING:-default}", ["rq", "worker", "default"]),
        ("rq worker ${EMPTY:-default}", ["rq", "worker", "default"]),  # :- also covers empty
        ("rq worker ${QUEUE:-default}", ["rq", "worker", "high"]),
        ("rq worker ${MISSING:-}", ["rq", "worker"]),
        ('rq worker "${MISSING:-low}"', ["rq", "worker", "low"]),
        ('rq worker "$QUEUE low"', ["rq", "worker", "high low"]),
        ('rq worker "$SPACED"', ["rq", "worker", "a b"]),  # quoted: one word, no shell
        ("rq worker $MISSING high", ["rq", "worker", "high"]),  # unset: no word at all
        ("rq worker $EMPTY high", ["rq", "worker", "high"]),  # empty: no word at all
        ("$EMPTY rq worker", ["rq", "worker"]),
        ('rq worker "$EMPTY" high', ["rq", "worker", "", "high"]),  # quoted empty stays a word
        ("rq worker ''$EMPTY", ["rq", "worker", ""]),
        ("rq worker x$EMPTY", ["rq", "worker", "x"]),
    ],
)
def test_variables_are_expanded_from_the_environment(line: str, argv: list[str]) -> None:
    assert parse_line(line, ENV) == direct(*argv)


def test_expansion_uses_the_given_environment_only() -> None:
    assert parse_line("echo $HOME", {}) == direct("echo")
    assert parse_line("echo $HOME", {"HOME": "/h"}) == direct("echo", "/h")


# ---------------------------------------------------------------- what needs a shell


@pytest.mark.parametrize(
    "line",
    [
        "rq worker $SPACED",  # field splitting of an unquoted value
        "rq worker ${MISSING:-a b}",  # ... or of an unquoted default
        "rq worker high | tee log",
        "migrate && rq worker",
        "migrate || exit 1",
        "migrate; rq worker",
        "rq worker &",
        "rq worker > log",
        "rq worker < input",
        "rq worker 2>&1",
        "(cd app && rq worker)",
        "rq worker *.py",
        "rq worker queue?",
        "rq worker [ab]",
        "rq worker `cat queues`",
        "rq worker $(cat queues)",
        'rq worker "$(cat queues)"',
        'rq worker "`cat queues`"',
        "rq worker ${QUEUE%x}",
        "rq worker ${QUEUE:=x}",
        "rq worker ${QUEUE:-$URL}",
        "rq worker $1",
        "rq worker $$",
        "rq worker $?",
        "rq worker ~/queues",
        "rq worker # a comment",
        "rq worker 'unterminated",
        'rq worker "unterminated',
        "rq worker ${UNTERMINATED",
        "FOO=bar rq worker",
        "A=1 B=2 rq worker",
        "cd app",
        "export X=1",
        "if true; then rq worker; fi",
        "source .env",
        ". .env",
        "exec FOO=bar rq worker",
    ],
)
def test_what_only_a_shell_understands_goes_to_sh(line: str) -> None:
    assert parse_line(line, ENV) == shell(line)


@pytest.mark.parametrize(
    "line",
    ["rq worker | tee log", "rq worker *.py", "rq worker `x`", "rq worker $(x)",
     "rq worker $SPACED"],
)
def test_scan_flags_needs_shell(line: str) -> None:
    assert scan_line(line, ENV).needs_shell


def test_a_newline_separates_commands_as_in_sh() -> None:
    """heroku.yml `run: worker: |` blocks keep their newlines: sh runs two commands."""
    line = "python manage.py migrate\nrq worker high"
    assert parse_line(line, ENV) == shell(line)


def test_a_backslash_newline_continues_the_line_as_in_sh() -> None:
    command = parse_line("rq worker \\\n  high", ENV)
    assert "\n" not in command.argv
    assert command.via_shell or command == direct("rq", "worker", "high")


def test_only_blanks_and_newlines_separate_words_as_in_sh() -> None:
    """sh splits on space, tab and newline; a no-break space is part of the word."""
    assert [w.text for w in scan_line("echo a\u00a0b", ENV).words] == ["echo", "a\u00a0b"]


def test_the_shell_gets_the_line_unexpanded() -> None:
    line = "rq worker $QUEUE | tee $SPACED"
    assert parse_line(line, ENV) == Command(("/bin/sh", "-c", line), via_shell=True)


def test_empty_line_goes_to_the_shell() -> None:
    assert parse_line("", ENV).via_shell
    assert parse_line("   ", ENV).via_shell


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        ("exec rq worker high", ["rq", "worker", "high"]),
        ("exec  python3 -m app", ["python3", "-m", "app"]),
        ("exec $EMPTY rq worker", ["rq", "worker"]),
        ("rq exec worker", ["rq", "exec", "worker"]),  # only a leading exec is the shell's
    ],
)
def test_leading_exec_is_stripped(line: str, argv: list[str]) -> None:
    assert parse_line(line, ENV) == direct(*argv)


# ---------------------------------------------------------------- word offsets


def test_word_offsets_point_into_the_original_line() -> None:
    line = "  rq 'a b'  $QUEUE \"x\"y $EMPTY z"
    scan = scan_line(line, ENV)
    assert scan.words == (
        Word("rq", 2),
        Word("a b", 5),
        Word("high", 12),
        Word("xy", 19),
        Word("z", 31),  # the empty expansion at 24 is no word
    )
    for word in scan.words:
        assert not line[word.start].isspace()


def test_offset_of_a_word_the_scanner_gave_up_on_is_its_start() -> None:
    scan = scan_line("rq worker 'open", ENV)
    assert scan.needs_shell
    assert scan.words[-1] == Word("'open", 10)


# ---------------------------------------------------------------- cli.parse


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["python3 prog.py --queue high"], direct("python3", "prog.py", "--queue", "high")),
        (["python3 prog.py --queue $QUEUE"], direct("python3", "prog.py", "--queue", "high")),
        (["rq worker ${Q:-default} | cat"], shell("rq worker ${Q:-default} | cat")),
        (["python3", "prog.py", "a b"], direct("python3", "prog.py", "a b")),  # argv as given
        (["--", "python3 prog.py"], direct("python3", "prog.py")),
        (["python3 prog.py -t 5 -- x"], direct("python3", "prog.py", "-t", "5", "--", "x")),
        (["exec python3 prog.py"], direct("python3", "prog.py")),
    ],
)
def test_parse_command(argv: list[str], command: Command) -> None:
    assert parse(argv, ENV).command == command


@pytest.mark.parametrize(
    ("argv", "seconds"),
    [
        (["-t 2 python3 prog.py"], 2.0),
        (["-t2 python3 prog.py"], 2.0),
        (["--term-timeout=2 python3 prog.py"], 2.0),
        (["-t $T python3 prog.py"], 3.0),  # T=3 in ENV
        (["-t 2 -- python3 prog.py"], 2.0),
        (["-t", "2", "python3 prog.py"], 2.0),
        (["-t", "2", "--", "python3 prog.py"], 2.0),
        (["-t 2 $EMPTY python3 prog.py"], 2.0),
    ],
)
def test_one_string_may_start_with_our_options(argv: list[str], seconds: float) -> None:
    invocation = parse(argv, ENV)
    assert invocation.command == direct("python3", "prog.py")
    assert float(invocation.args.term_timeout) == seconds


def test_one_string_options_and_the_command_keep_their_own_flags() -> None:
    invocation = parse(["-g -v -r USR1:USR2 -e 143 --term-delay 1 python3 app.py -g -v"], ENV)
    assert invocation.command == direct("python3", "app.py", "-g", "-v")
    args = invocation.args
    assert args.process_group is True
    assert args.verbose == 1
    assert args.rewrite == ["USR1:USR2"]
    assert args.remap_exit == [143]
    assert args.term_delay == "1"


def test_one_string_after_options_keeps_the_rest_of_the_line_raw() -> None:
    line = "-t 2 rq worker 'high low' | tee \"$SPACED\""
    assert parse([line], ENV).command == shell("rq worker 'high low' | tee \"$SPACED\"")


def test_one_string_with_a_quoted_option_value() -> None:
    invocation = parse(["-r 'USR1:USR2' python3 prog.py"], ENV)
    assert invocation.args.rewrite == ["USR1:USR2"]
    assert invocation.command == direct("python3", "prog.py")


def test_one_string_after_separator_may_start_with_a_dash() -> None:
    assert parse(["-t 2 -- -weird prog"], ENV).command == direct("-weird", "prog")


@pytest.mark.parametrize("argv", [["-t 2"], ["-t 2 --"], []])
def test_options_alone_mean_no_command(argv: list[str]) -> None:
    assert parse(argv, ENV).command is None


@pytest.mark.parametrize(
    "argv",
    [["--bogus python3 prog.py"], ["-e 300 python3 prog.py"], ["-t"], ["--bogus", "x"]],
)
def test_bad_options_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse(argv, ENV)


def test_a_single_word_program_is_not_a_command_line() -> None:
    assert parse(["true"], ENV).command == direct("true")
    assert parse(["/bin/true"], ENV).command == direct("/bin/true")


def test_a_command_that_repeats_entrypoint_is_one_init_not_two() -> None:
    from entrypoint.cli import parse, unnest

    nested = unnest(parse(["entrypoint --config example/pool.yml"], {}), {})
    assert nested.command is None and nested.args.config == "example/pool.yml"
    direct = unnest(parse(["-t", "3", "--", "entrypoint", "-v", "--", "rq", "worker"], {}), {})
    assert direct.command is not None and direct.command.argv == ("rq", "worker")
    assert direct.args.verbose == 1
