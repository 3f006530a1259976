"""Tests for entrypoint.configyaml: nesting too deep for a pool file is refused before it is composed."""

from __future__ import annotations

from pathlib import Path

import pytest

from entrypoint.config import load_config
from entrypoint.configyaml import MAX_DEPTH
from entrypoint.poolconfig import ConfigError, Problem

WORKER = {"WORKER_COMMAND": "work {queues}"}


def only_problem(tmp_path: Path, text: str) -> Problem:
    (tmp_path / "pool.yml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(None, WORKER, tmp_path)
    (problem,) = caught.value.problems
    return problem


def test_brackets_piled_up_on_one_line_are_refused_with_their_line(tmp_path: Path) -> None:
    # issue 15's file: PyYAML alone spends seconds of CPU on it before giving up
    problem = only_problem(tmp_path, "q: 1\n\na: " + "[" * 5000 + "]" * 5000 + "\n")
    assert str(problem) == (
        f"pool.yml:3: more than {MAX_DEPTH} brackets open on one line; a pool file nests 4 levels deep at most"
    )


def test_flow_nesting_over_several_lines_is_refused_at_the_first_level_too_many(tmp_path: Path) -> None:
    # One bracket a line: never many open on one line, and still 5000 levels deep.
    problem = only_problem(tmp_path, "a:\n" + "  [\n" * 5000 + "  ]\n" * 5000)
    assert (problem.line, problem.message) == (
        MAX_DEPTH + 1, f"nested more than {MAX_DEPTH} levels deep; a pool file needs 4 at most"
    )


def test_block_nesting_is_refused_at_the_first_level_too_many(tmp_path: Path) -> None:
    text = "".join(" " * level + f"k{level}:\n" for level in range(200)) + " " * 200 + "v\n"
    problem = only_problem(tmp_path, text)
    # The file's own mapping is level 1: the mapping under k19, on line 21, is level 21.
    assert (problem.line, problem.key) == (MAX_DEPTH + 1, "")
    assert problem.message == f"nested more than {MAX_DEPTH} levels deep; a pool file needs 4 at most"


@pytest.mark.parametrize(("extra_levels", "refused"), [(0, False), (1, True)])
def test_the_bound_is_exactly_max_depth(tmp_path: Path, extra_levels: int, refused: bool) -> None:
    # The file, the group and its env are three levels; the env value's brackets add the rest,
    # split over two lines so that no line holds more than MAX_DEPTH open brackets.
    inner = MAX_DEPTH - 3 + extra_levels
    first = inner // 2
    text = f"q:\n  count: 1\n  env:\n    A: {'[' * first}\n      {'[' * (inner - first)}{']' * inner}\n"
    problem = only_problem(tmp_path, text)
    if refused:
        assert (problem.line, problem.message) == (
            5, f"nested more than {MAX_DEPTH} levels deep; a pool file needs 4 at most"
        )
    else:  # read as far as the walker, which wants a single value there
        assert (problem.line, problem.key, problem.message) == (4, "q.env.A", "expected a single value, got a list")


def test_brackets_in_quotes_count_only_when_many_are_left_open_on_one_line(tmp_path: Path) -> None:
    text = f"q:\n  count: 1\n  command: \"work {'[' * MAX_DEPTH}{']' * MAX_DEPTH} {{queues}}\"\n"
    (tmp_path / "pool.yml").write_text(text, encoding="utf-8")
    config = load_config(None, WORKER, tmp_path)
    assert config.groups[0].argv == ("work", "[" * MAX_DEPTH + "]" * MAX_DEPTH, "q")
