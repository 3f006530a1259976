"""Our default RQ worker: no job lost or failed by a stop, on one queue, several, or every queue.

The decisions are plain functions, tested with plain values first. Then real RQ against a real
redis-server: the holding list's moves in-process, and every stop as it happens, with the pool
as PID 1 of a new PID namespace running real `rq worker` processes. Where a stop must land in a
moment too short to hit by chance, the worker is a subclass from tests/programs/rq_windows.py
that holds that moment open (as any user's subclass may).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

rq = pytest.importorskip("rq")
import redis  # noqa: E402
from conftest import PROGRAMS, ROOT, children_of, wait_for  # noqa: E402
from redis_fixture import redis_server  # noqa: E402, F401 - a fixture
from rq import Queue, Retry  # noqa: E402
from rq.job import Job, JobStatus  # noqa: E402
from rq.registry import FailedJobRegistry, StartedJobRegistry  # noqa: E402

from entrypoint import rq_holding  # noqa: E402
from entrypoint.rq_holding import Holder, HoldingList, Place, fate_of_held_job, owner_is_dead  # noqa: E402
from entrypoint.rq_reliable import INTERRUPTED, ReliableWorker, ShutdownSettings, interrupt_at  # noqa: E402
from entrypoint.rqworker import default_worker_argv  # noqa: E402

WINDOWS = "rq_windows"
JOBS = "rq_jobs"
JOBS_WATCHED = 40  # jobs taken under snapshots: a non-atomic take shows gaps in most of them


# --- decisions, with plain values ---------------------------------------------------------------


@pytest.mark.parametrize(("term_timeout", "at"), [
    (25.0, 22.5),  # a tenth of the grace: Heroku's 25 s
    (8.0, 7.0),  # at least 1 s: Docker's 8 s
    (3.0, 2.0),
    (1.2, 0.6),  # at most half the grace
    (0.0, 0.0),
])
def test_a_running_job_is_interrupted_a_margin_before_the_kill(term_timeout, at) -> None:
    assert interrupt_at(100.0, term_timeout) == pytest.approx(100.0 + at)


def test_shutdown_settings_from_the_pools_environment() -> None:
    assert ShutdownSettings.from_env({}) == ShutdownSettings(requeue=True, term_timeout=None)
    assert ShutdownSettings.from_env({"POOL_TERM_TIMEOUT": "12.5"}) == ShutdownSettings(True, 12.5)
    assert ShutdownSettings.from_env({"POOL_REQUEUE_ON_SHUTDOWN": "0", "POOL_TERM_TIMEOUT": "8"}) == (
        ShutdownSettings(False, 8.0))
    assert ShutdownSettings.from_env({"POOL_REQUEUE_ON_SHUTDOWN": "false"}).requeue is False
    assert ShutdownSettings(True, 8.0).requeue_at_deadline
    assert not ShutdownSettings(True, None).requeue_at_deadline  # not under the pool: no deadline known
    assert not ShutdownSettings(False, 8.0).requeue_at_deadline
    with pytest.raises(ValueError, match="POOL_REQUEUE_ON_SHUTDOWN: expected 1/0"):
        ShutdownSettings.from_env({"POOL_REQUEUE_ON_SHUTDOWN": "sometimes"})
    with pytest.raises(ValueError, match="POOL_TERM_TIMEOUT: expected a number of seconds"):
        ShutdownSettings.from_env({"POOL_TERM_TIMEOUT": "soon"})


HERE = Place("boot-1", "pid:[4026531836]")
ELSEWHERE = Place("boot-1", "pid:[4026532999]")


@pytest.mark.parametrize(("holder", "running", "registered", "dead"), [
    # our own PID namespace: exact, whatever RQ's registration still says
    (Holder("w", "rq:worker:w", HERE, 42, 1000), {42: 1000}, True, False),
    (Holder("w", "rq:worker:w", HERE, 42, 1000), {}, True, True),  # gone
    (Holder("w", "rq:worker:w", HERE, 42, 1000), {42: 2000}, True, True),  # pid reused
    # another namespace or machine: RQ's registration (heartbeat, death date) decides
    (Holder("w", "rq:worker:w", ELSEWHERE, 42, 1000), {42: 1000}, True, False),
    (Holder("w", "rq:worker:w", ELSEWHERE, 42, 1000), {42: 1000}, False, True),
    (Holder("w", "rq:worker:w"), {}, True, False),  # record lost (Redis restart): registration only
    (Holder("w", "rq:worker:w"), {}, False, True),
])
def test_whose_holding_list_is_orphaned(holder, running, registered, dead) -> None:
    assert owner_is_dead(holder, HERE, running.get, registered) is dead


def test_a_held_job_goes_back_only_while_queued() -> None:
    assert fate_of_held_job("queued", "queued") == "requeue"
    for settled in (None, "canceled", "finished", "started", "deferred"):
        assert fate_of_held_job(settled, "queued") == "drop"


def test_holder_record_round_trip_and_a_partial_one() -> None:
    holder = Holder("w1", "rq:worker:w1", HERE, 42, 1000, "host:1", "crunch_data.3")
    assert Holder.from_fields("w1", holder.fields(), "guessed") == holder
    assert Holder.from_fields("w2", {}, "rq:worker:w2") == Holder("w2", "rq:worker:w2")
    assert Holder.from_fields("w3", {"pid": "x", "boot_id": "b"}, "k").place is None


def test_process_start_time_of_a_live_process_a_zombie_and_nothing() -> None:
    assert rq_holding.process_start_time(os.getpid()) is not None
    child = subprocess.Popen(["true"])
    wait_for(lambda: rq_holding.process_start_time(child.pid) is None, 5, "the child to become a zombie")
    child.wait()
    assert rq_holding.process_start_time(child.pid) is None


@pytest.mark.parametrize(("queues", "dyno", "worker_class"), [
    (("high",), False, "entrypoint.rq_reliable.ReliableWorker"),
    (("high", "low"), False, "entrypoint.rq_reliable.ReliableWorker"),
    (("high",), True, "entrypoint.rq_reliable.ReliableHerokuWorker"),
    (("*",), False, "entrypoint.rq_every_queue.EveryQueueWorker"),
    (("*",), True, "entrypoint.rq_every_queue.EveryQueueHerokuWorker"),
])
def test_the_default_command_names_our_worker_class(queues, dyno, worker_class) -> None:
    env = {"REDIS_URL": "redis://r:6379/1", **({"DYNO": "worker.1"} if dyno else {})}
    argv = default_worker_argv(queues, env)
    assert argv[:6] == (sys.executable, "-m", "rq.cli", "worker", "--url", "redis://r:6379/1")
    assert argv[6:8] == ("--worker-class", worker_class)
    assert argv[8:] == tuple(q for q in queues if q != "*")


def test_building_the_default_command_imports_neither_rq_nor_redis() -> None:
    code = ("import sys, entrypoint.config, entrypoint.rqworker; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rq', 'redis')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "[]"


# --- the holding list, in-process against a real redis-server --------------------------------


@pytest.fixture
def connection(redis_server):  # noqa: F811
    client = redis.Redis.from_url(redis_server)
    yield client
    client.close()


def test_take_moves_the_first_job_of_the_first_non_empty_queue(connection) -> None:
    high, low = Queue("high", connection=connection), Queue("low", connection=connection)
    later = low.enqueue(time.sleep, 0)
    first = high.enqueue(time.sleep, 0)
    holding = HoldingList(connection, "w1")
    assert holding.take([high.key, low.key]) == (high.key, first.id)
    assert holding.take([high.key, low.key]) == (low.key, later.id)
    assert holding.take([high.key, low.key]) is None
    assert holding.job_ids() == [later.id, first.id]
    assert (high.count, low.count) == (0, 0)


def test_claim_and_give_back_exclude_each_other(connection) -> None:
    queue = Queue("q", connection=connection)
    job, behind = queue.enqueue(time.sleep, 0), queue.enqueue(time.sleep, 0)
    holding = HoldingList(connection, "w1")
    holding.take([queue.key])
    assert holding.give_back(job.id, queue.key)
    assert queue.get_job_ids() == [job.id, behind.id], "back at the head"
    assert not holding.give_back(job.id, queue.key), "given back twice"
    holding.take([queue.key])
    assert holding.claim(job.id, job.key, "started")
    assert job.get_status(refresh=True) == JobStatus.STARTED
    assert not holding.give_back(job.id, queue.key), "a started job is not given back"
    assert not holding.claim(job.id, job.key, "started"), "claimed twice"
    assert queue.get_job_ids() == [behind.id]


def test_a_holder_is_forgotten_only_once_its_list_is_empty(connection) -> None:
    queue = Queue("q", connection=connection)
    job = queue.enqueue(time.sleep, 0)
    holding = HoldingList(connection, "w1")
    holding.register(Holder("w1", "rq:worker:w1", HERE, 42, 7, "pool", "q.1"))
    holding.take([queue.key])
    assert [h.slot for h in rq_holding.holders(connection, lambda name: name)] == ["q.1"]
    assert rq_holding.held_job_ids(connection) == {job.id}
    assert not holding.unregister()
    holding.drop(job.id)
    assert holding.unregister()
    assert rq_holding.holders(connection, lambda name: name) == []


def test_every_job_is_somewhere_at_every_instant_while_a_worker_takes_jobs_from_two_queues(
        connection, redis_server, tmp_path) -> None:  # noqa: F811
    """Atomic snapshots taken as fast as Redis answers, while a worker drains two queues: each
    finds every job in a queue, in a holding list, or started/finished. A BLPOP, or a pop and a
    push of our own, leaves a gap a snapshot falls into."""
    queues = [Queue(name, connection=connection) for name in ("a", "b")]
    jobs = [queues[i % 2].enqueue(f"{JOBS}.add", i, 1) for i in range(JOBS_WATCHED)]
    snapshot = connection.register_script("""
        local missing = 0
        local held = {}
        for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
            for _, id in ipairs(redis.call('LRANGE', ARGV[1] .. name, 0, -1)) do held[id] = true end
        end
        for _, key in ipairs({KEYS[2], KEYS[3]}) do
            for _, id in ipairs(redis.call('LRANGE', key, 0, -1)) do held[id] = true end
        end
        for i = 2, #ARGV do
            local status = redis.call('HGET', 'rq:job:' .. ARGV[i], 'status')
            if not held[ARGV[i]] and status ~= 'started' and status ~= 'finished' then missing = missing + 1 end
        end
        return missing
    """)
    worker = subprocess.Popen(
        [sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", redis_server, "--worker-class",
         "entrypoint.rq_reliable.ReliableWorker", "a", "b"],
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{PROGRAMS}"}, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    snapshots, gaps = 0, 0
    args = [rq_holding.PREFIX + "holding:", *(job.id for job in jobs)]
    try:
        while worker.poll() is None:
            gaps += snapshot(keys=[rq_holding.HOLDERS, queues[0].key, queues[1].key], args=args)
            snapshots += 1
        assert worker.wait(timeout=60) == 0, worker.stderr.read()
    finally:
        with contextlib.suppress(ProcessLookupError):
            worker.kill()
        worker.wait()
    statuses = {job.get_status(refresh=True) for job in jobs}
    print(f"{snapshots} snapshots while {JOBS_WATCHED} jobs were taken: {gaps} found a job nowhere")
    assert statuses == {JobStatus.FINISHED}
    assert snapshots > 10 * JOBS_WATCHED, "too few snapshots to have watched the takes"
    assert gaps == 0, f"{gaps} snapshot(s) found a job nowhere"


def test_a_lower_priority_queue_waits_no_longer_than_the_poll_and_the_first_wakes_the_wait(
        connection, redis_server) -> None:  # noqa: F811
    """An idle worker on 'a,b' blocks on `a` (BLMOVE: a job there wakes it) and looks at `b` between waits."""
    worker = ReliableWorker(["a", "b"], connection=redis.Redis.from_url(redis_server))
    worker.bootstrap()
    found: list = []
    try:
        thread = threading.Thread(target=lambda: found.append(worker.take(60.0)))
        thread.start()

        def blocked_on_a() -> bool:
            return any(c.get("cmd") == "blmove" for c in connection.client_list())
        wait_for(blocked_on_a, 5, "the worker to block on its first queue")
        job = Queue("b", connection=connection).enqueue(time.sleep, 0)
        thread.join(10)  # far beyond the poll, far below the 60 s the wait on `a` alone would last
        assert found and found[0][0].id == job.id
        assert worker.holding.job_ids() == [job.id]

        worker.redis_server_version = (6, 0, 0)  # before BLMOVE: the wait is a sleep between looks
        job = Queue("a", connection=connection).enqueue(time.sleep, 0)
        taken = worker.take(10.0)
        assert taken is not None and taken[0].id == job.id
    finally:
        worker.teardown()
    assert [q.count for q in (Queue("a", connection=connection), Queue("b", connection=connection))] == [1, 1], (
        "teardown gave both jobs back to their queues")


def test_a_stop_ends_the_blocking_wait_at_once(redis_server) -> None:  # noqa: F811
    """Idle, the worker blocks in BLMOVE (on one queue, for the whole dequeue window); a stop
    signal breaks that wait, and one that came just before it keeps it from starting, instead of
    letting it run its course (here 30 s, so a wait that ran on shows as a hang)."""
    worker = ReliableWorker(["a"], connection=redis.Redis.from_url(redis_server))
    worker.bootstrap()
    worker._stop_requested = True  # the flag a stop just before the wait left
    started = time.monotonic()
    assert worker.wait(30.0) is None
    assert time.monotonic() - started < 10, "the wait started after the stop"
    worker._stop_requested = False
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    worker._install_signal_handlers()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        started = time.monotonic()
        assert worker.wait(30.0) is None
        assert time.monotonic() - started < 10, "the wait ran its course"
        assert worker._stop_requested
    finally:
        timer.cancel()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        worker.teardown()


# --- real workers under the pool, in a PID namespace ------------------------------------------


class RQPool:
    """The pool as PID 1 of a new PID namespace, running real `rq worker` processes."""

    def __init__(self, runner, tmp_path: Path, url: str, groups: str, *, term_timeout: float = 2.0,
                 dyno: bool = False, **env: str) -> None:
        self.windows = tmp_path / "windows"
        self.windows.mkdir(exist_ok=True)
        config = tmp_path / "pool.yml"
        config.write_text(f"{groups}pool:\n  term_timeout: {term_timeout}\n")
        environment = runner.env(REDIS_URL=url, PYTHONPATH=f"{ROOT}:{PROGRAMS}", WINDOW_DIR=str(self.windows),
                                 **env)
        if dyno:
            environment["DYNO"] = "worker.1"
        self.term_timeout = term_timeout
        name = f"pool-{time.monotonic_ns()}"
        self.log = tmp_path / f"{name}.log"
        with open(self.log, "w") as sink:
            self.process = runner.start(["-v", "--config", str(config), "--socket", str(tmp_path / f"{name}.sock")],
                                        namespace=True, env=environment, cwd=tmp_path, stdout=sink,
                                        stderr=subprocess.STDOUT)
        self.init = runner.init_pid(self.process)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> list[int]:
        return [pid for pid in children_of(self.init)
                if b"rq.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()]

    def window(self, name: str, job: Job) -> None:
        """Once a worker (or its horse) holds this window open with this job."""
        wait_for((self.windows / f"{name}-{job.id}").exists, 20, f"a worker to reach the {name!r} window")

    def horse(self, worker: int) -> int:
        """The host pid of the worker's work-horse (pids seen inside the namespace differ)."""
        return wait_for(lambda: (children_of(worker) or [None])[0], 10, "the work-horse")

    def stop(self, *, heroku: bool = False, timeout: float = 20) -> tuple[int, float]:
        """TERM as `docker stop` does (PID 1 only) or as Heroku does (every process); exit status, seconds."""
        targets = [self.init]
        if heroku:
            stack = [self.init]
            while stack:
                with contextlib.suppress(OSError):
                    below = children_of(stack.pop())
                    targets.extend(below)
                    stack.extend(below)
        started = time.monotonic()
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the pool did not exit within {timeout}s\n{self.output()[-3000:]}")
        return self.process.returncode, time.monotonic() - started


