"""Preloaded workers: the app imported once in a template process, workers forked from it.

The decisions (what the template imports, what a worker runs, when a worker is stale) are
checked with plain values; the rest with real forks, real RQ and a real redis-server, with the
pool as PID 1 of a PID namespace where a test says so.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT, Runner, children_of, wait_for
from redis_fixture import redis_server  # noqa: F401 - a fixture

from entrypoint import channel as channels
from entrypoint import preload, template
from entrypoint.config import load_config
from entrypoint.control import request
from entrypoint.pool import reload_diff
from entrypoint.poolconfig import ConfigError, Group, PoolConfig

GROUP = Group(name="q", queues=("q",), count=2, min_count=2, max_count=2,
              argv=(sys.executable, "-m", "rq.cli", "worker", "--url", "redis://x", "q"), forked=True)


# ------------------------------------------------------------------ decisions, plain values


def test_the_template_imports_the_preload_list_then_what_each_forked_group_runs() -> None:
    heroku = Group(name="h", queues=("h",), count=1, min_count=1, max_count=1, forked=True,
                   argv=(sys.executable, "-m", "rq.cli", "worker", "--worker-class", "rq.worker.HerokuWorker", "h"),
                   env=(("RQ_JOB_CLASS", "myapp.jobs.Job"),))
    call = Group(name="r", queues=("r",), count=1, min_count=1, max_count=1, argv=(), call="myapp.w:main",
                 forked=True)
    execd = Group(name="e", queues=("e",), count=1, min_count=1, max_count=1, argv=("sleep", "9"))
    config = PoolConfig(source="pool.yml", app_env=None, groups=(GROUP, heroku, call, execd),
                        preload=("myapp", "rq.cli"), after_fork="myapp.hooks:after_fork")
    setup = preload.setup_for(config, {"RQ_CONNECTION_CLASS": "myapp.connection.Redis"})
    assert setup == preload.Setup(
        modules=("myapp", "rq.cli", "myapp.connection", "encodings.idna", "secrets", "myapp.jobs",
                 "rq.worker"),
        calls=("myapp.w:main",),
        after_fork="myapp.hooks:after_fork",
    )
    assert preload.setup_for(PoolConfig(source="x", app_env=None, groups=(execd,)), {}) is None


def test_a_forked_worker_runs_its_call_or_the_module_of_its_command_line() -> None:
    assert preload.fork_target(GROUP) == {"module": "rq.cli",
                                          "args": ["worker", "--url", "redis://x", "q"]}
    call = Group(name="r", queues=("r",), count=1, min_count=1, max_count=1, argv=(), call="a.b:c",
                 forked=True)
    assert preload.fork_target(call) == {"call": "a.b:c"}


def test_a_new_template_makes_every_forked_worker_stale_and_the_reload_says_why() -> None:
    execd = Group(name="e", queues=("e",), count=1, min_count=1, max_count=1, argv=("sleep", "9"))
    before = preload.stamped({"q": (GROUP, 2), "e": (execd, 1)}, 1)
    after = preload.stamped({"q": (GROUP, 3), "e": (execd, 1)}, 2)
    assert before["q"][0].template == 1 and after["q"][0].template == 2
    assert after["e"][0] is execd, "an exec'd group does not depend on the template"
    assert reload_diff(before, after) == ["~q (new code: forked from template 2, replacing 2->3)"]
    assert reload_diff(before, preload.stamped({"q": (GROUP, 3), "e": (execd, 1)}, 1)) == ["q 2->3"]


def test_what_a_callable_returns_becomes_the_exit_status_as_sys_exit_would() -> None:
    assert [template.exit_code(v) for v in (None, 0, 3, 256 + 7, True, False)] == [0, 0, 3, 7, 1, 0]


def test_a_fork_answered_after_its_worker_was_reaped_is_still_that_workers_exit() -> None:
    """The worker is re-parented to the manager before the template's answer arrives: if it dies
    at once, the manager reaps an unknown pid first. That exit must reach the worker's slot."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        keeper = preload.Templates({}, _Silent(), preload.Backoff())
        keeper.current = preload.Template(pid=10, generation=1, channel=ours, started=0.0, ready=True)
        assert not keeper.keep_unclaimed(500, 0, now=1.0), "no fork pending: an orphan, not kept"
        keeper.current.pending[1] = preload.Pending(GROUP, 2, sent=1.0)
        assert keeper.starting() == {("q", 2)}
        assert keeper.keep_unclaimed(501, 256, now=2.0)
        (event,) = keeper.interpret(keeper.current, {"forked": 1, "pid": 501}, now=2.5)
        assert event == preload.Forked(GROUP, 2, 501, 1.0, 256)
        assert keeper.starting() == set()
        assert keeper.hung(now=2.5) == []
        keeper.current.pending[2] = preload.Pending(GROUP, 1, sent=3.0)
        assert keeper.hung(now=3.0 + preload.FORK_TIMEOUT + 0.1) == [keeper.current]
    finally:
        ours.close()
        theirs.close()


