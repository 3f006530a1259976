"""The pool with real worker processes, real signals and a real PID namespace."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROGRAMS, Runner, marked_processes, process_state, wait_for

from entrypoint.control import request

WORKER = [sys.executable, str(PROGRAMS / "worker.py"), "{queues}"]
ARTICLE = "send_welcome_email: 5\ncrunch_data: 10\n"
TERM_TIMEOUT = 3.0  # every Pool's pool.term_timeout
MARGIN = 2.0  # on top of a configured time: python's start-up on a loaded 2-core machine, and our polling


class Pool:
    """A running pool and what its workers wrote about themselves."""

    def __init__(self, runner: Runner, tmp_path: Path, config: str, *args: str,
                 namespace: bool = False, settings: str = "", **env: str) -> None:
        self.tmp_path = tmp_path
        self.mark = runner.mark
        self.namespace = namespace
        self.log = tmp_path / "workers.jsonl"
        self.socket = str(tmp_path / "pool.sock")
        self.config = tmp_path / "pool.yml"
        self.settings = settings
        self.write_config(config)
        environment = runner.env(WORKER_LOG=str(self.log), **env)
        self.process = runner.start(["-v", "--socket", self.socket, *args], env=environment,
                                    namespace=namespace)
        self.pid = runner.init_pid(self.process) if namespace else self.process.pid

    def write_config(self, text: str) -> None:
        command = json.dumps(WORKER)
        self.config.write_text(
            text + f"pool:\n  command: {command}\n  term_timeout: {TERM_TIMEOUT:g}\n{self.settings}"
        )

    def events(self, event: str | None = None, role: str | None = "worker") -> list[dict]:
        if not self.log.exists():
            return []
        records = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [r for r in records
                if (event is None or r["event"] == event) and (role is None or r["role"] == role)]

    def status(self) -> dict:
        return request(self.socket, {"command": "status"})

    def running(self) -> dict[str, int]:
        """worker name -> pid, for workers that are running and have started their program."""
        started = {r["pid"] for r in self.events("start")}
        return {f"{w['group']}.{w['slot']}": w["pid"] for w in self.status()["workers"]
                if w["state"] == "running" and w["pid"] in started}

    def wait_running(self, count: int, timeout: float = 15) -> dict[str, int]:
        def ready():
            try:
                running = self.running()
            except OSError:
                return None
            return running if len(running) == count else None
        return wait_for(ready, timeout, f"{count} running workers")

    def kill(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def host_pid(self, pid: int) -> int:
        """Our pid for a process the pool or a worker reported: theirs are the namespace's when the pool is PID 1."""
        if not self.namespace:
            return pid
        for host, _state in marked_processes(self.mark):
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{host}/status").read_text()
                levels = next(line for line in status.splitlines() if line.startswith("NSpid:")).split()[1:]
                if len(levels) > 1 and int(levels[-1]) == pid:
                    return host
        pytest.fail(f"no process of this test is pid {pid} in the pool's namespace")

    def finish(self, timeout: float = 20) -> tuple[int, str]:
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the pool did not exit within {timeout}s")
        return self.process.returncode, out + err


def signals_to(pool: Pool, pid: int) -> list[int]:
    return [r["signum"] for r in pool.events("signal", role=None) if r["pid"] == pid]


def test_article_example_runs_fifteen_workers_with_their_queue_slot_and_pool_id(runner, tmp_path):
    pool = Pool(runner, tmp_path, ARTICLE)
    running = pool.wait_running(15)
    starts = {r["worker"]: r for r in pool.events("start")}
    assert sorted(running) == sorted(
        [f"send_welcome_email.{i}" for i in range(1, 6)] + [f"crunch_data.{i}" for i in range(1, 11)]
    )
    assert starts["crunch_data.7"]["queues"] == "crunch_data"
    assert starts["crunch_data.7"]["slot"] == "7"
    assert starts["crunch_data.7"]["argv"] == ["crunch_data"]
    assert len({r["pool"] for r in starts.values()}) == 1
    assert all(r["pgid"] == r["pid"] for r in starts.values()), "each worker leads its own group"
    pool.kill(signal.SIGTERM)
    code, output = pool.finish()
    assert code == 0, output
    assert "all stopped in time" in output