def command(worker_class: str, *options: str) -> str:
    return (f"  command: {sys.executable} -m rq.cli worker --url ${{REDIS_URL}} --worker-class {worker_class}"
            f" {' '.join(options)} {{queues}}\n")


def wip(connection, queue: str) -> list[str]:
    return [entry.decode() for entry in connection.zrange(StartedJobRegistry(queue, connection=connection).key, 0, -1)]


def assert_nothing_held_or_failed(connection, *queues: str) -> None:
    assert rq_holding.held_job_ids(connection) == set()
    for name in queues:
        assert FailedJobRegistry(name, connection=connection).get_job_ids() == [], f"failed on {name}"


@pytest.mark.timeout(60)
def test_a_stop_between_take_and_start_puts_the_job_back_at_the_head_at_once(
        runner, tmp_path, redis_server, connection) -> None:  # noqa: F811
    queue = Queue("a", connection=connection)
    job, behind = queue.enqueue(f"{JOBS}.add", 1, 2), queue.enqueue(f"{JOBS}.add", 3, 4)
    pool = RQPool(runner, tmp_path, redis_server, "a:\n  count: 1\n" + command(f"{WINDOWS}.PauseAfterTake"))
    pool.window("taken", job)
    assert rq_holding.held_job_ids(connection) == {job.id}
    code, _ = pool.stop()
    assert code == 0 and "all stopped in time" in pool.output(), pool.output()[-3000:]
    assert queue.get_job_ids() == [job.id, behind.id], "back at the head, in front of the job behind it"
    assert job.get_status(refresh=True) == JobStatus.QUEUED
    assert "back at the head of a (a stop before it started)" in pool.output()
    assert wip(connection, "a") == []
    assert_nothing_held_or_failed(connection, "a")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("heroku", [False, True], ids=["docker-stop", "heroku"])
