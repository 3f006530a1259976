"""The init, for real: `python -m entrypoint COMMAND` as PID 1 of a new PID namespace and as a
child subreaper, with real children, orphans, signals, terminals and stacked inits.

Signals go to the init from outside (os.kill of its host pid), one at a time: each test waits
until the recording child has logged one before it sends the next.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import ENTRYPOINT, PROGRAMS, Runner, children_of, marked_processes, process_state, wait_for

from entrypoint import cli

PY = sys.executable
RECORD = str(PROGRAMS / "record_signals.py")
ORPHANS = str(PROGRAMS / "orphans.py")
DAEMONIZE = str(PROGRAMS / "daemonize.py")
STUBBORN = str(PROGRAMS / "stubborn.py")
GROUP_PAIR = str(PROGRAMS / "group_pair.py")
SHOW_SELF = str(PROGRAMS / "show_self.py")
# Every signal 1-31 an init can pass on: all but KILL and STOP (uncatchable) and CHLD (the init's).
FORWARDABLE = [s for s in range(1, 32) if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD)]
JOB_CONTROL = [signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU]
HANG = 20.0  # only to catch a hang; never how long anything is expected to take
MARGIN = 3.0  # slack on top of a term timeout before the init must have exited


# ---------------------------------------------------------------- helpers


def words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def recorded(path: Path) -> list[int]:
    """The signal numbers a record_signals.py child logged, in order."""
    return [int(w) for w in words(path) if w != "ready"]


def wait_ready(path: Path, process: subprocess.Popen, what: str = "the child") -> None:
    """Wait for a recorder's "ready"; fail at once (with the init's stderr) if the init died."""

    def ready():
        if "ready" in words(path):
            return True
        if process.poll() is not None:
            pytest.fail(f"the init exited with {process.returncode} before {what} was ready:\n"
                        f"{read_err(process)}")
        return False

    wait_for(ready, HANG, f"{what} to be ready")


def wait_recorded(path: Path, expected: list[int]) -> None:
    """Wait until the recorder has logged len(expected) signals, then they must be `expected`."""
    wait_for(lambda: len(recorded(path)) >= len(expected), HANG, f"signals {expected}")
    assert recorded(path) == expected


def start(runner: Runner, args: list[str], **popen) -> subprocess.Popen:
    """runner.start with output to files: a descendant that escapes (and keeps a pipe open)
    must not hang whoever waits for the init's output."""
    out = runner.tmp_path / f"init-{len(runner.started)}.out"
    err = runner.tmp_path / f"init-{len(runner.started)}.err"
    starter = popen.pop("starter", runner.start)
    with open(out, "w") as out_file, open(err, "w") as err_file:
        process = starter(args, stdout=out_file, stderr=err_file, **popen)
    process.out_path, process.err_path = out, err  # type: ignore[attr-defined]
    return process


def read_err(process: subprocess.Popen) -> str:
    path = getattr(process, "err_path", None)
    return path.read_text() if path else ""


def finish(process: subprocess.Popen, timeout: float = HANG) -> tuple[int, str, str]:
    """Wait for the init; its exit status, stdout and stderr."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the init did not exit within {timeout}s; stderr:\n{read_err(process)}")
    out_path = getattr(process, "out_path", None)
    return process.returncode, out_path.read_text() if out_path else "", read_err(process)


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z")


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:-1]
    except OSError:
        return []


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, ppid, pgid, ..."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rfind(")") + 2 :].split()


def pgid_of(pid: int) -> int:
    return int(stat_fields(pid)[2])


def ppid_of(pid: int) -> int:
    return int(stat_fields(pid)[1])


def the_child(init: int) -> int:
    """The init's one live child (its command), once it is the only child left."""
    return wait_for(lambda: _single_live_child(init), HANG, "the init to have exactly one child")


def _single_live_child(init: int) -> int | None:
    children = children_of(init)
    if len(children) == 1 and alive(children[0]):
        return children[0]
    return None