def test_star_count_from_environment_variable(runner, tmp_path):
    pool = Pool(runner, tmp_path, "'*': ${WORKER_CONCURRENCY}\n", WORKER_CONCURRENCY="3")
    pool.wait_running(3)
    assert {r["queues"] for r in pool.events("start")} == {"*"}
    pool.kill(signal.SIGTERM)
    assert pool.finish()[0] == 0


def test_killed_worker_is_replaced_in_the_same_slot(runner, tmp_path):
    pool = Pool(runner, tmp_path, "q: 4\n")
    before = pool.wait_running(4)
    os.kill(before["q.3"], signal.SIGKILL)
    os.kill(before["q.1"], signal.SIGKILL)
    after = wait_for(lambda: (r := pool.running()) and len(r) == 4
                     and r["q.3"] != before["q.3"] and r["q.1"] != before["q.1"] and r, 10,
                     "replacements")
    assert after["q.2"] == before["q.2"] and after["q.4"] == before["q.4"]
    slots = {r["pid"]: r["slot"] for r in pool.events("start")}
    assert slots[after["q.3"]] == "3"
    pool.kill(signal.SIGTERM)
    assert pool.finish()[0] == 0


def test_term_reaches_the_worker_but_not_its_process_group(runner, tmp_path):
    pool = Pool(runner, tmp_path, "q: 1\n", WORKER_HELPER="1", WORKER_ON_TERM="1.5")
    worker = pool.wait_running(1)["q.1"]
    helper = wait_for(lambda: pool.events("start", role="helper"), 10, "the helper")[0]["pid"]
    pool.kill(signal.SIGTERM)
    wait_for(lambda: signals_to(pool, worker), 10, "TERM at the worker")
    assert signals_to(pool, helper) == [], "a TERM to RQ's work-horse would kill the job"
    code, output = pool.finish()
    assert signals_to(pool, worker) == [signal.SIGTERM]
    # Once the worker is gone, what it left behind gets TERM from the final sweep.
    assert signals_to(pool, helper) == [signal.SIGTERM]
    assert "1 process(es) left behind by workers: TERM" in output
    assert code == 0, output


def test_worker_ignoring_term_is_killed_at_the_term_timeout_and_exit_is_1(runner, tmp_path):
    pool = Pool(runner, tmp_path, "q: 2\n", WORKER_ON_TERM="ignore")
    workers = pool.wait_running(2)
    sent = time.monotonic()
    pool.kill(signal.SIGTERM)
    wait_for(lambda: all(signals_to(pool, pid) == [signal.SIGTERM] for pid in workers.values()), 10,
             "TERM at both workers")
    took = {name: gone_after(pid, sent) for name, pid in workers.items()}
    code, output = pool.finish()
    assert code == 1, output
    # The file's term_timeout, not the 8 s default: KILL no sooner and not much later.
    assert all(TERM_TIMEOUT <= seconds <= TERM_TIMEOUT + MARGIN for seconds in took.values()), took
    for name, pid in workers.items():
        assert f"{name} pid {pid} still running after " in output and output.count(f"{name} pid {pid} still") == 1


def gone_after(pid: int, since: float) -> float:
    """Seconds from `since` until the process has died (gone, or a zombie not yet reaped)."""
    wait_for(lambda: process_state(pid) in (None, "Z"), 30, f"pid {pid} to die")
    return time.monotonic() - since


def test_second_term_stops_now(runner, tmp_path):
    pool = Pool(runner, tmp_path, "q: 2\n", WORKER_ON_TERM="ignore")
    workers = pool.wait_running(2)
    pool.kill(signal.SIGTERM)
    wait_for(lambda: all(signals_to(pool, pid) for pid in workers.values()), 10, "first TERM")
    started = time.monotonic()
    pool.kill(signal.SIGINT)
    code, output = pool.finish()
    assert time.monotonic() - started < 2.5, "the second signal must not wait for the timeout"
    assert code == 1, output
    assert "second stop signal: KILL every worker now" in output


def test_quit_waits_with_no_deadline(runner, tmp_path):
    pool = Pool(runner, tmp_path, "q: 1\n", WORKER_ON_TERM="4")  # longer than term_timeout 3
    pool.wait_running(1)
    pool.kill(signal.SIGQUIT)
    code, output = pool.finish()
    assert code == 0, output
    assert [r["event"] for r in pool.events()][-1] == "exit", "the job was allowed to finish"