def test_a_work_horse_killed_before_it_started_the_job_gives_it_back_not_fails_it(
        runner, tmp_path, redis_server, connection, heroku) -> None:  # noqa: F811
    queue = Queue("a", connection=connection)
    job, behind = queue.enqueue(f"{JOBS}.add", 1, 2), queue.enqueue(f"{JOBS}.add", 3, 4)
    worker_class = "HerokuHorsePausesBeforeStart" if heroku else "HorsePausesBeforeStart"
    pool = RQPool(runner, tmp_path, redis_server, "a:\n  count: 1\n" + command(f"{WINDOWS}.{worker_class}"),
                  term_timeout=10, dyno=heroku)
    pool.window("horse", job)
    (worker,) = pool.workers()
    horse = pool.horse(worker)
    assert len(wip(connection, "a")) == 1, "RQ registered the execution before forking"
    stopping = threading.Thread(target=lambda: pool.stop(heroku=heroku))
    stopping.start()  # the worker waits for its busy horse (warm shutdown) ...
    wait_for(lambda: "warm shut down requested" in pool.output(), 10, "the worker to hear the stop")
    os.kill(horse, signal.SIGKILL)  # ... which dies before it started the job
    stopping.join(20)
    assert pool.process.returncode == 0, pool.output()[-3000:]
    assert queue.get_job_ids() == [job.id, behind.id]
    assert job.get_status(refresh=True) == JobStatus.QUEUED
    assert "back at the head of a (a work-horse that died before starting it)" in pool.output()
    assert wip(connection, "a") == [], "RQ's execution record would fail the job's next run as abandoned"
    assert_nothing_held_or_failed(connection, "a")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("heroku", [False, True], ids=["docker-stop", "heroku"])
