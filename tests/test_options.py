"""entrypoint.options: the command line read without argparse, or by argparse in a child; no shutil either."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrypoint import options
from entrypoint.cmdline import Command
from entrypoint.options import parse


def program(path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_a_program_whose_path_has_a_space_runs_as_it_is(tmp_path: Path) -> None:
    spaced = program(tmp_path / "my tools" / "run worker")
    assert parse([str(spaced)], {}).command == Command((str(spaced),), via_shell=False)


def test_a_program_on_path_whose_name_has_a_space_runs_as_it_is(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    program(tmp_path / "bin" / "run worker")
    monkeypatch.setenv("PATH", f"{tmp_path / 'nothing here'}:{tmp_path / 'bin'}")
    assert parse(["run worker"], {}).command == Command(("run worker",), via_shell=False)


@pytest.mark.parametrize("make", ["directory", "not executable", "missing"])
def test_anything_else_with_a_space_is_a_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      make: str) -> None:
    target = tmp_path / "bin" / "run worker"
    if make == "directory":
        target.mkdir(parents=True)
    elif make == "not executable":
        program(target, 0o644)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert parse(["run worker"], {}).command == Command(("run", "worker"), via_shell=False)


def test_help_is_as_wide_as_columns_says() -> None:
    def widest(columns: str) -> int:
        env = {**os.environ, "COLUMNS": columns}
        result = subprocess.run([sys.executable, "-m", "entrypoint", "--help"], env=env, capture_output=True,
                                text=True, timeout=30, check=True)
        options = result.stdout.split("\nenvironment:")[0]  # the epilog is written as it is, never wrapped
        return max(len(line) for line in options.splitlines() if line.startswith("  -"))

    narrow, wide = widest("60"), widest("200")
    assert narrow <= 58 < wide


# --- A command line that starts with the command is read without argparse ---------------------

WORDS = ["sleep", "60", "-v", "-g", "--", "-t", "5", "--term-timeout=3", "--help", "--version", "--check",
         "python worker.py", "-t 2 python worker.py", "$EMPTY -t 2 python worker.py", "-- -weird", "$EMPTY",
         "$EMPTY rq worker",
         "rq worker | tee x", "entrypoint", "", " ", "'q r'", "x$QUEUE"]
ENV = {"EMPTY": "", "QUEUE": "high"}


def test_every_option_has_its_default_in_defaults() -> None:
    given = vars(options.build_parser().parse_args([]))
    assert given.pop("command") == []
    assert given == options.DEFAULTS


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=5))
def test_reading_without_argparse_gives_what_argparse_gives(argv: list[str]) -> None:
    alone = options._command_alone(argv, ENV)
    if alone is None:
        return
    with_options = options._with_options(argv, ENV)
    assert alone.command == with_options.command
    assert vars(alone.args) == {name: value for name, value in vars(with_options.args).items() if name != "command"}


@pytest.mark.parametrize("argv", [
    ["--", "sleep", "60"], ["rq", "worker", "-v"], ["python worker.py --queue high"],  # read without argparse
    ["-t", "5", "-v", "--", "sleep", "60"], ["-t 5 python worker.py"], ["--socket", "pool.sock"],  # in a child
])
def test_reading_the_command_line_leaves_no_argparse_behind(argv: list[str]) -> None:
    code = ("import sys; from entrypoint.options import parse; parse(sys.argv[1:], {}); "
            "print(sorted({'argparse', 'gettext', 'locale', 'shutil'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=30,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_options_read_in_a_child_come_back_as_they_were_given() -> None:
    invocation = parse(["-g", "-vv", "-t", "5", "-r", "USR1:USR2", "-e", "143", "--", "python", "app.py"], {})
    assert invocation.command == Command(("python", "app.py"), via_shell=False)
    args = invocation.args
    assert (args.process_group, args.verbose, args.term_timeout, args.rewrite, args.remap_exit) == (
        True, 2, "5", ["USR1:USR2"], [143])
    with pytest.raises(options.UsageError, match="unrecognized arguments: --bogus"):
        parse(["--bogus"], {})


@pytest.mark.parametrize(("flag", "words"), [("--help", "usage: entrypoint"), ("--version", "entrypoint 0.")])
def test_help_and_version_printed_by_the_child_exit_0(flag: str, words: str) -> None:
    result = subprocess.run([sys.executable, "-m", "entrypoint", flag], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(words)