def test_a_retired_template_is_heard_out_for_the_forks_under_way() -> None:
    """A stop retires the template while it forks a worker: its answer (the worker's pid) must
    still reach the manager, or that worker runs unknown and nothing ever stops it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)  # as the manager's end is
    try:
        keeper = preload.Templates({}, _Silent(), preload.Backoff())
        template = keeper.current = preload.Template(pid=10, generation=1, channel=ours, started=0.0, ready=True)
        template.pending[1] = preload.Pending(GROUP, 2, sent=1.0)
        keeper.retire(template)
        assert keeper.listening() == [template], "heard out: its channel stays open"
        assert keeper.next_wakeup(restarting=False) == 1.0 + preload.FORK_TIMEOUT
        channels.send(theirs, {"forked": 1, "pid": 501})
        assert keeper.read(template, now=2.0) == [preload.Forked(GROUP, 2, 501, 1.0, None)]
        assert keeper.listening() == [], "its last answer came: the channel closes"
        assert theirs.recv(100) == b"", "and the template sees the end of its channel"
        idle = preload.Template(pid=11, generation=2, channel=theirs, started=0.0, ready=True)
        keeper.retire(idle)
        assert idle.closed, "nothing under way: closed at once"
    finally:
        ours.close()
        theirs.close()


def test_a_stopping_pool_sets_no_wake_up_for_a_template_it_will_not_restart() -> None:
    keeper = preload.Templates({}, _Silent(), preload.Backoff())
    keeper.setup = preload.Setup(("app",), (), None)
    keeper.history = keeper.history._replace(not_before=5.0)
    assert keeper.next_wakeup(restarting=True) == 5.0
    assert keeper.next_wakeup(restarting=False) is None


class _Silent:
    def info(self, message: str) -> None:
        pass

    warning = error = debug = info


# ------------------------------------------------------------------ config


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_preload_after_fork_and_call_are_read_from_the_file(tmp_path: Path) -> None:
    write(tmp_path / "pool.yml", """\
        pool:
          preload: [example.jobs, example.connection]
          after_fork: example.hooks:after_fork
        crunch_data: 2
        reports:
          count: 1
          call: myapp.workers:main
        plain:
          count: 1
          command: sleep 60
        """)
    config = load_config(None, {}, tmp_path)
    assert config.preload == ("example.jobs", "example.connection")
    assert config.after_fork == "example.hooks:after_fork"
    crunch, reports, plain = config.groups
    assert crunch.forked and crunch.argv[1:4] == ("-m", "rq.cli", "worker")
    assert reports.forked and reports.call == "myapp.workers:main"
    assert not plain.forked and plain.argv == ("sleep", "60")


def test_without_preload_the_default_worker_is_exec_d_and_a_call_still_forks(tmp_path: Path) -> None:
    write(tmp_path / "pool.yml", "q: 1\nr:\n  count: 1\n  call: m:f\n")
    q, r = load_config(None, {}, tmp_path).groups
    assert not q.forked and r.forked


def test_worker_preload_and_the_flag_replace_the_files_list(tmp_path: Path) -> None:
    write(tmp_path / "pool.yml", "pool:\n  preload: a\nq: 1\n")
    assert load_config(None, {}, tmp_path).preload == ("a",)
    assert load_config(None, {"WORKER_PRELOAD": "b, c.d"}, tmp_path).preload == ("b", "c.d")
    assert load_config(None, {"WORKER_PRELOAD": "b"}, tmp_path, ("e",)).preload == ("e",)
    (group,) = load_config(None, {"WORKER_PRELOAD": "b"}, tmp_path / "nowhere").groups
    assert group.forked, "an env-only pool preloads with WORKER_PRELOAD"


def test_bad_preload_settings_are_reported_with_their_lines(tmp_path: Path) -> None:
    write(tmp_path / "pool.yml", """\
        pool:
          preload: [ok, "not a module"]
          after_fork: no_colon
        q:
          count: 1
          call: m:f
          command: sleep 1
        """)
    with pytest.raises(ConfigError) as raised:
        load_config(None, {"WORKER_PRELOAD": ""}, tmp_path)
    assert [str(p) for p in raised.value.problems] == [
        "pool.yml:2: pool.preload: expected module names such as myapp.jobs, separated by commas, "
        "got 'not a module'",
        "pool.yml:3: pool.after_fork: expected module:function, such as myapp.workers:main, got 'no_colon'",
        "pool.yml:7: q.command: a group runs a command or a call, not both",
    ]
    with pytest.raises(ConfigError) as raised:
        load_config(None, {"WORKER_PRELOAD": "a;b"}, tmp_path / "nowhere")
    assert [str(p) for p in raised.value.problems] == [
        "environment: WORKER_PRELOAD: expected module names such as myapp.jobs, separated by commas, got 'a;b'"]


# ------------------------------------------------------------------ real processes

APP = """\
import os, time