def test_a_job_longer_than_the_grace_is_requeued_with_a_note_before_the_kill(
        runner, tmp_path, redis_server, connection, heroku) -> None:  # noqa: F811
    """The default worker class (no command), a job of 30 s: shortly before the grace runs out
    the job is stopped and requeued at the head; the worker is gone before the pool's KILL. The
    second stop (docker's case) counts a second interruption. On Heroku the grace (7.5 s) outlasts
    the 6 s after which RQ's HerokuWorker would have failed the job: ours lets it run on."""
    queue = Queue("a", connection=connection)
    job, behind = queue.enqueue(f"{JOBS}.started_then_sleep", 30), queue.enqueue(f"{JOBS}.add", 1, 2)
    for interruption in (1,) if heroku else (1, 2):
        pool = RQPool(runner, tmp_path, redis_server, "a: 1\n", dyno=heroku, term_timeout=7.5 if heroku else 2)
        started = str(interruption).encode()
        wait_for(lambda started=started: connection.get(f"starts:{job.id}") == started, 20, "the long job to start")
        code, _ = pool.stop(heroku=heroku)
        output = pool.output()
        assert code == 0 and "all stopped in time" in output, output[-3000:]
        assert f"requeued at the head of a (shutdown interruption {interruption})" in output
        assert queue.get_job_ids() == [job.id, behind.id]
        assert Job.fetch(job.id, connection=connection).meta[INTERRUPTED] == interruption
        assert job.get_status(refresh=True) == JobStatus.QUEUED
        assert wip(connection, "a") == []
        assert_nothing_held_or_failed(connection, "a")