def is_pending(pid: int, signum: int) -> bool:
    """Whether signal `signum` waits, undelivered, for process `pid` (read by no signalfd yet)."""
    fields = dict(line.split(":\t", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    mask = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    return bool(mask & (1 << (signum - 1)))


def left_running(runner: Runner) -> list[tuple[int, str]]:
    return [p for p in marked_processes(runner.mark) if p[1] != "Z"]


def init_of(runner: Runner, process: subprocess.Popen, namespace: bool) -> int:
    return runner.init_pid(process) if namespace else process.pid


def start_raw(runner: Runner, argv: list[str], **popen) -> subprocess.Popen:
    """Like runner.start, for an argv that does not begin with `python -m entrypoint`."""
    process = subprocess.Popen(argv, env=popen.pop("env", None) or runner.env(),
                               cwd=runner.tmp_path, text=True, start_new_session=True, **popen)
    runner.started.append(process)
    return process


ids_ns = pytest.mark.parametrize("namespace", [True, False], ids=["pid1", "subreaper"])


# ---------------------------------------------------------------- reaping


@ids_ns
def test_a_hundred_orphaned_grandchildren_leave_no_zombie(runner: Runner, tmp_path: Path,
                                                         namespace: bool) -> None:
    ppids, log = tmp_path / "ppids", tmp_path / "log"
    process = start(runner, [PY, ORPHANS, "100", str(ppids), str(log)], namespace=namespace)
    init = init_of(runner, process, namespace)
    wait_ready(log, process)
    wait_for(lambda: len(words(ppids)) == 100, HANG, "100 orphans to report their new parent")
    # They were adopted by the init (PID 1 inside the namespace, the subreaper outside of one) ...
    assert set(words(ppids)) == {"1" if namespace else str(init)}
    # ... and every one of them has been reaped: the command is the init's only child left.
    child = the_child(init)
    assert RECORD in cmdline(child)
    assert not [p for p in children_of(init) if process_state(p) == "Z"]
    os.kill(init, signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 0, err
    assert recorded(log) == [signal.SIGTERM]  # 100 reaped orphans, and not one SIGCHLD passed on


# ---------------------------------------------------------------- forwarding


@ids_ns
def test_every_forwardable_signal_reaches_the_child_in_order(runner: Runner, tmp_path: Path,
                                                            namespace: bool) -> None:
    log = tmp_path / "log"
    process = start(runner, ["-t", "60", PY, RECORD, str(log), "exit-on-term"], namespace=namespace)
    init = init_of(runner, process, namespace)
    wait_ready(log, process)
    expected: list[int] = []
    for signum in FORWARDABLE:
        if signum == signal.SIGTERM:
            continue  # last: the recorder exits on it
        if signum in JOB_CONTROL and not namespace:
            continue  # not PID 1, the init stops with its child on these: see the job-control tests
        os.kill(init, signum)
        expected.append(signum)
        wait_recorded(log, expected)
        if signum == signal.SIGHUP:
            os.kill(init, signal.SIGCHLD)  # must never reach the child: the next one proves it
    os.kill(init, signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 0, err
    assert recorded(log) == [*expected, signal.SIGTERM]
    assert signal.SIGCHLD not in recorded(log)
    # The faults are forwarded when another process sent them with kill().
    for fault in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGTRAP", "SIGSYS"):
        assert getattr(signal, fault) in recorded(log)


def test_rewritten_signals_are_rewritten_and_dropped_ones_dropped(runner: Runner,
                                                                  tmp_path: Path) -> None:
    log = tmp_path / "log"
    args = ["-r", "USR1:USR2", "-r", "HUP:0", PY, RECORD, str(log), "exit-on-term"]
    process = start(runner, args, namespace=True)
    init = runner.init_pid(process)
    wait_ready(log, process)
    os.kill(init, signal.SIGUSR1)
    wait_recorded(log, [signal.SIGUSR2])
    os.kill(init, signal.SIGHUP)
    os.kill(init, signal.SIGWINCH)  # logged after HUP would have been, had HUP been passed on
    wait_recorded(log, [signal.SIGUSR2, signal.SIGWINCH])
    os.kill(init, signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 0, err
    assert recorded(log) == [signal.SIGUSR2, signal.SIGWINCH, signal.SIGTERM]


@pytest.mark.parametrize("group", [True, False], ids=["-g", "no -g"])
def test_process_group_flag_reaches_a_grandchild_in_the_group(runner: Runner, tmp_path: Path,
                                                              group: bool) -> None:
    parent_log, child_log = tmp_path / "parent", tmp_path / "child"
    flags = ["-g"] if group else []
    process = start(runner, [*flags, PY, GROUP_PAIR, str(parent_log), str(child_log)],
                    namespace=True)
    init = runner.init_pid(process)
    wait_ready(parent_log, process, "the child")
    wait_ready(child_log, process, "the grandchild")
    os.kill(init, signal.SIGUSR1)
    wait_for(lambda: signal.SIGUSR1 in recorded(parent_log), HANG, "the child to get USR1")
    if group:
        wait_for(lambda: signal.SIGUSR1 in recorded(child_log), HANG, "the grandchild to get USR1")
    os.kill(init, signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 0, err
    assert recorded(parent_log)[0] == signal.SIGUSR1
    # Without -g only the child gets signals; the grandchild's TERM is the leftover sweep's.
    # (With -g the sweep may catch the grandchild still exiting and add a second TERM.)
    expected = [signal.SIGUSR1, signal.SIGTERM] if group else [signal.SIGTERM]
    assert recorded(child_log)[: len(expected)] == expected
    assert recorded(child_log).count(signal.SIGUSR1) == (1 if group else 0)


# ---------------------------------------------------------------- job control outside a terminal


def wait_job_report(process: subprocess.Popen, flag: int, what: str) -> int:
    """What the shell that started the init sees of its job: waitpid with WUNTRACED (stopped) or
    WCONTINUED, polled, so a report that never comes fails the test instead of hanging it."""

    def report() -> int | None:
        pid, status = os.waitpid(process.pid, flag | os.WNOHANG)
        if pid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            pytest.fail(f"the init exited ({status:#x}) while waiting for {what}:\n{read_err(process)}")
        return status if pid else None

    return wait_for(report, HANG, what)


@pytest.mark.parametrize("signum", JOB_CONTROL, ids=lambda s: signal.Signals(s).name)
def test_job_control_signal_stops_the_childs_group_then_the_init_and_cont_wakes_both(
        runner: Runner, tmp_path: Path, signum: int) -> None:
    """Not PID 1 and no terminal (a script's `entrypoint cmd &`, or under another init): the child's
    whole group gets STOP, which the recorders cannot catch as they catch TSTP, TTIN and TTOU; then
    the init stops itself, so its parent sees a stopped job. CONT wakes the init and the group."""
    logs = [tmp_path / "first", tmp_path / "second"]
    # The child is a shell with two recorders in its group; they have no children of their own,
    # so no SIGCHLD of a stopping grandchild lands in a recorder's log.
    script = " & ".join(f"{PY} {RECORD} {log} exit-on-term" for log in logs) + " & wait"
    process = start(runner, ["-vv", "sh", "-c", script], stdin=subprocess.DEVNULL)
    for log in logs:
        wait_ready(log, process, "a recorder")
    shell = the_child(process.pid)
    group = [shell, *children_of(shell)]
    assert len(group) == 3

    def recorders_logged() -> list[list[int]]:
        return [recorded(log) for log in logs]

    def both_logged_cont() -> bool:
        gone = [pid for pid in (process.pid, *group) if process_state(pid) in (None, "Z")]
        if gone:  # say what happened rather than time out
            pytest.fail(f"{gone} of {[process.pid, *group]} gone; logged {recorders_logged()}; the init's "
                        f"log:\n{read_err(process)}")
        return all(recorders_logged())

    os.kill(process.pid, signum)
    status = wait_job_report(process, os.WUNTRACED, "the init to stop")
    assert os.WSTOPSIG(status) == signal.SIGSTOP
    wait_for(lambda: [process_state(pid) for pid in group] == ["T"] * 3, HANG, "the child's group to stop")
    assert recorders_logged() == [[], []]  # STOP, not the catchable signal
    os.kill(process.pid, signal.SIGCONT)
    wait_job_report(process, os.WCONTINUED, "the init to continue")
    wait_for(both_logged_cont, HANG, "both recorders to get CONT")
    assert recorders_logged() == [[signal.SIGCONT]] * 2  # the whole group, although without -g
    assert "T" not in [process_state(pid) for pid in (process.pid, *group)]
    os.kill(process.pid, signal.SIGTERM)  # kills the shell; the recorders get the leftovers' TERM
    code, _, err = finish(process)
    assert code == 128 + signal.SIGTERM, err
    assert recorders_logged() == [[signal.SIGCONT, signal.SIGTERM]] * 2
    # Two CONTs sent a moment apart may merge into one delivery, so the init's own account says it too.
    assert len([line for line in err.splitlines() if "CONT" in line]) == 1, err


@pytest.mark.parametrize(("rewrite", "passed_on"), [("TSTP:USR1", [signal.SIGUSR1]), ("TTOU:0", [])],
                         ids=["TSTP:USR1", "TTOU:0"])
def test_a_rewritten_job_control_signal_is_passed_on_as_rewritten_and_the_init_still_stops(
        runner: Runner, tmp_path: Path, rewrite: str, passed_on: list[int]) -> None:
    log = tmp_path / "log"
    process = start(runner, ["-r", rewrite, PY, RECORD, str(log), "exit-on-term"], stdin=subprocess.DEVNULL)
    wait_ready(log, process)
    child = the_child(process.pid)
    os.kill(process.pid, signal.Signals["SIG" + rewrite.split(":")[0]])
    wait_job_report(process, os.WUNTRACED, "the init to stop")
    wait_recorded(log, passed_on)  # before the next signal: the recorder takes one at a time
    # The rewrite replaced the STOP: the child runs on and takes a signal while the init is stopped.
    os.kill(child, signal.SIGUSR2)
    wait_recorded(log, [*passed_on, signal.SIGUSR2])
    os.kill(process.pid, signal.SIGCONT)
    wait_job_report(process, os.WCONTINUED, "the init to continue")
    wait_recorded(log, [*passed_on, signal.SIGUSR2, signal.SIGCONT])
    os.kill(process.pid, signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 0, err
    assert recorded(log) == [*passed_on, signal.SIGUSR2, signal.SIGCONT, signal.SIGTERM]


class InteractiveShell:
    """An interactive bash on a pseudo-terminal: what the user types, what the terminal shows, and
    its foreground process group read from the terminal itself."""

    def __init__(self, runner: Runner) -> None:
        self.master, slave = os.openpty()
        self.screen = bytearray()

        def take_terminal() -> None:  # after start_new_session's setsid: the pty becomes ours
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(
            ["bash", "--norc", "--noprofile", "-i"], stdin=slave, stdout=slave, stderr=slave,
            env=runner.env(PS1="$ ", TERM="dumb"), start_new_session=True, preexec_fn=take_terminal)
        runner.started.append(self.process)
        os.close(slave)

    def read_screen(self) -> None:
        while select.select([self.master], [], [], 0)[0]:
            try:
                self.screen.extend(os.read(self.master, 4096))
            except OSError:  # EIO: the shell has exited and closed the terminal
                return

    def foreground(self) -> int:
        self.read_screen()  # a full terminal would block the shell
        return os.tcgetpgrp(self.master)

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def type_and_wait(self, text: bytes, expected: bytes, timeout: float = 15) -> None:
        """Type, then wait for `expected` in what the terminal shows after it (never what was there before)."""
        start = len(self.screen)
        self.type(text)
        deadline = time.monotonic() + timeout
        while expected not in self.screen[start:]:
            if time.monotonic() > deadline:
                pytest.fail(f"no {expected!r} on the terminal; it shows {bytes(self.screen[-400:])!r}")
            select.select([self.master], [], [], 0.1)
            self.read_screen()

    def close(self) -> None:
        os.close(self.master)


def test_bg_leaves_the_terminal_with_the_shell_and_fg_gives_it_back_to_the_job(runner: Runner) -> None:
    shell = InteractiveShell(runner)
    try:
        wait_for(lambda: shell.foreground() == shell.process.pid, HANG, "the shell to own its terminal")
        shell.type(" ".join([*ENTRYPOINT, "sleep", "1000"]).encode() + b"\n")
        child = wait_for(lambda: next((p for p, state in marked_processes(runner.mark)
                                       if state != "Z" and comm(p) == "sleep"), None), HANG, "sleep")
        init = ppid_of(child)
        wait_for(lambda: shell.foreground() == child, HANG, "the child to own the terminal")
        shell.type_and_wait(b"\x1a", b"Stopped")
        shell.type_and_wait(b"bg\n", b"&")
        wait_for(lambda: process_state(child) not in ("T", None), HANG, "the child to run again")
        assert shell.foreground() == shell.process.pid  # the init did not take it back
        shell.type_and_wait(b"echo shell-has-it\n", b"shell-has-it\r\n")
        # bash's `fg` of a running job gives the terminal to the job (the init's group) and sends
        # no CONT: the init cannot know, and passes Ctrl-C and Ctrl-Z on from there. A CONT (zsh
        # sends one) tells it, and it hands the terminal to the child.
        shell.type_and_wait(b"fg\n", b"sleep 1000\r\n")
        wait_for(lambda: shell.foreground() == init, HANG, "the init's group to get the terminal")
        os.kill(init, signal.SIGCONT)
        wait_for(lambda: shell.foreground() == child, HANG, "the child to get the terminal again")
        shell.type_and_wait(b"\x03", b"$ ")
        shell.type_and_wait(b"echo status-$?\n", b"status-130")
        shell.type_and_wait(b"exit\n", b"exit")
        shell.process.wait(timeout=HANG)
    finally:
        shell.close()


# ---------------------------------------------------------------- working directory


def cwd_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/cwd")


@ids_ns
def test_the_child_starts_where_the_init_was_started_and_the_init_moves_to_root(
        runner: Runner, tmp_path: Path, namespace: bool) -> None:
    """As dumb-init: the init never holds the directory (and its mount) busy for the child's life."""
    work = tmp_path / "work"
    work.mkdir()
    job = work / "job"
    job.write_text("#!/bin/sh\nexec sleep 1000\n")
    job.chmod(0o755)
    process = start(runner, ["./job"], namespace=namespace, cwd=work)  # found relative to `work`
    init = init_of(runner, process, namespace)

    def sleeping_child() -> int | None:
        if process.poll() is not None:
            pytest.fail(f"the init exited with {process.returncode}: {read_err(process)}")
        return next((p for p in children_of(init) if comm(p) == "sleep"), None)

    child = wait_for(sleeping_child, HANG, "the child to run sleep")
    assert cwd_of(child) == str(work)
    wait_for(lambda: cwd_of(init) == "/", HANG, "the init to leave the directory")
    os.kill(init, signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 128 + signal.SIGTERM, err


def test_the_pool_stays_in_its_directory_where_every_worker_starts(runner: Runner, tmp_path: Path) -> None:
    """The pool starts workers all its life, each where the pool was started: it stays there (README)."""
    work = tmp_path / "work"
    work.mkdir()
    env = runner.env(WORKER_CONCURRENCY="2", WORKER_COMMAND="sleep 1000")
    process = start(runner, ["--socket", str(tmp_path / "pool.sock")], env=env, cwd=work)

    def two_workers_besides(gone: set[int]) -> set[int] | None:
        found = {p for p in children_of(process.pid) if comm(p) == "sleep"}
        return found if len(found) == 2 and not found & gone else None

    first = wait_for(lambda: two_workers_besides(set()), HANG, "two workers")
    killed = min(first)
    os.kill(killed, signal.SIGKILL)
    workers = wait_for(lambda: two_workers_besides({killed}), HANG, "a replacement worker")
    assert [cwd_of(pid) for pid in (process.pid, *workers)] == [str(work)] * 3
    os.kill(process.pid, signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 0, err


# ---------------------------------------------------------------- exit status


@pytest.mark.parametrize("code", [0, 1, 2, 42, 127, 128, 200, 254, 255])
def test_exit_code_passes_through_as_pid1(runner: Runner, code: int) -> None:
    result = runner.run(["sh", "-c", f"exit {code}"], namespace=True)
    assert result.returncode == code, result.stderr
    assert result.stderr == ""


def run_init_in_fork(argv: list[str]) -> int:
    """cli.main in a forked copy of this process: the whole init, without a Python start-up."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.environ.pop("DYNO", None)
            code = cli.main(argv)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("code", range(256))
def test_every_exit_code_passes_through(code: int) -> None:
    assert run_init_in_fork(["sh", "-c", f"exit {code}"]) == code


@pytest.mark.parametrize(
    "signum", [signal.SIGHUP, signal.SIGABRT, signal.SIGKILL, signal.SIGUSR1, signal.SIGSEGV,
               signal.SIGTERM], ids=lambda s: signal.Signals(s).name,
)
def test_killed_by_signal_exits_128_plus_n(runner: Runner, signum: int) -> None:
    result = runner.run(["sh", "-c", f"ulimit -c 0; kill -{int(signum)} $$"], namespace=True)
    assert result.returncode == 128 + signum, result.stderr


@pytest.mark.parametrize(
    ("flags", "script", "expected"),
    [
        (["-e", "143"], "kill -TERM $$", 0),
        (["-e", "143"], "exit 3", 3),
        (["-e", "143", "-e", "3"], "exit 3", 0),
        (["-e", "143"], "kill -INT $$", 130),
    ],
)
def test_remap_exit(runner: Runner, flags: list[str], script: str, expected: int) -> None:
    result = runner.run([*flags, "sh", "-c", script])
    assert result.returncode == expected, result.stderr


def test_remap_exit_after_a_normal_stop(runner: Runner) -> None:
    process = start(runner, ["-e", "143", "sleep", "1000"], namespace=True)
    init = runner.init_pid(process)
    wait_for(lambda: any(comm(p) == "sleep" for p in children_of(init)), HANG, "sleep to start")
    os.kill(init, signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 0, err


def assert_one_error_line(stderr: str, *needles: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0]


@ids_ns
def test_missing_command_exits_127(runner: Runner, namespace: bool) -> None:
    result = runner.run(["no-such-command-x7", "--flag"], namespace=namespace)
    assert result.returncode == 127
    assert_one_error_line(result.stderr, "no-such-command-x7")


def test_missing_command_in_one_string_exits_127(runner: Runner) -> None:
    result = runner.run(["no-such-command-x7 --queue high"])
    assert result.returncode == 127
    assert_one_error_line(result.stderr, "no-such-command-x7")


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_non_executable_exits_126(runner: Runner, tmp_path: Path, kind: str) -> None:
    target = tmp_path / "not-executable"
    if kind == "file":
        target.write_text("#!/bin/sh\necho hi\n")
        target.chmod(0o644)
    else:
        target.mkdir()
    result = runner.run([str(target)])
    assert result.returncode == 126
    assert_one_error_line(result.stderr, str(target))


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus", "true"],
        ["-t", "soon", "true"],
        ["--term-delay", "x", "true"],
        ["-r", "USR1", "true"],
        ["-r", "FOO:BAR", "true"],
        ["-r", "USR1:99", "true"],
        ["-e", "300", "true"],
        ["-e", "abc", "true"],
        ["-t abc python3 -V"],
    ],
    ids=lambda a: " ".join(a),
)
def test_usage_error_exits_2_with_one_line(runner: Runner, args: list[str]) -> None:
    result = runner.run(args)
    assert result.returncode == 2
    assert_one_error_line(result.stderr)


@pytest.mark.parametrize(("variable", "value"), [("TERM_TIMEOUT", "never"),
                                                 ("TERM_SENT_TO_ALL", "maybe")])
def test_bad_environment_variable_exits_2_with_one_line(runner: Runner, variable: str,
                                                        value: str) -> None:
    result = runner.run(["true"], env=runner.env(**{variable: value}))
    assert result.returncode == 2
    assert_one_error_line(result.stderr, variable)


# ---------------------------------------------------------------- stopping


@ids_ns
def test_child_ignoring_term_is_killed_with_its_group_and_orphans(runner: Runner, tmp_path: Path,
                                                                  namespace: bool) -> None:
    pids = tmp_path / "pids"
    process = start(runner, ["-t", "1", PY, STUBBORN, str(pids)], namespace=namespace)
    init = init_of(runner, process, namespace)
    wait_for(pids.exists, HANG, "the stubborn child to start its group member and orphan")
    member, orphan = (int(w) for w in words(pids))
    child = next(p for p in children_of(init) if STUBBORN in cmdline(p))
    host_pids = [p for p, _ in left_running(runner) if p not in (process.pid, init)]
    assert len(host_pids) >= 3  # the child, its group member and its orphan
    if not namespace:
        assert pgid_of(member) == child  # in the child's group ...
        assert pgid_of(orphan) != child  # ... and out of it, adopted by the subreaper
        assert orphan in children_of(init)
    started = time.monotonic()
    os.kill(init, signal.SIGTERM)
    code, _, err = finish(process)
    elapsed = time.monotonic() - started
    assert code == 128 + signal.SIGKILL, err
    assert 1.0 <= elapsed < 1.0 + MARGIN
    assert not [p for p in host_pids if alive(p)]
    assert not left_running(runner)


def test_second_term_does_not_restart_the_clock(runner: Runner, tmp_path: Path) -> None:
    log = tmp_path / "log"
    process = start(runner, ["-t", "2", PY, RECORD, str(log)], namespace=True)  # survives TERM
    init = runner.init_pid(process)
    wait_ready(log, process)
    started = time.monotonic()
    os.kill(init, signal.SIGTERM)
    wait_recorded(log, [signal.SIGTERM])
    time.sleep(max(0.0, started + 1.5 - time.monotonic()))  # pacing, not an assertion
    os.kill(init, signal.SIGTERM)
    code, _, err = finish(process)
    elapsed = time.monotonic() - started
    assert code == 128 + signal.SIGKILL, err
    assert recorded(log) == [signal.SIGTERM, signal.SIGTERM]
    assert 2.0 <= elapsed < 3.4  # a restarted clock would KILL at 1.5 + 2 = 3.5 s


def test_term_delay_holds_term_back_inside_the_deadline(runner: Runner, tmp_path: Path) -> None:
    log = tmp_path / "log"
    process = start(runner, ["--term-delay", "2", "-t", "2.5", PY, RECORD, str(log)],
                    namespace=True)
    init = runner.init_pid(process)
    wait_ready(log, process)
    started = time.monotonic()
    os.kill(init, signal.SIGTERM)
    wait_recorded(log, [signal.SIGTERM])
    seen = time.monotonic() - started
    code, _, err = finish(process)
    elapsed = time.monotonic() - started
    assert seen >= 2.0  # the child cannot have seen TERM before the delay was over
    assert code == 128 + signal.SIGKILL, err
    assert 2.5 <= elapsed < 4.0  # KILL at 2.5 s from the TERM, not 2 + 2.5 s
    assert recorded(log) == [signal.SIGTERM]


def test_term_delay_then_a_child_that_exits_on_term(runner: Runner, tmp_path: Path) -> None:
    log = tmp_path / "log"
    process = start(runner, ["--term-delay", "0.5", "-t", "10", PY, RECORD, str(log),
                             "exit-on-term"], namespace=True)
    init = runner.init_pid(process)
    wait_ready(log, process)
    started = time.monotonic()
    os.kill(init, signal.SIGTERM)
    code, _, err = finish(process)
    elapsed = time.monotonic() - started
    assert code == 0, err
    assert recorded(log) == [signal.SIGTERM]
    assert 0.5 <= elapsed < 0.5 + MARGIN


def test_a_repeated_term_during_the_delay_is_held_back_too(runner: Runner,
                                                           tmp_path: Path) -> None:
    """Docker/Kubernetes may repeat the TERM: the drain delay must still hold (and RQ takes a
    second TERM as a cold shutdown, so the worker must not get one early and one late)."""
    log = tmp_path / "log"
    process = start(runner, ["--term-delay", "1.5", "-t", "10", PY, RECORD, str(log),
                             "exit-on-term"], namespace=True)
    init = runner.init_pid(process)
    wait_ready(log, process)
    started = time.monotonic()
    os.kill(init, signal.SIGTERM)
    wait_for(lambda: not is_pending(init, signal.SIGTERM), HANG, "the init to take the TERM")
    os.kill(init, signal.SIGTERM)  # a second one, not merged with the first by the kernel
    wait_recorded(log, [signal.SIGTERM])
    seen = time.monotonic() - started
    code, _, err = finish(process)
    assert code == 0, err
    assert seen >= 1.5, f"the child got TERM {seen:.2f}s after it, inside the 1.5s delay"


@ids_ns
def test_leftover_daemon_gets_term_and_the_init_exits_with_the_command_status(
        runner: Runner, tmp_path: Path, namespace: bool) -> None:
    log = tmp_path / "log"
    started = time.monotonic()
    process = start(runner, ["-t", "30", PY, DAEMONIZE, str(log), "7", "exit-on-term"],
                    namespace=namespace)
    code, _, err = finish(process)
    assert code == 7, err
    assert recorded(log) == [signal.SIGTERM]
    assert time.monotonic() - started < 15  # TERM did it: the 30 s KILL was not needed
    assert not left_running(runner)


@ids_ns
def test_leftover_daemon_ignoring_term_is_killed_at_the_timeout(runner: Runner, tmp_path: Path,
                                                                namespace: bool) -> None:
    log = tmp_path / "log"
    process = start(runner, ["-t", "1", PY, DAEMONIZE, str(log), "5"], namespace=namespace)
    wait_ready(log, process, "the daemon")
    started = time.monotonic()  # the command exits right after its daemon is ready
    code, _, err = finish(process)
    elapsed = time.monotonic() - started
    assert code == 5, err  # the command's status, not the KILLed daemon's
    assert recorded(log) == [signal.SIGTERM]
    assert 0.8 <= elapsed < 1.0 + MARGIN
    assert not left_running(runner)


def test_shell_started_setsid_sleep_is_stopped_when_the_command_exits(runner: Runner) -> None:
    started = time.monotonic()
    code, _, err = finish(start(runner, ["-t", "30", "sh", "-c", "setsid sleep 1000 & exit 5"]))
    assert code == 5, err
    assert time.monotonic() - started < 15
    assert not left_running(runner)


# ---------------------------------------------------------------- Heroku's one-string form


def test_one_string_runs_the_program_directly_with_variables_expanded(runner: Runner,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "self.json"
    line = f"{PY} {SHOW_SELF} {out} --queue $QUEUE ${{PRIORITY:-high}} $EMPTY \"$SPACED\" done"
    env = runner.env(QUEUE="mail", EMPTY="", SPACED="a b")
    result = runner.run([line], namespace=True, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["argv"] == ["--queue", "mail", "high", "a b", "done"]
    assert report["ppid"] == 1  # the init's own child: no /bin/sh in between
    assert report["comm"].startswith("python")


@pytest.mark.parametrize("template", ["{rec} | cat", "true && {rec}"], ids=["pipe", "and"])
def test_one_string_with_operators_runs_under_sh_in_its_own_group(
        runner: Runner, tmp_path: Path, template: str) -> None:
    log = tmp_path / "log"
    line = template.format(rec=f"{PY} {RECORD} {log} exit-on-term")
    process = start(runner, [line])
    wait_ready(log, process)
    shell = the_child(process.pid)
    assert comm(shell) == "sh"
    assert cmdline(shell) == ["/bin/sh", "-c", line]
    assert pgid_of(shell) == shell
    members = [p for p in marked_processes(runner.mark) if p[0] not in (process.pid, shell)]
    assert members
    assert all(pgid_of(pid) == shell for pid, _ in members)
    os.kill(process.pid, signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 128 + signal.SIGTERM, err  # dash has no trap: TERM kills it
    assert recorded(log)[:1] == [signal.SIGTERM]  # the pipeline member got the group's TERM
    assert not left_running(runner)


def test_one_string_may_start_with_our_options(runner: Runner, tmp_path: Path) -> None:
    log = tmp_path / "log"
    process = start(runner, [f"-t 1 {PY} {RECORD} {log}"], namespace=True)  # survives TERM
    init = runner.init_pid(process)
    wait_ready(log, process)
    started = time.monotonic()
    os.kill(init, signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 128 + signal.SIGKILL, err
    assert time.monotonic() - started < 1.0 + MARGIN  # -t 1, not the default 8 s
    assert recorded(log) == [signal.SIGTERM]


def kill_everyone_inside(runner: Runner, init: int) -> None:
    """The platform's `kill -TERM -1`, from inside the namespace (it never reaches PID 1)."""
    subprocess.run(
        ["nsenter", "--target", str(init), "--pid", "--", PY, "-c",
         "import os, signal; os.kill(-1, signal.SIGTERM)"],
        env=runner.env(), check=True, timeout=HANG,
    )


@pytest.mark.parametrize("how", ["DYNO", "--term-sent-to-all", "TERM_SENT_TO_ALL=1"])
def test_heroku_term_to_every_process_reaches_the_child_once(runner: Runner, tmp_path: Path,
                                                             how: str) -> None:
    log = tmp_path / "log"
    flags = ["--term-sent-to-all"] if how.startswith("--") else []
    extra = {"DYNO": "worker.1"} if how == "DYNO" else {}
    if how.startswith("TERM_SENT_TO_ALL"):
        extra = {"TERM_SENT_TO_ALL": "1"}
    process = start(runner, [*flags, "-t", "1", PY, RECORD, str(log)], namespace=True,
                    env=runner.env(**extra))  # the recorder survives TERM
    init = runner.init_pid(process)
    wait_ready(log, process)
    started = time.monotonic()
    kill_everyone_inside(runner, init)
    os.kill(init, signal.SIGTERM)  # Heroku's TERM to PID 1, at the same time
    wait_recorded(log, [signal.SIGTERM])
    code, _, err = finish(process)
    elapsed = time.monotonic() - started
    assert recorded(log) == [signal.SIGTERM]  # exactly one TERM: ours was not added
    assert code == 128 + signal.SIGKILL, err  # and at the term timeout it was KILLed
    assert 1.0 <= elapsed < 1.0 + MARGIN


@pytest.mark.parametrize("how", ["--no-term-sent-to-all", "TERM_SENT_TO_ALL=0"])
def test_heroku_term_is_passed_on_when_switched_off(runner: Runner, tmp_path: Path,
                                                    how: str) -> None:
    log = tmp_path / "log"
    flags = [how] if how.startswith("--") else []
    extra = {"DYNO": "worker.1"}
    if how.startswith("TERM_SENT_TO_ALL"):
        extra["TERM_SENT_TO_ALL"] = "0"
    process = start(runner, [*flags, PY, RECORD, str(log), "exit-on-term"], namespace=True,
                    env=runner.env(**extra))
    init = runner.init_pid(process)
    wait_ready(log, process)
    os.kill(init, signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 0, err
    assert recorded(log) == [signal.SIGTERM]


# ---------------------------------------------------------------- stacked under another init


@pytest.mark.parametrize("outer", [["tini", "--"], ["dumb-init"]], ids=["tini", "dumb-init"])
def test_stacked_under_another_init_still_reaps_and_forwards(runner: Runner, tmp_path: Path,
                                                             outer: list[str]) -> None:
    ppids, log = tmp_path / "ppids", tmp_path / "log"
    argv = [*outer, *ENTRYPOINT, PY, ORPHANS, "20", str(ppids), str(log)]
    process = start(runner, argv, starter=lambda args, **popen: start_raw(runner, args, **popen))
    # The outer init's child reads as an empty cmdline while it is inside execve: wait for ours.
    init = wait_for(lambda: next((pid for pid in children_of(process.pid) if cmdline(pid)[:3] == ENTRYPOINT), None),
                    HANG, "our init to start under the outer one")
    wait_ready(log, process)
    wait_for(lambda: len(words(ppids)) == 20, HANG, "20 orphans to report their new parent")
    assert set(words(ppids)) == {str(init)}  # adopted by our init as a subreaper
    the_child(init)  # and reaped
    for number, signum in enumerate([signal.SIGUSR1, signal.SIGHUP, signal.SIGWINCH], 1):
        os.kill(process.pid, signum)
        wait_for(lambda n=number: len(recorded(log)) >= n, HANG, f"signal {signum}")
    os.kill(process.pid, signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 0, err
    assert recorded(log) == [signal.SIGUSR1, signal.SIGHUP, signal.SIGWINCH, signal.SIGTERM]


# ---------------------------------------------------------------- child hygiene


def _start_deaf() -> None:
    """The init starts with a blocked and an ignored signal of its own, besides Python's two."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGUSR2})
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


@ids_ns
def test_child_starts_with_default_signals_and_an_empty_mask(runner: Runner,
                                                             namespace: bool) -> None:
    result = runner.run(["cat", "/proc/self/status"], namespace=namespace,
                        preexec_fn=_start_deaf)
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(":\t", 1) for line in result.stdout.splitlines() if ":\t" in line)
    assert fields["Name"] == "cat"
    # Signals 1-31, SIGPIPE and SIGXFSZ among them. glibc's posix_spawn leaves its internal 32
    # and 33 ignored; no program sees that (glibc installs its own handlers again at start).
    assert int(fields["SigIgn"], 16) & 0x7FFFFFFF == 0
    assert int(fields["SigBlk"], 16) == 0


def _start_like_a_background_job() -> None:
    """`entrypoint ... &` from a script starts us with INT and QUIT ignored; nohup ignores HUP."""
    for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def test_signals_ignored_when_the_init_started_are_still_forwarded(runner: Runner,
                                                                   tmp_path: Path) -> None:
    log = tmp_path / "log"
    process = start(runner, [PY, RECORD, str(log), "exit-on-term"],
                    preexec_fn=_start_like_a_background_job)
    wait_ready(log, process)
    expected: list[int] = []
    for signum in (signal.SIGHUP, signal.SIGQUIT, signal.SIGINT, signal.SIGTERM):
        os.kill(process.pid, signum)
        expected.append(signum)
        wait_recorded(log, expected)
    code, _, err = finish(process)
    assert code == 0, err


def test_child_gets_only_fds_0_to_2_and_its_own_process_group(runner: Runner,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "self.json"
    extra = os.open(tmp_path / "inherited", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        process = start(runner, [PY, SHOW_SELF, str(out)], pass_fds=(extra,))
    finally:
        os.close(extra)
    code, _, err = finish(process)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["ppid"] == process.pid
    assert extra in report["parent_fds"]  # the init did inherit it ...
    assert report["fds"] == [0, 1, 2]  # ... and kept it from its child
    assert report["pgid"] == report["pid"]


def test_child_owns_the_terminal_and_gets_ctrl_c(runner: Runner, tmp_path: Path) -> None:
    out, log = tmp_path / "self.json", tmp_path / "log"
    master, slave = os.openpty()

    def take_terminal() -> None:  # after start_new_session's setsid: the pty becomes ours
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        process = runner.start([PY, SHOW_SELF, str(out), "--record", str(log)], stdin=slave,
                               stdout=slave, stderr=slave, preexec_fn=take_terminal)
        os.close(slave)
        wait_ready(log, process)
        assert json.loads(out.read_text())["foreground"] is True
        os.write(master, b"\x03")
        wait_recorded(log, [signal.SIGINT])
        os.kill(process.pid, signal.SIGTERM)
        code, _, _ = finish(process)
        assert code == 0
        assert recorded(log) == [signal.SIGINT, signal.SIGTERM]
    finally:
        os.close(master)


def test_ctrl_z_stops_the_child_and_the_init_so_the_shell_gets_the_terminal(runner: Runner) -> None:
    """Job control end to end: an interactive bash runs the init; Ctrl-Z, `fg`, then Ctrl-C. At each
    step the terminal's foreground process group is read from the terminal itself."""
    terminal = InteractiveShell(runner)
    shell, foreground = terminal.process, terminal.foreground
    try:
        wait_for(lambda: foreground() == shell.pid, HANG, "the shell to own its terminal")
        terminal.type(" ".join([*ENTRYPOINT, "sleep", "1000"]).encode() + b"\n")
        child = wait_for(lambda: next((p for p, state in marked_processes(runner.mark)
                                       if state != "Z" and comm(p) == "sleep"), None), HANG, "sleep")
        init = ppid_of(child)
        assert pgid_of(child) == child != pgid_of(init), "the child leads a group of its own"
        wait_for(lambda: foreground() == child, HANG, "the child to own the terminal")

        terminal.type(b"\x1a")  # Ctrl-Z: the child stops, the init stops too, the shell takes over
        wait_for(lambda: (process_state(child), process_state(init), foreground()) == ("T", "T", shell.pid),
                 HANG, "the child and the init stopped, the terminal back with the shell")
        terminal.type_and_wait(b"echo shell-is-$((40 + 2))\n", b"shell-is-42")

        terminal.type(b"fg\n")  # the shell hands the terminal to the init, which hands it on
        wait_for(lambda: foreground() == child and process_state(child) in ("S", "R")
                 and process_state(init) in ("S", "R"), HANG, "the child running and owning the terminal again")

        terminal.type(b"\x03")  # Ctrl-C reaches the child's group, which owns the terminal
        wait_for(lambda: process_state(child) is None and process_state(init) is None and foreground() == shell.pid,
                 HANG, "the child and the init gone, the terminal back with the shell")
        terminal.type_and_wait(b"echo status-$?\n", b"status-130")
        terminal.type_and_wait(b"exit\n", b"exit")
        shell.wait(timeout=10)
    finally:
        terminal.close()