VERSION = 1
with open(os.environ["APP_LOG"], "a") as log:
    log.write("import %d\\n" % os.getpid())


def after_fork():
    with open(os.environ["APP_LOG"], "a") as log:
        log.write("after_fork %d %s %s\\n" % (os.getpid(), os.environ["POOL_WORKER"], os.environ.get("FLAVOUR")))


def main():
    with open(os.environ["APP_LOG"], "a") as log:
        log.write("run %d %d %d %d %s\\n" % (os.getpid(), os.getppid(), os.getpgrp(), VERSION,
                                            os.environ["POOL_WORKER"]))
    print("hello from", os.environ["POOL_WORKER"], flush=True)
    while True:
        time.sleep(1)
"""


class AppPool:
    """A pool of `call:` workers forked from a small app that logs where it is imported and run."""

    def __init__(self, runner: Runner, tmp_path: Path, *args: str, namespace: bool = False,
                 count: int = 3, app: str = APP, call: str = "main", **env: str) -> None:
        self.app = tmp_path / "app" / "preloaded_app.py"
        self.app.parent.mkdir(exist_ok=True)
        self.app.write_text(app)
        self.log = tmp_path / "app.log"
        self.out = tmp_path / "pool.out"
        self.socket = str(tmp_path / "pool.sock")
        config = write(tmp_path / "pool.yml", f"""\
            pool:
              preload: [preloaded_app]
              after_fork: preloaded_app:after_fork
              term_timeout: 2
            a:
              count: {count}
              call: preloaded_app:{call}
              env: {{FLAVOUR: mint}}
            """)
        environment = runner.env(APP_LOG=str(self.log), PYTHONPATH=f"{ROOT}:{self.app.parent}", **env)
        with open(self.out, "w") as sink:
            self.process = runner.start(["-v", "--config", str(config), "--socket", self.socket, *args],
                                        env=environment, namespace=namespace, stdout=sink,
                                        stderr=subprocess.STDOUT)
        self.pid = runner.init_pid(self.process) if namespace else self.process.pid

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def lines(self, kind: str) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split()[1:] for line in self.log.read_text().splitlines() if line.startswith(kind + " ")]

    def status(self) -> dict:
        return request(self.socket, {"command": "status"})

    def running(self, count: int, version: int | None = None) -> dict[str, int]:
        """worker name -> pid once `count` workers have started their work (of that VERSION)."""
        def ready():
            try:
                rows = self.status()["workers"]
            except OSError:
                return None
            started = {int(r[0]) for r in self.lines("run") if version is None or int(r[3]) == version}
            pids = {f"{w['group']}.{w['slot']}": w["pid"] for w in rows
                    if w["state"] == "running" and w["pid"] in started}
            return pids if len(pids) == count else None
        return wait_for(ready, 20, f"{count} forked workers running")

    def finish(self, timeout: float = 20) -> tuple[int, str]:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the pool did not exit within {timeout}s")
        return self.process.returncode, self.output()

    def stop(self, timeout: float = 20) -> tuple[int, str]:
        os.kill(self.pid, signal.SIGTERM)
        return self.finish(timeout)


@pytest.mark.parametrize("namespace", [False, True], ids=["subreaper", "pid1"])
def test_workers_are_the_managers_children_and_the_manager_never_imports_the_app(
        runner: Runner, tmp_path: Path, namespace: bool) -> None:
    pool = AppPool(runner, tmp_path, namespace=namespace)
    workers = pool.running(3)
    template = pool.status()["template"]
    assert template["state"] == "ready"
    assert [int(pid) for (pid,) in pool.lines("import")] == [template["pid"]], (
        "the app is imported once, in the template, and never in the manager")
    assert len(children_of(pool.pid)) == 1 + 3, "the template and each worker are the manager's children"
    manager = pool.status()["manager_pid"]  # as the workers see it: 1 in a namespace of its own
    runs = {int(r[0]): r for r in pool.lines("run")}
    for name, pid in workers.items():
        _, ppid, pgid, _version, worker = runs[pid]
        assert (int(ppid), int(pgid), worker) == (manager, pid, name), (
            "the parent is the manager from the worker's first line on, and it leads its own group")
    assert sorted(r[1:] for r in pool.lines("after_fork")) == [[name, "mint"] for name in sorted(workers)], (
        "after_fork runs once in every worker, with the group's env and POOL_* already set")
    code, output = pool.stop()
    assert code == 0, output
    assert "hello from a.1" in output


def test_a_preload_that_raises_exits_2_naming_the_module_with_the_apps_traceback(
        runner: Runner, tmp_path: Path) -> None:
    broken = "import json\n\ndef load():\n    return json.loads('{')\n\nSETTINGS = load()\n" + APP
    pool = AppPool(runner, tmp_path, app=broken)
    code, output = pool.finish()  # a broken preload ends the pool; it is not retried
    assert code == 2, output
    assert "error: preload: cannot import preloaded_app: JSONDecodeError" in output
    assert 'preloaded_app.py", line 6, in <module>' in output, "the app's own frames are shown"
    assert "entrypoint/template.py" not in output, "ours are not"
    assert pool.lines("run") == [] and "forked" not in output, "no worker was forked"


def test_hup_re_imports_the_app_in_a_new_template_and_every_worker_runs_the_new_code(
        runner: Runner, tmp_path: Path) -> None:
    pool = AppPool(runner, tmp_path)
    first = pool.running(3, version=1)
    old_template = pool.status()["template"]["pid"]
    pool.app.write_text(APP.replace("VERSION = 1", "VERSION = 2"))
    os.kill(pool.pid, signal.SIGHUP)
    second = pool.running(3, version=2)
    assert not set(first.values()) & set(second.values())
    status = pool.status()
    assert status["template"]["pid"] != old_template and status["template"]["generation"] == 2
    wait_for(lambda: not os.path.exists(f"/proc/{old_template}"), 10, "the old template to exit")

    pool.app.write_text(APP + "\nx = (\n")  # a broken app on reload changes nothing
    os.kill(pool.pid, signal.SIGHUP)
    wait_for(lambda: "reload failed: the running pool is unchanged" in pool.output(), 20,
             "the reload to fail")
    assert pool.running(3, version=2) == second
    assert pool.status()["template"]["generation"] == 2
    code, output = pool.stop()
    assert code == 0, output
    assert "SyntaxError" in output


def test_a_template_killed_with_9_is_replaced_and_the_workers_keep_running(
        runner: Runner, tmp_path: Path) -> None:
    pool = AppPool(runner, tmp_path)
    workers = pool.running(3)
    old = pool.status()["template"]["pid"]
    os.kill(old, signal.SIGKILL)

    def replaced():
        row = pool.status()["template"]
        return row if row["pid"] not in (None, old) and row["state"] == "ready" else None

    row = wait_for(replaced, 15, "a new template")
    assert row["restarts"] == 1 and row["last_exit"] == "killed by SIGKILL"
    assert pool.running(3) == workers, "the workers kept running, untouched"
    request(pool.socket, {"command": "scale", "group": "a", "count": 4})
    grown = pool.running(4)
    assert grown.items() >= workers.items(), "and the new template forks the next one"
    code, output = pool.stop()
    assert code == 0, output


def test_forked_workers_output_is_prefixed_with_their_names(runner: Runner, tmp_path: Path) -> None:
    pool = AppPool(runner, tmp_path, "--prefix", count=2)
    pool.running(2)
    code, output = pool.stop()
    assert code == 0
    for name in ("a.1", "a.2"):
        assert re.search(rf"^{name} +\| hello from {name}$", output, re.MULTILINE), output


THREADS_AND_SOCKETS = APP + """
import socket, threading
threading.Thread(target=time.sleep, args=(3600,), daemon=True, name="poller").start()
CONNECTION = socket.create_connection(("127.0.0.1", int(os.environ["REDIS_PORT"])))