def test_hup_replaces_only_changed_groups_and_a_broken_file_changes_nothing(runner, tmp_path):
    pool = Pool(runner, tmp_path, "a: 2\nb: 2\n")
    before = pool.wait_running(4)
    pool.write_config("a: 2\nb:\n  count: 3\n  env: {FLAVOUR: new}\n")
    pool.kill(signal.SIGHUP)
    after = wait_for(lambda: (r := pool.running()) and len(r) == 5
                     and r["b.1"] != before["b.1"] and r["b.2"] != before["b.2"] and r, 15,
                     "group b replaced")
    assert after["a.1"] == before["a.1"] and after["a.2"] == before["a.2"]
    assert signals_to(pool, before["a.1"]) == []
    pool.config.write_text("a: [not, a, count\n")
    pool.kill(signal.SIGHUP)
    time.sleep(0.5)  # give a wrong reload the time to do damage
    assert pool.running() == after
    pool.kill(signal.SIGTERM)
    code, output = pool.finish()
    assert code == 0
    assert "reload failed: the running pool is unchanged" in output
    assert "pool.yml:2: YAML syntax error" in output


def test_ttin_ttou_scale_every_group(runner, tmp_path):
    pool = Pool(runner, tmp_path, "a: 1\nb: 2\n")
    pool.wait_running(3)
    pool.kill(signal.SIGTTIN)
    pool.wait_running(5)
    pool.kill(signal.SIGTTOU)
    pool.wait_running(3)  # the same signal sent twice at once may arrive once
    pool.kill(signal.SIGTTOU)
    running = pool.wait_running(1)
    assert list(running) == ["b.1"]
    pool.kill(signal.SIGTERM)
    assert pool.finish()[0] == 0


def test_usr1_usr2_cont_are_passed_to_every_worker(runner, tmp_path):
    pool = Pool(runner, tmp_path, "a: 1\nb: 1\n")
    workers = pool.wait_running(2)
    for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT):
        pool.kill(signum)
        wait_for(lambda s=signum: all(s in signals_to(pool, p) for p in workers.values()), 10,
                 f"{signal.Signals(signum).name} at every worker")
    pool.kill(signal.SIGTERM)
    assert pool.finish()[0] == 0


def test_winch_stops_workers_and_hup_brings_them_back(runner, tmp_path):
    pool = Pool(runner, tmp_path, "a: 2\n")
    pool.wait_running(2)
    pool.kill(signal.SIGWINCH)
    wait_for(lambda: pool.status()["workers"] == [] and pool.status()["paused"], 10, "paused")
    assert pool.process.poll() is None, "the manager stays"
    pool.kill(signal.SIGHUP)
    pool.wait_running(2)
    pool.kill(signal.SIGTERM)
    assert pool.finish()[0] == 0


BACKOFF_MIN, BACKOFF_MAX = 0.2, 0.8


def expected_backoff(failures: int) -> float:
    """pool.Backoff.delay without its jitter: 0 after one quick exit, then min, 2 x min ... up to max."""
    return 0.0 if failures <= 1 else min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (failures - 2))


def test_crash_loop_backs_off_and_is_reported_once(runner, tmp_path):
    starts = tmp_path / "starts"
    command = json.dumps(["sh", "-c", f"date +%s.%N >> {starts}; exit 1"])
    pool = Pool(runner, tmp_path, f"bad:\n  count: 1\n  command: {command}\n",
                settings=f"  backoff_min: {BACKOFF_MIN}\n  backoff_max: {BACKOFF_MAX}\n")
    wait_for(lambda: len(words(starts)) >= 9, 30, "nine starts")
    pool.kill(signal.SIGTERM)  # the tenth cannot come sooner than 0.75 x backoff_max from now
    code, output = pool.finish()
    assert code == 0, output
    times = [float(word) for word in words(starts)]
    assert output.count("spawned bad.1") == len(times) == 9, output
    # Each start waits for the backoff of the quick exits before it (+-25% jitter), never less.
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for failures, gap in enumerate(gaps, start=1):
        delay = expected_backoff(failures)
        assert 0.75 * delay <= gap <= 1.25 * delay + MARGIN, (failures, [round(g, 2) for g in gaps])
    # Reported once, at the fifth quick exit in a row: after the fifth start, before the sixth.
    lines = output.splitlines()
    reports = [i for i, line in enumerate(lines) if "is crash-looping" in line]
    spawns = [i for i, line in enumerate(lines) if "spawned bad.1" in line]
    assert len(reports) == 1, output
    assert spawns[4] < reports[0] < spawns[5], output
    assert "bad.1 exited with status 1" in lines[reports[0]] and "5 quick exits in a row" in lines[reports[0]]