@pytest.mark.timeout(60)
def test_a_second_stop_signal_requeues_the_running_job_instead_of_failing_it(
        runner, tmp_path, redis_server, connection) -> None:  # noqa: F811
    """RQ's cold shutdown (a second TERM, a second or more after the first, as Heroku may send)
    KILLs the horse and the job fails; ours requeues the job, at once, not at the deadline."""
    queue = Queue("a", connection=connection)
    job = queue.enqueue(f"{JOBS}.started_then_sleep", 30)
    pool = RQPool(runner, tmp_path, redis_server, "a: 1\n", term_timeout=20)
    wait_for(lambda: connection.get(f"starts:{job.id}") == b"1", 20, "the long job to start")
    (worker,) = pool.workers()
    stopping = threading.Thread(target=pool.stop)
    stopping.start()
    wait_for(lambda: "warm shut down requested" in pool.output(), 10, "the worker to hear the stop")
    time.sleep(1.1)  # a repeat within 1 s is the same stop seen twice (RQ's rule, kept)
    os.kill(worker, signal.SIGTERM)
    stopping.join(20)
    output = pool.output()
    assert pool.process.returncode == 0 and "all stopped in time" in output, output[-3000:]
    assert "a second stop signal: stopping job" in output
    assert "cold shut down" not in output
    assert queue.get_job_ids() == [job.id]
    assert Job.fetch(job.id, connection=connection).meta[INTERRUPTED] == 1
    assert_nothing_held_or_failed(connection, "a")