def check_connection():
    fd = CONNECTION.fileno()
    with open(os.environ["APP_LOG"], "a") as log:
        log.write("socket %d %s\\n" % (os.getpid(), os.readlink("/proc/self/fd/%d" % fd)))
    main()
"""


def test_a_connection_opened_while_importing_is_never_shared_and_threads_are_warned_about(
        runner: Runner, tmp_path: Path, redis_server: str) -> None:  # noqa: F811
    port = redis_server.rsplit(":", 1)[1].split("/")[0]
    pool = AppPool(runner, tmp_path, app=THREADS_AND_SOCKETS, call="check_connection", count=2, REDIS_PORT=port)
    wait_for(lambda: len(pool.lines("socket")) == 2, 20, "two workers to look at the connection")
    assert {target for _pid, target in pool.lines("socket")} == {"/dev/null"}, (
        "in every worker the connection made at import is gone, not shared")
    code, output = pool.stop()
    assert code == 0, output
    assert "it closed 1 connection(s) the app opened while importing" in output
    assert "the preloaded app started 1 thread(s) while importing" in output


def test_check_shows_which_groups_are_forked(runner: Runner, tmp_path: Path) -> None:
    write(tmp_path / "pool.yml", "pool:\n  preload: [example.jobs]\nq: 2\ns:\n  count: 1\n  command: sleep 9\n")
    result = runner.run(["--check"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith(("q ", "s "))}
    assert " fork " in rows["q"] and " exec " in rows["s"], result.stdout
    assert "preload: example.jobs" in result.stdout


# ------------------------------------------------------------------ RQ, Redis and memory


def rq_pool(runner: Runner, tmp_path: Path, redis_url: str, *, preload_app: bool, namespace: bool = True,
            crunch: int = 3, extra_env: dict | None = None) -> tuple[subprocess.Popen, int, str]:
    """The example app's pool, preloaded or exec'd; (process, manager pid, socket)."""
    settings = "  preload: [example.jobs]\n" if preload_app else ""
    config = write(tmp_path / f"pool-{preload_app}.yml",
                   f"send_welcome_email: 2\ncrunch_data: {crunch}\npool:\n{settings}"
                   "  env: {RQ_CONNECTION_CLASS: example.connection.Redis}\n  term_timeout: 5\n")
    sock = str(tmp_path / f"pool-{preload_app}.sock")
    env = runner.env(REDIS_URL=redis_url, **(extra_env or {}))
    with open(tmp_path / f"pool-{preload_app}.log", "w") as sink:
        process = runner.start(["--config", str(config), "--socket", sock], env=env, cwd=ROOT,
                               namespace=namespace, stdout=sink, stderr=subprocess.STDOUT)
    pid = runner.init_pid(process) if namespace else process.pid
    return process, pid, sock


def registered_workers(connection) -> int:
    from rq import Worker

    return len(Worker.all(connection=connection))


@pytest.mark.timeout(120)
def test_500_jobs_through_preloaded_rq_workers_each_finish_exactly_once(
        runner: Runner, tmp_path: Path, redis_server: str) -> None:  # noqa: F811
    sys.path.insert(0, str(ROOT))
    from example.check import wait as wait_for_jobs
    from example.connection import connect
    from example.enqueue import enqueue

    connection = connect(redis_server)
    ids = enqueue(connection, 500)
    process, manager, sock = rq_pool(runner, tmp_path, redis_server, preload_app=True)
    result = wait_for_jobs(connection, timeout=60, interval=0.25)
    assert result.count("finished") == len(ids) == result.total, f"{result.summary()} {result.reasons}"
    workers = [w for w in request(sock, {"command": "status"})["workers"] if w["pid"]]
    assert len(workers) == 5 and all(w["forked"] for w in workers)
    assert len(children_of(manager)) == 2 + 5, (
        "the template, the monitor (the RQ group's backlog) and the 5 workers are the manager's children")
    os.kill(manager, signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def pool_pss(manager: int) -> int:
    """Bytes of PSS of the manager and everything below it, read from /proc, not from the pool."""
    total, pending = 0, [manager]
    while pending:
        pid = pending.pop()
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            pending.extend(children_of(pid))
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")) * 1024
    return total


@pytest.mark.timeout(120)
def test_a_preloaded_pool_uses_well_under_the_memory_of_the_same_pool_execd(
        runner: Runner, tmp_path: Path, redis_server: str) -> None:  # noqa: F811
    """Measured here at about 0.5 (11 MiB per forked worker against 26 MiB exec'd, plus the
    template): a ratio of 0.75 leaves room for other Pythons and machines, and still fails
    when the workers are not really sharing the template's pages."""
    from redis import Redis

    connection = Redis.from_url(redis_server)
    totals = {}
    for preload_app in (False, True):
        process, manager, _sock = rq_pool(runner, tmp_path, redis_server, preload_app=preload_app, crunch=5)
        wait_for(lambda: registered_workers(connection) == 7, 30, "7 RQ workers to register")
        time.sleep(1)  # past start-up: idle workers
        totals[preload_app] = pool_pss(manager)
        os.kill(manager, signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        wait_for(lambda: registered_workers(connection) == 0, 10, "the workers to unregister")
    ratio = totals[True] / totals[False]
    assert ratio < 0.75, f"preloaded {totals[True] >> 20} MiB vs exec'd {totals[False] >> 20} MiB: {ratio:.2f}"

