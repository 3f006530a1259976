"""A short-lived fork of ours computes what PID 1 must not carry (argparse, PyYAML) and sends it back over a pipe.

Modules imported in the child die with it; PID 1 keeps only the answer, as built-in values
(marshal: part of every interpreter, where pickle would add 0.4 MB).
"""

from __future__ import annotations

import contextlib
import marshal
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from entrypoint.spawn import fork_with_pipe


class NoAnswer(Exception):
    """The child exited without answering (it printed --help, or crashed); `status` is its wait status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def call_in_child(function: Callable[[], Any]) -> Any:
    """function()'s value, computed in a fork of ours: built-in types only (marshal's).

    The child is reaped here, by its pid, before anything else runs: a loop's waitpid(-1) never
    sees it, so it is never taken for a worker or an orphan. OSError when the fork fails.
    """
    pid, read_end, write_end = fork_with_pipe()
    if pid == 0:
        os.close(read_end)
        _answer(function, write_end)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read()
    finally:
        _, status = os.waitpid(pid, 0)
    try:
        return marshal.loads(answer)
    except (EOFError, ValueError, TypeError):
        raise NoAnswer(status) from None


def _answer(function: Callable[[], Any], pipe: int) -> NoReturn:
    """In the child: never returns. SystemExit (argparse's --help) is its exit status, with no answer."""
    code = 0
    try:
        answer = marshal.dumps(function())
        with os.fdopen(pipe, "wb") as out:
            out.write(answer)
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback

        traceback.print_exc()  # a bug of ours: its traceback, and no answer
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
