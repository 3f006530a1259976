"""Shared test machinery: run `entrypoint` for real, in PID namespaces, and prove nothing is left behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cgroup_fixture import memory_cgroup, pids_cgroup  # noqa: F401 - fixtures for every test module

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = Path(__file__).resolve().parent / "programs"
ENTRYPOINT = [sys.executable, "-m", "entrypoint"]
# Every process a test starts carries this variable, so the leak check can find strays.
MARK = "ENTRYPOINT_TEST_MARK"


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    """Poll until predicate() is truthy; fail the test (instead of hanging) after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def installed_tool(name: str, installed_by: str) -> str:
    """The path of a program the project's test set-up installs; the test fails, never skips, without it.

    The test extra's console scripts land next to this interpreter (.venv/bin), which need not be
    on PATH; scripts/test's Debian packages land on PATH.
    """
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {installed_by}", pytrace=False)
    return found


def chaos_chosen(config: pytest.Config) -> bool:
    """Whether this run asked for the long reliability runs (`-m chaos`); otherwise a slice runs."""
    expression = config.getoption("markexpr") or ""
    return "chaos" in expression and "not chaos" not in expression


def marked_processes(mark: str, variable: str = MARK) -> list[tuple[int, str]]:
    """(pid, state) of every process whose environment carries this test's mark."""
    found = []
    needle = f"{variable}={mark}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        state = process_state(int(entry))
        if state is not None and needle in environ.split(b"\0"):
            found.append((int(entry), state))
    return found


def process_state(pid: int) -> str | None:
    """The process's state letter (R, S, Z ...), None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2]


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(p) for p in text)
    return found


class Runner:
    """Starts `entrypoint` (optionally as PID 1 of a new PID namespace) and cleans up after it."""

    def __init__(self, mark: str, tmp_path: Path) -> None:
        self.mark = mark
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DYNO", "TERM_TIMEOUT")}
        env.update({MARK: self.mark, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
        env.update(extra)
        return env

    def start(self, args: list[str], *, namespace: bool = False, env: dict[str, str] | None = None,
              cwd: Path | None = None, **popen) -> subprocess.Popen:
        argv = [*ENTRYPOINT, *args]
        if namespace:
            argv = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *argv]
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        process = subprocess.Popen(argv, env=env or self.env(), cwd=cwd or self.tmp_path,
                                   text=True, start_new_session=True, **popen)
        self.started.append(process)
        return process

    def run(self, args: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        process = self.start(args, **kwargs)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(process)
            pytest.fail(f"entrypoint {args} did not finish within {timeout}s")
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def init_pid(self, process: subprocess.Popen) -> int:
        """The host pid of our init inside unshare's namespace (unshare's only child)."""
        return wait_for(lambda: (children_of(process.pid) or [None])[0], 10, "the init to start")

    def kill(self, process: subprocess.Popen) -> None:
        """KILL the process and everything of this test, so no pipe is held open."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        self.kill_marked()
        process.communicate(timeout=10)

    def kill_marked(self) -> list[tuple[int, str]]:
        strays = [p for p in marked_processes(self.mark) if p[1] != "Z"]
        for pid, _state in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return strays

    def cleanup(self) -> list[tuple[int, str]]:
        """Processes the test left running; a process the test KILLed a moment ago is given 2 s to go."""
        deadline = time.monotonic() + 2
        while (left := [p for p in marked_processes(self.mark) if p[1] != "Z"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        for process in self.started:
            if process.poll() is None:
                self.kill(process)
        self.kill_marked()
        return left


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    """Fails the test if any process it started is still running afterwards."""
    runner = Runner(uuid.uuid4().hex, tmp_path)
    yield runner
    strays = runner.cleanup()
    assert not strays, f"processes left running: {strays}"