@pytest.mark.timeout(60)
def test_requeue_on_shutdown_off_keeps_rqs_behaviour_for_a_running_job(
        runner, tmp_path, redis_server, connection) -> None:  # noqa: F811
    queue = Queue("a", connection=connection)
    job = queue.enqueue(f"{JOBS}.started_then_sleep", 30)
    pool = RQPool(runner, tmp_path, redis_server, "a:\n  count: 1\n  requeue_on_shutdown: false\n")
    wait_for(lambda: connection.get(f"starts:{job.id}") == b"1", 20, "the long job to start")
    code, took = pool.stop()
    assert code == 1, "the pool KILLed the worker at its deadline, as with RQ's own worker"
    assert took >= pool.term_timeout
    assert "requeued" not in pool.output()
    assert job.get_status(refresh=True) == JobStatus.STARTED
    StartedJobRegistry("a", connection=connection).cleanup(time.time() + 10**6)  # RQ's maintenance, later
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert INTERRUPTED not in Job.fetch(job.id, connection=connection).meta


@pytest.mark.timeout(60)
def test_a_bad_requeue_setting_is_one_line_and_exit_2(redis_server, tmp_path) -> None:  # noqa: F811
    result = subprocess.run(
        [sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", redis_server, "--worker-class",
         "entrypoint.rq_reliable.ReliableWorker", "a"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "POOL_REQUEUE_ON_SHUTDOWN": "maybe"}, cwd=tmp_path,
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "entrypoint: error: POOL_REQUEUE_ON_SHUTDOWN: expected 1/0, true/false, yes/no or on/off, got 'maybe'")
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(90)
def test_after_kill_9_of_worker_and_horse_the_replacement_returns_what_never_started(
        runner, tmp_path, redis_server, connection) -> None:  # noqa: F811
    """Group `a`: killed while its horse had not started the job: the pool's replacement finds
    the dead worker's holding list at once and the job runs. Group `b`: killed mid-job: the job
    had started, so it is RQ's to handle as abandoned, untouched by us."""
    held = Queue("a", connection=connection).enqueue(f"{JOBS}.started_then_sleep", 0)
    running = Queue("b", connection=connection).enqueue(f"{JOBS}.started_then_sleep", 30)
    pool = RQPool(runner, tmp_path, redis_server,
                  "a:\n  count: 1\n" + command(f"{WINDOWS}.HorsePausesBeforeStart") + "b: 1\n")
    pool.window("horse", held)
    wait_for(lambda: connection.get(f"starts:{running.id}") == b"1", 20, "the long job to start")
    victims = pool.workers()
    assert len(victims) == 2
    for pid in [*victims, *(pool.horse(worker) for worker in victims)]:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: held.get_status(refresh=True) == JobStatus.FINISHED, 30, "the held job to run after all")
    assert connection.get(f"starts:{held.id}") == b"1"
    assert "back at the head of a (dead worker a.1 of pool " in pool.output()
    assert running.get_status(refresh=True) == JobStatus.STARTED
    assert Queue("b", connection=connection).count == 0
    code, _ = pool.stop()
    assert code == 0, pool.output()[-3000:]
    StartedJobRegistry("b", connection=connection).cleanup(time.time() + 10**6)  # RQ's maintenance, later
    assert running.get_status(refresh=True) == JobStatus.FAILED, "abandoned: RQ's handling, not ours"
    assert rq_holding.held_job_ids(connection) == set()


