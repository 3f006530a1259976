"""The command line without shutil: a program whose path has a space, and --help's width."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.cli import parse
from entrypoint.cmdline import Command


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