def words(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_exit_on_crash_loop_exits_3(runner, tmp_path):
    config = "bad:\n  count: 1\n  command: [false]\n"
    pool = Pool(runner, tmp_path, config, "--exit-on-crash-loop",
                settings="  backoff_min: 0.01\n  backoff_max: 0.02\n")
    code, output = pool.finish(timeout=30)
    assert code == 3, output
    assert output.count("is crash-looping") == 1


def test_missing_command_is_a_configuration_error_not_a_crash(runner, tmp_path):
    pool = Pool(runner, tmp_path, "bad:\n  count: 2\n  command: [no-such-command-anywhere]\n")
    time.sleep(1.5)
    pool.kill(signal.SIGTERM)
    code, output = pool.finish()
    assert code == 0, output
    assert "no-such-command-anywhere: command not found (exit 127)" in output
    assert output.count("a configuration error") == 1
    assert output.count("spawned") == 0


# As PID 1 of a namespace the kernel KILLs everything left when the pool exits, so "nothing left
# behind" can only fail outside one: each of these runs both ways, and checks what it claims while
# the pool is still alive.
ids_ns = pytest.mark.parametrize("namespace", [True, False], ids=["pid1", "subreaper"])


def platform_term_to_every_process(pool: Pool, runner: Runner, namespace: bool) -> None:
    """Heroku's shutdown: TERM to every process of the dyno at once; the pool's own comes from the test."""
    if namespace:  # kill(-1) from inside the namespace reaches all but PID 1
        subprocess.run(["nsenter", "-t", str(pool.pid), "-p", "-m", "sh", "-c", "kill -TERM -1"],
                       timeout=10, check=True)
        return
    for pid, state in marked_processes(runner.mark):
        if pid != pool.pid and state != "Z":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def parent_of(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rfind(")") + 2:].split()[1])


@ids_ns
def test_heroku_term_to_every_process_reaches_each_worker_once(runner, tmp_path, namespace):
    pool = Pool(runner, tmp_path, "q: 3\n", namespace=namespace, DYNO="worker.1")
    workers = pool.wait_running(3)
    # PID 1 gets its own TERM a little later, as can happen: workers that already exited must not be
    # replaced by ones that never get a TERM.
    platform_term_to_every_process(pool, runner, namespace)
    time.sleep(0.3)
    pool.kill(signal.SIGTERM)
    code, output = pool.finish()
    assert code == 0, output
    for pid in workers.values():
        assert signals_to(pool, pid) == [signal.SIGTERM], "a second TERM turns warm into cold"
    assert output.count("spawned") == 3


@ids_ns
def test_heroku_leftovers_are_not_sent_a_second_term_and_die_at_the_deadline(runner, tmp_path, namespace):
    pool = Pool(runner, tmp_path, "q: 1\n", namespace=namespace, DYNO="worker.1", WORKER_HELPER="1",
                HELPER_ON_TERM="ignore")
    pool.wait_running(1)
    helper = wait_for(lambda: pool.events("start", role="helper"), 10, "the helper")[0]["pid"]
    helper_here = pool.host_pid(helper)
    platform_term_to_every_process(pool, runner, namespace)
    sent = time.monotonic()
    pool.kill(signal.SIGTERM)
    wait_for(lambda: parent_of(helper_here) == pool.pid, 10, "the pool to adopt the helper its worker left")
    took = gone_after(helper_here, sent)
    code, output = pool.finish()
    assert "left behind by workers: they have the platform's TERM" in output
    assert signals_to(pool, helper) == [signal.SIGTERM], "only the platform's TERM"
    assert TERM_TIMEOUT <= took <= TERM_TIMEOUT + MARGIN, f"KILLed {took:.2f}s after the pool's TERM"
    assert code == 1, "the helper ignored TERM and was KILLed at the deadline"