@pytest.mark.timeout(90)
def test_a_holding_list_left_in_another_namespace_returns_when_rq_lets_go_of_its_worker(
        runner, tmp_path, redis_server, connection) -> None:  # noqa: F811
    """A lost container (its whole PID namespace KILLed) while another runs on: the survivor
    cannot look the dead worker up in /proc, so it waits for RQ's registration of that worker
    to lapse (its heartbeat expiring, which deleting the key stands for here), then returns
    the job."""
    job = Queue("a", connection=connection).enqueue(f"{JOBS}.started_then_sleep", 0)
    lost = RQPool(runner, tmp_path, redis_server, "a:\n  count: 1\n" + command(f"{WINDOWS}.HorsePausesBeforeStart"))
    lost.window("horse", job)
    (dead,) = rq_holding.holders(connection, lambda name: name)
    pool = RQPool(runner, tmp_path, redis_server,
                  "a:\n  count: 1\n" + command("entrypoint.rq_reliable.ReliableWorker", "--maintenance-interval", "1",
                                                 "--worker-ttl", "16"))  # a 1 s dequeue window
    wait_for(lambda: len(rq_holding.holders(connection, lambda name: name)) == 2, 20, "the other worker")
    os.kill(lost.init, signal.SIGKILL)
    lost.process.wait(10)
    time.sleep(2.5)  # two maintenance rounds
    assert rq_holding.held_job_ids(connection) == {job.id}, "a registered worker's list is not touched"
    connection.delete(dead.worker_key)
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 20, "the job to come back and run")
    assert connection.get(f"starts:{job.id}") == b"1"
    assert f"back at the head of a (dead worker a.1 of pool {dead.pool})" in pool.output()
    assert pool.stop()[0] == 0
    assert rq_holding.holders(connection, lambda name: name) == []