@ids_ns
def test_pool_reaps_orphans_and_sweeps_what_workers_leave_behind(runner, tmp_path, namespace):
    pool = Pool(runner, tmp_path, "q: 2\n", namespace=namespace, WORKER_DAEMON="1")
    workers = pool.wait_running(2)
    daemons = wait_for(lambda: (d := {r["worker"]: r["pid"] for r in pool.events("start", role="daemon")})
                       and len(d) == 2 and d, 10, "a daemon from each worker")

    # While the pool runs: a worker dies, its daemon is adopted by the pool, then dies and is reaped.
    orphan = pool.host_pid(daemons["q.1"])
    os.kill(pool.host_pid(workers["q.1"]), signal.SIGKILL)
    wait_for(lambda: parent_of(orphan) == pool.pid, 10, "the pool to adopt the orphaned daemon")
    os.kill(orphan, signal.SIGKILL)
    wait_for(lambda: process_state(orphan) is None, 10, "the pool to reap the orphan (no zombie stays)")
    wait_for(lambda: (r := pool.running()) and len(r) == 2 and r["q.1"] != workers["q.1"], 10, "q.1 replaced")

    # The stop: workers exit on TERM; their daemons, orphaned and ignoring TERM, get TERM from the
    # pool, then KILL at the term timeout, while the pool waits for them.
    left = wait_for(lambda: (d := [r["pid"] for r in pool.events("start", role="daemon") if r["pid"] != daemons["q.1"]])
                    and len(d) == 2 and d, 10, "the replacement's daemon")
    left_here = [pool.host_pid(pid) for pid in left]
    sent = time.monotonic()
    pool.kill(signal.SIGTERM)
    wait_for(lambda: all(signals_to(pool, pid) == [signal.SIGTERM] for pid in left), 10, "TERM at the daemons")
    assert pool.process.poll() is None, "the pool exited before what its workers left was gone"
    assert all(parent_of(pid) == pool.pid for pid in left_here), "the pool adopted the daemons"
    took = [gone_after(pid, sent) for pid in left_here]
    code, output = pool.finish()
    assert all(TERM_TIMEOUT <= seconds <= TERM_TIMEOUT + MARGIN for seconds in took), took
    assert "2 process(es) left behind by workers: TERM" in output
    assert code == 1, "the daemons ignored TERM and had to be KILLed"
    assert [p for p in marked_processes(runner.mark) if p[1] != "Z"] == []


def test_status_json_and_scale_and_reload_over_the_socket(runner, tmp_path):
    pool = Pool(runner, tmp_path, "a: 1\n")
    pool.wait_running(1)
    assert stat.S_IMODE(os.stat(pool.socket).st_mode) == 0o600, "only the pool's user may steer"
    control = ["--socket", pool.socket]
    status = runner.run([*control, "--status", "--json"])
    assert status.returncode == 0, status.stderr
    reply = json.loads(status.stdout)
    assert reply["memory"]["manager"] > 1024 * 1024, "the manager's own memory is reported"
    rows = reply["workers"]
    assert [(r["group"], r["slot"], r["state"]) for r in rows] == [("a", 1, "running")]
    table = runner.run([*control, "--status"])
    cells = [[cell.strip() for cell in line.split("\u2502")] for line in table.stdout.splitlines()]
    assert [row[:4] for row in cells if len(row) == 9 and row[0] != "group"] == [
        ["a", "1", str(rows[0]["pid"]), "running"]], table.stdout
    assert "memory: " in table.stdout and "in all, the manager" in table.stdout
    assert rows_memory(status.stdout), "every running worker's memory is shown"
    assert runner.run([*control, "--scale", "a=3"]).returncode == 0
    pool.wait_running(3)
    assert runner.run([*control, "--scale", "nope=3"]).returncode == 2
    assert runner.run([*control, "--reload"]).returncode == 0
    pool.wait_running(1)  # the file says 1: a reload makes the file the truth again
    pool.kill(signal.SIGTERM)
    assert pool.finish()[0] == 0


def rows_memory(status_json: str) -> bool:
    return all(row["memory"] and row["memory"] > 0 for row in json.loads(status_json)["workers"])


def test_status_with_no_pool_exits_4(runner, tmp_path):
    result = runner.run(["--status", "--socket", str(tmp_path / "none.sock")])
    assert result.returncode == 4
    assert result.stderr.count("\n") == 1