@pytest.mark.timeout(60)
def test_a_horse_whose_job_was_given_back_does_not_run_it(
        runner, tmp_path, redis_server, connection) -> None:  # noqa: F811
    job = Queue("a", connection=connection).enqueue(f"{JOBS}.started_then_sleep", 0)
    pool = RQPool(runner, tmp_path, redis_server, "a:\n  count: 1\n" + command(f"{WINDOWS}.HorseFindsItsJobGone"))
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 30, "the job to run, once")
    assert f"job {job.id} was given back before it started; not running it" in pool.output()
    assert connection.get(f"starts:{job.id}") == b"1"
    assert pool.stop()[0] == 0
    assert wip(connection, "a") == []
    assert_nothing_held_or_failed(connection, "a")


@pytest.mark.timeout(90)
def test_rq_features_work_unchanged(runner, tmp_path, redis_server, connection) -> None:  # noqa: F811
    """Job timeouts, Retry, dependencies, results, the scheduler, `rq info`, with our worker."""
    queue = Queue("f", connection=connection)
    pool = RQPool(runner, tmp_path, redis_server,
                  "f:\n  count: 1\n" + command("entrypoint.rq_reliable.ReliableWorker", "--with-scheduler"))
    too_long = queue.enqueue(f"{JOBS}.started_then_sleep", 10, job_timeout=1)
    flaky = queue.enqueue(f"{JOBS}.fails_until", 3, retry=Retry(max=3))
    first = queue.enqueue(f"{JOBS}.started_then_sleep", 0.3)
    second = queue.enqueue(f"{JOBS}.add", 2, 3, depends_on=first)
    later = queue.enqueue_in(timedelta(seconds=1), f"{JOBS}.add", 20, 22)
    jobs = [too_long, flaky, first, second, later]
    wait_for(lambda: all(j.get_status(refresh=True) in (JobStatus.FINISHED, JobStatus.FAILED) for j in jobs),
             60, "every job to end")
    assert too_long.get_status() == JobStatus.FAILED
    assert "JobTimeoutException" in too_long.latest_result().exc_string
    assert flaky.get_status() == JobStatus.FINISHED and flaky.return_value() == 3
    assert second.return_value() == 5 and first.return_value() == 0.3
    assert Job.fetch(second.id, connection=connection).started_at >= Job.fetch(first.id, connection=connection).ended_at
    assert later.return_value() == 42
    info = subprocess.run([sys.executable, "-m", "rq.cli", "info", "--url", redis_server], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert info.returncode == 0, info.stderr
    assert re.search(r"^f +\| 0, 0 executing, 4 finished, 1 failed$", info.stdout, re.M), info.stdout
    assert "1 workers, 1 queues" in info.stdout, info.stdout
    assert pool.stop()[0] == 0
    assert FailedJobRegistry("f", connection=connection).get_job_ids() == [too_long.id]


@pytest.mark.timeout(60)
def test_the_every_queue_worker_serves_a_queue_created_after_it_started(
        runner, tmp_path, redis_server, connection) -> None:  # noqa: F811
    pool = RQPool(runner, tmp_path, redis_server, "'*': 1\n")
    wait_for(lambda: rq_holding.holders(connection, lambda name: name), 20, "the worker to start")
    job = Queue("created_later", connection=connection).enqueue(f"{JOBS}.add", 1, 1)
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 20, "the job on the new queue")
    assert pool.stop()[0] == 0