def test_hundred_workers_start(runner, tmp_path):
    # A grace that only catches a hang: a hundred exits on a busy 2-core machine can take seconds.
    pool = Pool(runner, tmp_path, "many:\n  count: 100\n  term_timeout: 60\n")
    pool.wait_running(100, timeout=60)
    pool.kill(signal.SIGTERM)
    assert pool.finish()[0] == 0


def test_prefix_puts_each_worker_line_behind_its_name(runner, tmp_path):
    config = tmp_path / "pool.yml"
    config.write_text('talk:\n  count: 2\n  command: [sh, -c, "echo hello from $POOL_WORKER; exec sleep 1000"]\n')
    process = runner.start(["--prefix", "--socket", str(tmp_path / "s.sock")])
    wait_for(lambda: len(marked_sleeps(runner)) == 2, 10, "two workers")
    time.sleep(0.3)  # let the manager copy what the workers wrote
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert sorted(line for line in out.splitlines() if "hello" in line) == [
        "talk.1 | hello from talk.1", "talk.2 | hello from talk.2"]


def marked_sleeps(runner: Runner) -> list[int]:
    return [pid for pid, state in marked_processes(runner.mark)
            if state != "Z" and Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"]


def test_workers_start_with_default_signals_an_empty_mask_and_their_own_group(runner, tmp_path):
    config = tmp_path / "pool.yml"
    config.write_text("look:\n  count: 1\n  command: [cat, /proc/self/status]\n")
    process = runner.start(["--prefix", "--socket", str(tmp_path / "s.sock")])
    time.sleep(1)  # cat exits at once: one run is all we need
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=20)
    status = dict(line.removeprefix("look.1 | ").split(":\t", 1) for line in out.splitlines()
                  if line.startswith("look.1 | ") and ":\t" in line)
    # Signals 1-31: glibc's posix_spawn leaves its own internal 32 and 33 ignored, which no
    # program sees (glibc installs its handlers again at start).
    assert int(status["SigIgn"], 16) & 0x7FFFFFFF == 0, "Python's ignored PIPE and XFSZ must not leak"
    assert status["SigBlk"] == "0000000000000000"
    assert status["NSpgid"] == status["NSpid"], "a worker leads its own process group"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command", ["--status", "--fleet"])
def test_a_command_waiting_on_its_answer_is_stopped_by_ctrl_c(runner, tmp_path, command):
    """The program holds every signal from its first moment (for the pool's sake); a command to a
    running pool or to the fleet's Redis lets go, so Ctrl-C stops one whose peer never answers."""
    if command == "--status":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(tmp_path / "s.sock"))
        args, env = [command, "--socket", str(tmp_path / "s.sock")], runner.env()
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        args = [command]
        env = runner.env(REDIS_URL=f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
    with listener:
        listener.listen()
        process = runner.start(args, env=env)
        peer, _ = listener.accept()  # connected, waiting for an answer that never comes
        with peer:
            os.kill(process.pid, signal.SIGINT)
            try:
                process.communicate(timeout=1.5)  # shorter than either command's own timeout
            except subprocess.TimeoutExpired:
                pytest.fail(f"{command}: Ctrl-C was held while it waited")
    assert process.returncode == 130


def test_a_term_to_pid_1_while_it_reads_its_config_is_not_lost(runner, tmp_path):
    """As PID 1 of a namespace, a signal with no handler and not blocked is dropped by the kernel.
    The pool holds every signal from its first moment, so a `docker stop` that comes while it is
    still reading a long config file stops it once it is up, instead of vanishing."""
    groups = "".join(f"queue_{number}: 0\n" for number in range(4500))  # 9,000 of the 10,000 YAML nodes allowed
    config = tmp_path / "pool.yml"
    config.write_text(f"pool:\n  command: {json.dumps(WORKER)}\n  term_timeout: 3\nq: 1\n" + groups)
    process = runner.start(["--config", str(config), "--socket", str(tmp_path / "s.sock")],
                           env=runner.env(WORKER_LOG=str(tmp_path / "w.jsonl")), namespace=True)
    init = runner.init_pid(process)
    time.sleep(0.3)  # past the interpreter's start, well inside the reading of this file
    assert not (tmp_path / "s.sock").exists(), "the pool was up before the TERM: nothing tested"
    os.kill(init, signal.SIGTERM)
    try:
        out, err = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the TERM sent while the pool started was lost: it ran on")
    assert process.returncode == 0, out + err
    assert "SIGTERM: stopping" in out, out
