"""The container as it ships, without a Docker engine.

Each test reads the shipped files (the Dockerfile's ENTRYPOINT, CMD, WORKDIR, ENV and USER,
docker-compose.yml's `worker` service, heroku.yml's `run.worker` string), maps the image's
WORKDIR (/app) onto the project tree, points REDIS_URL at a private redis-server, and runs the
resulting command line as PID 1 of a fresh PID namespace (`unshare --pid --fork --mount-proc`),
as the image's non-root user where this machine allows. Then it stops the pool the way Docker
and Heroku do and checks every job: finished, still queued, or failed with a reason. Nothing
may vanish, and a job runs again only after a shutdown interrupted it (its meta says so).
The restart loop is marked `chaos`: a slice runs by default, `pytest -m chaos` the full one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import conftest
import pytest
from conftest import chaos_chosen, children_of, wait_for
from redis_fixture import redis_server  # noqa: F401 - a fixture
from test_shipping import (
    ROOT,
    compose_argv,
    heroku_argv,
    heroku_env,
    parse_duration,
    read_compose,
    read_dockerfile,
    service_env,
)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # example/ is imported by path, as RQ's workers do

from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from entrypoint.control import request
from entrypoint.rq_reliable import INTERRUPTED
from example import GROUPS, QUEUES, RUNS, STARTS
from example.check import Tally, tally
from example.check import wait as wait_for_jobs
from example.connection import connect
from example.enqueue import enqueue

if not shutil.which("unshare"):
    pytest.skip("unshare (util-linux) is not installed", allow_module_level=True)

# Modest, for a 2-core machine: the "crunch_data,send_welcome_email" group's size (example/pool.yml
# adds 2 workers for e-mail alone and 1 for every queue).
CONCURRENCY = "4"
# Heroku's timings compressed for a test: the pool's grace, then the platform's KILL.
HEROKU_TERM_TIMEOUT = 3.0
HEROKU_KILL_AFTER = 5.0
# Buckets that mean a job vanished, ran twice or went wrong (see example/check.py).
BAD = ("lost", "duplicated", "wrong", "stranded", "started")


@dataclass(frozen=True)
class Shipped:
    """A way the image is run: arguments after the ENTRYPOINT, environment, KILL deadline."""

    name: str
    args: list[str]
    env: dict[str, str]
    kill_after: float  # the platform's KILL, seconds after its TERM


def as_docker_compose(redis_url: str) -> Shipped:
    """`docker compose up worker`: ENTRYPOINT + (command or CMD), image ENV + environment."""
    image = read_dockerfile()
    worker = read_compose({"WORKER_CONCURRENCY": CONCURRENCY})["services"]["worker"]
    argv = compose_argv(image, worker)
    assert argv[0] == "entrypoint", argv
    env = {**image.host_env(), **service_env(worker)}
    assert urlsplit(env["REDIS_URL"]).hostname == "redis", env["REDIS_URL"]
    env["REDIS_URL"] = redis_url  # the compose network's `redis` is our private server
    grace = parse_duration(worker.get("stop_grace_period", "10s"))
    return Shipped("compose", [image.host_path(arg) for arg in argv[1:]], env, grace)


def as_heroku(redis_url: str) -> Shipped:
    """A worker dyno: ENTRYPOINT + the run string as ONE argument, $DYNO set, config vars."""
    image = read_dockerfile()
    argv = heroku_argv(image)
    assert argv[0] == "entrypoint" and len(argv) == 2, argv
    run = argv[1].replace(image.workdir.rstrip("/") + "/", f"{ROOT}/")
    env = heroku_env(image)
    env.update(
        REDIS_URL=redis_url,  # what the heroku-redis addon (as: REDIS) sets
        DYNO="worker.1",
        TERM_TIMEOUT=str(HEROKU_TERM_TIMEOUT),  # `heroku config:set`, compressed
        WORKER_CONCURRENCY=CONCURRENCY,
    )
    return Shipped("heroku", [run], env, HEROKU_KILL_AFTER)


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def image_user() -> tuple[int, int] | None:
    """The Dockerfile's USER when this machine lets it run the project, else None (root).

    The test's Python must be readable by that uid: an interpreter under /root (mode 0700),
    as on the development machine, is not, and then the pool runs as root. Everything else
    (PID 1, signals, jobs) is the same; only the uid differs.
    """
    uid, gid = read_dockerfile().uid_gid
    if os.getuid() != 0 or not shutil.which("setpriv"):
        return None
    probe = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups",
         sys.executable, "-c", "import rq, redis, yaml, rich, entrypoint, example.jobs"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=30,
    )
    return (uid, gid or uid) if probe.returncode == 0 else None


@pytest.fixture
def pool_socket(image_user, monkeypatch) -> Iterator[str]:
    """A control socket path of this test's own, and the drop to the image's user if possible."""
    directory = Path(tempfile.mkdtemp(prefix="entrypoint-e2e-"))
    if image_user is not None:
        uid, gid = image_user
        os.chown(directory, uid, gid)
        monkeypatch.setattr(conftest, "ENTRYPOINT", [
            "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            *conftest.ENTRYPOINT,
        ])
    try:
        yield str(directory / "pool.sock")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Running:
    process: subprocess.Popen
    init: int  # host pid of PID 1 in the namespace: our entrypoint
    log: Path
    shipped: Shipped

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def launch(runner, pool_socket, tmp_path) -> Iterator:
    """launch(shipped) starts the image's command line as PID 1 of a new PID namespace.

    Whatever the test's outcome, each namespace is gone before `runner` checks for leftovers.
    """
    started: list[Running] = []

    def start(shipped: Shipped) -> Running:
        log = tmp_path / f"{shipped.name}.log"
        env = runner.env(**shipped.env, POOL_SOCKET=pool_socket)
        with open(log, "w") as sink:  # the child keeps its own copy of the descriptor
            process = runner.start(shipped.args, namespace=True, env=env, cwd=ROOT,
                                   stdout=sink, stderr=subprocess.STDOUT)
        running = Running(process, runner.init_pid(process), log, shipped)
        started.append(running)
        status = Path(f"/proc/{running.init}/status").read_text()
        nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        assert nspid.split()[-1] == "1", f"entrypoint is not PID 1 in its namespace: {nspid}"
        return running

    yield start
    for running in started:
        if running.process.poll() is None:
            kill_namespace(running)


def wait_exit(running: Running, seconds: float) -> tuple[int, float]:
    """(exit status, seconds taken) of the init; KILL it all and fail when it outstays."""
    started = time.monotonic()
    try:
        code = running.process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        kill_namespace(running)
        pytest.fail(f"the init still ran {seconds:g}s after TERM: the platform KILLs it "
                    f"here\n{tail(running)}")
    return code, time.monotonic() - started


def kill_namespace(running: Running) -> None:
    """KILL the init: the kernel KILLs the rest of its namespace before the init is reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(running.init, signal.SIGKILL)
    try:
        running.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(running.process.pid, signal.SIGKILL)
        running.process.wait()


def tail(running: Running, lines: int = 40) -> str:
    return "\n".join(running.output().splitlines()[-lines:])


def descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        with contextlib.suppress(OSError):
            for child in children_of(stack.pop()):
                found.append(child)
                stack.append(child)
    return found


def in_flight(connection) -> set[str]:
    """Jobs a work-horse is running now: registered as started and marked STARTED by the horse
    (a job only registered is still being handed over and has not begun)."""
    ids = [job_id for name in QUEUES
           for job_id in StartedJobRegistry(name, connection=connection).get_job_ids()]
    jobs = Job.fetch_many(ids, connection=connection)
    return {job.id for job in jobs if job is not None and job.get_status() == JobStatus.STARTED}


def inside_pid(pid: int) -> int:
    """The pid of a process of the pool's namespace as the pool sees it (the last of its NSpid)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("NSpid:")).split()[-1])


class BusyWorker(NamedTuple):
    pid: int  # as the host sees it
    name: str  # the pool's group.slot
    horse: int  # the work-horse running its job


def busy_workers(init: int, pool_socket: str) -> list[BusyWorker]:
    """Worker processes (the init's children the pool lists as workers, not its helpers: a template
    has a child for a moment as it forks) that have a work-horse running a job, seen in one pass:
    a job lasts a fraction of a second, so the horse is read with its worker, not looked up later."""
    try:
        rows = request(pool_socket, {"command": "status"})["workers"]
    except OSError:
        return []  # not answering yet
    names = {row["pid"]: f"{row['group']}.{row['slot']}" for row in rows}
    busy = []
    for pid in children_of(init):
        with contextlib.suppress(OSError):
            horses, inside = children_of(pid), inside_pid(pid)
            if inside in names and horses:
                busy.append(BusyWorker(pid, names[inside], horses[0]))
    return busy


def two_busy_workers(init: int, pool_socket: str) -> list[BusyWorker] | None:
    busy = busy_workers(init, pool_socket)
    return busy[:2] if len(busy) >= 2 else None


def rq_commands(pool_socket: str) -> list[bytes]:
    """The command lines the pool's RQ groups run, NUL-separated as in /proc/PID/cmdline (a forked
    worker runs its group's in the template's fork, so its own cmdline is the template's)."""
    groups = request(pool_socket, {"command": "status"})["groups"].values()
    return ["\0".join(group["command"]).encode() + b"\0" for group in groups
            if group["command"] and "rq.cli" in group["command"]]


def assert_stopped_in_time(code: int, running: Running) -> None:
    """Exit status 0: every worker stopped within its grace, none had to be KILLed."""
    assert code == 0, f"exit status {code}: some worker was KILLed\n{tail(running)}"


def assert_accounted(result: Tally, total: int) -> None:
    """Every job finished once, is still queued, or failed with a reason; none vanished."""
    assert result.total == total, result.summary()
    bad = {bucket: result.buckets[bucket] for bucket in BAD if result.count(bucket)}
    assert not bad, f"{result.summary()}; {bad}; reasons {result.reasons}"
    for job_id in result.buckets.get("failed", []):
        assert result.reasons.get(job_id), f"{job_id} failed with no reason"


def assert_user(running: Running, image_user) -> None:
    if image_user is not None:
        status = Path(f"/proc/{running.init}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1] == str(image_user[0]), uid_line


# ------------------------------------------------------------------------------- tests


@pytest.mark.timeout(90)
def test_500_jobs_across_both_queues_each_finish_exactly_once(
    launch, redis_server, image_user  # noqa: F811
) -> None:
    connection = connect(redis_server)
    ids = enqueue(connection, 500)
    running = launch(as_docker_compose(redis_server))
    assert_user(running, image_user)
    result = wait_for_jobs(connection, timeout=60, interval=0.25)
    assert result.count("finished") == 500, f"{result.summary()} {result.reasons}\n{tail(running)}"
    assert_accounted(result, len(ids))
    os.kill(running.init, signal.SIGTERM)
    code, _ = wait_exit(running, running.shipped.kill_after)
    assert_stopped_in_time(code, running)


@pytest.mark.timeout(90)
def test_docker_stop_lets_jobs_in_flight_finish_and_loses_none(
    launch, redis_server  # noqa: F811
) -> None:
    connection = connect(redis_server)
    ids = enqueue(connection, 80, seconds=0.8)  # 40 crunch_data jobs of 0.8 s
    running = launch(as_docker_compose(redis_server))
    wait_for(lambda: len(in_flight(connection)) >= 3 and connection.hlen(RUNS) >= 3, 30,
             "jobs to be running")
    running_at_stop = in_flight(connection)
    os.kill(running.init, signal.SIGTERM)  # `docker stop`: TERM to PID 1 only
    code, took = wait_exit(running, running.shipped.kill_after)
    assert_stopped_in_time(code, running)
    result = tally(connection, ids)
    assert_accounted(result, len(ids))
    assert running_at_stop <= set(result.buckets["finished"]), (
        f"jobs running at `docker stop` did not finish: {result.summary()} {result.reasons}")
    assert result.count("queued") > 0, "stopped after the queue was empty: nothing tested"
    assert took < running.shipped.kill_after


@pytest.mark.timeout(90)
def test_heroku_shutdown_term_to_everyone_finishes_jobs_without_a_second_term(
    launch, redis_server, pool_socket  # noqa: F811
) -> None:
    connection = connect(redis_server)
    ids = enqueue(connection, 80, seconds=0.8)
    running = launch(as_heroku(redis_server))
    wait_for(lambda: len(in_flight(connection)) >= 3 and connection.hlen(RUNS) >= 3, 30,
             "jobs to be running")
    running_at_stop = in_flight(connection)
    workers = rq_commands(pool_socket)
    assert workers, "no RQ worker is running"
    for cmdline in workers:  # $DYNO set: our classes built on RQ's HerokuWorker, whose horse ignores TERM
        assert re.search(rb"--worker-class\0entrypoint\.rq_\w+\.\w+HerokuWorker\0", cmdline), cmdline
    # Heroku: TERM to every process in the dyno at once, then KILL at its deadline.
    for pid in [running.init, *descendants(running.init)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    code, _ = wait_exit(running, running.shipped.kill_after)
    output = running.output()
    assert_stopped_in_time(code, running)
    assert "TERM comes from the platform" in output, tail(running)
    assert "cold shut down" not in output.lower(), "a worker got a second TERM: cold shutdown"
    result = tally(connection, ids)
    assert_accounted(result, len(ids))
    assert running_at_stop <= set(result.buckets["finished"]), (
        f"jobs running at the TERM did not finish: {result.summary()} {result.reasons}")


@pytest.mark.timeout(90)
def test_heroku_shutdown_requeues_a_job_that_outlives_the_term_timeout_before_the_deadline(
    launch, redis_server  # noqa: F811
) -> None:
    """A job longer than the grace: shortly before TERM_TIMEOUT its worker stops it, puts it
    back at the head of its queue with the interruption in its meta, and exits: the pool's KILL
    finds nothing, and the job is not failed."""
    connection = connect(redis_server)
    queue = Queue("crunch_data", connection=connection)
    long_job = queue.enqueue("example.jobs.crunch_data", 10, seconds=60)
    running = launch(as_heroku(redis_server))
    wait_for(lambda: long_job.id in in_flight(connection), 30, "the long job to start")
    for pid in [running.init, *descendants(running.init)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    code, _ = wait_exit(running, running.shipped.kill_after)
    assert_stopped_in_time(code, running)  # no KILL at TERM_TIMEOUT: the worker left before it
    assert queue.get_job_ids()[0] == long_job.id
    assert Job.fetch(long_job.id, connection=connection).meta[INTERRUPTED] == 1
    result = tally(connection, [long_job.id])
    assert result.buckets["queued"] == [long_job.id], f"{result.summary()} {result.reasons}"


@pytest.mark.timeout(120)
def test_workers_killed_mid_job_are_replaced_and_after_a_restart_nothing_is_stranded(
    launch, redis_server, pool_socket  # noqa: F811
) -> None:
    """kill -9 of one worker alone (its horse, orphaned, finishes the job) and of another with
    its horse (once the job had started, RQ fails it as abandoned, as it does for any crash).
    Both are replaced at once; then the pool is stopped and started again: every other job
    finishes, nothing is stranded."""
    connection = connect(redis_server)
    ids = enqueue(connection, 60, seconds=(0.2, 0.6), seed=1)
    running = launch(as_docker_compose(redis_server))

    alone, with_horse = wait_for(lambda: two_busy_workers(running.init, pool_socket), 30,
                                 "two workers in the middle of a job")
    names = {alone.name, with_horse.name}
    orphan = alone.horse
    for pid in (alone.pid, with_horse.pid, with_horse.horse):
        with contextlib.suppress(ProcessLookupError):  # a horse may have finished its job by now
            os.kill(pid, signal.SIGKILL)

    def replaced():
        workers = request(pool_socket, {"command": "status"})["workers"]
        slots = {f"{w['group']}.{w['slot']}": w for w in workers}
        return all(slots[name]["restarts"] >= 1 and slots[name]["state"] == "running"
                   for name in names)

    wait_for(replaced, 15, f"{sorted(names)} to be replaced")
    assert "killed by SIGKILL" in running.output()
    wait_for(lambda: conftest.process_state(orphan) is None, 30, "the orphaned horse to finish its job")
    stop(running, heroku=False)
    assert_stopped_in_time(wait_exit(running, running.shipped.kill_after)[0], running)
    # With every worker gone, a job still started is the killed horse's, unless that horse died
    # before starting it: then the replacement already put it back and it ran.
    abandoned = in_flight(connection)
    assert len(abandoned) <= 1, abandoned
    for name in QUEUES:  # RQ's maintenance, later: a started job whose worker is gone is abandoned
        StartedJobRegistry(name, connection=connection).cleanup(time.time() + 10**6)
    running = launch(as_docker_compose(redis_server))
    wait_for_jobs(connection, timeout=60, interval=0.25)
    stop(running, heroku=False)
    assert_stopped_in_time(wait_exit(running, running.shipped.kill_after)[0], running)
    result = tally(connection, ids)
    assert set(result.buckets["failed"]) == abandoned, f"{result.summary()} {result.reasons}"
    assert all("AbandonedJobError" in result.reasons[job_id] for job_id in abandoned), result.reasons
    assert result.count("finished") == len(ids) - len(abandoned), f"{result.summary()} {result.reasons}"
    assert_accounted(result, len(ids))
    assert not nothing_stranded(connection), nothing_stranded(connection)


# ------------------------------------------------------------------------------- the restart loop

SLICE_STOPS = 6  # the default suite's slice; `pytest -m chaos` runs FULL_STOPS, $STOPS overrides
FULL_STOPS = 50
LOOP_TERM_TIMEOUT = "1.4"  # the grace, shorter than the longest jobs
LOOP_DURATIONS = (0.05, 1.5)  # each crunch_data job's length is drawn from this range
LOOP_BACKLOG = 16  # jobs waiting before each start, so that jobs are in flight at every stop
# Each group of example/pool.yml: the one-queue group, the "a,b" group and the '*' group.
LOOP_SIZES = {"WELCOME_EMAIL_WORKERS": "1", "WORKER_CONCURRENCY": "1", "EVERY_QUEUE_WORKERS": "1"}
GROUP_NAMES = {"send_welcome_email", "crunch_data,send_welcome_email", "*"}
HANDED_BACK = re.compile(r"job \S+ back at the head of \S+ \((?P<why>[^)]*)\)")
KILLED = re.compile(r"entrypoint: warning: \S+ pid (?P<pid>\d+) still running after [\d.]+s: KILL")


def for_the_loop(shipped: Shipped) -> Shipped:
    return dataclasses.replace(shipped, env={**shipped.env, **LOOP_SIZES, "TERM_TIMEOUT": LOOP_TERM_TIMEOUT})


def stop(running: Running, *, heroku: bool) -> None:
    """`docker stop` (TERM to PID 1 only) or Heroku's shutdown (TERM to every process)."""
    for pid in [running.init, *descendants(running.init)] if heroku else [running.init]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def killed_before_teardown(output: str) -> list[str]:
    """Workers the pool's KILL found before they had finished their teardown (the last thing RQ
    logs is 'unsubscribing'). After it they have nothing left to hand back; before it they might.
    Pids are the namespace's, as both the pool and RQ print them."""
    found = []
    for match in KILLED.finditer(output):
        worker = re.search(rf"Worker (\w+) \[PID {match['pid']}\]: warm shut down requested", output)
        if worker is None or f"Worker {worker[1]}: unsubscribing" not in output:
            found.append(match[0])
    return found


def answers(socket_path: str) -> bool:
    try:
        return bool(request(socket_path, {"command": "ping"}).get("ok"))
    except OSError:
        return False


def nothing_stranded(connection) -> dict[str, list[str]]:
    """Jobs taken and not finished: in a holding list, RQ's intermediate lists or started registries."""
    from entrypoint.rq_holding import held_job_ids

    places = {"holding lists": sorted(held_job_ids(connection))}
    for name in QUEUES:
        queue = Queue(name, connection=connection)
        places[f"{name} intermediate"] = queue.intermediate_queue.get_job_ids()
        places[f"{name} started"] = StartedJobRegistry(name, connection=connection).get_job_ids()
    return {place: ids for place, ids in places.items() if ids}


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_restart_loop_loses_no_job_and_runs_again_only_what_a_shutdown_interrupted(
    launch, redis_server, pool_socket, request  # noqa: F811
) -> None:
    """The shipped config restarted again and again, half by `docker stop`, half by Heroku's
    TERM-to-everyone, while jobs of 0.05-1.5 s flow through its three groups and the grace is
    shorter than the longest jobs. Every worker hands its job back before the KILL; at the end
    every job has finished, none is stranded or failed, and exactly the jobs a shutdown
    interrupted ran twice."""
    stops = int(os.environ.get("STOPS") or (FULL_STOPS if chaos_chosen(request.config) else SLICE_STOPS))
    rng = random.Random(int(os.environ.get("CHAOS_SEED") or 7))
    connection = connect(redis_server)
    ids: list[str] = []
    outputs: list[str] = []
    stop_seconds: list[float] = []
    killed = 0
    started = time.monotonic()
    for number in range(stops):
        heroku = number % 2 == 1
        waiting = sum(Queue(name, connection=connection).count for name in QUEUES)
        ids += enqueue(connection, max(0, LOOP_BACKLOG - waiting), seconds=LOOP_DURATIONS, seed=number)
        running = launch(for_the_loop(as_heroku(redis_server) if heroku else as_docker_compose(redis_server)))
        # Until it takes signals, a PID 1 never sees a TERM (the kernel drops it): not the moment tested.
        wait_for(lambda: answers(pool_socket), 30, "the pool to take signals")
        if number % 4 < 2:  # any moment: workers starting, taking, idle, or busy
            time.sleep(rng.uniform(0.0, 4.0))
        else:  # while a job runs, so that some outlive the grace
            wait_for(lambda: in_flight(connection), 30, "a job to be running")
            time.sleep(rng.uniform(0.0, 0.3))
        stop(running, heroku=heroku)
        code, took = wait_exit(running, running.shipped.kill_after)
        # A KILL may find a worker in its last moments (Python's exit is slow on a loaded
        # machine and this grace is short): harmless once its teardown is done, counted below.
        assert code in (0, 1) and not killed_before_teardown(running.output()), tail(running)
        killed += code == 1
        stop_seconds.append(took)
        outputs.append(running.output())
    drain = as_docker_compose(redis_server)  # the last start, with the shipped grace: drain the queues
    running = launch(dataclasses.replace(drain, env={**drain.env, **LOOP_SIZES}))
    result = wait_for_jobs(connection, timeout=120, interval=0.25)
    stop(running, heroku=False)
    assert_stopped_in_time(wait_exit(running, running.shipped.kill_after)[0], running)
    outputs.append(running.output())

    result = tally(connection, ids)
    assert_accounted(result, len(ids))
    assert result.count("finished") == len(ids), f"{result.summary()} {result.reasons}"
    assert not nothing_stranded(connection), nothing_stranded(connection)
    starts = {key.decode(): int(value) for key, value in connection.hgetall(STARTS).items()}
    run_twice = sorted(job_id for job_id in ids if starts.get(job_id, 0) > 1)
    assert run_twice == sorted(result.interrupted), "a job ran again without a shutdown interrupting it"
    groups = {key.decode(): int(value) for key, value in connection.hgetall(GROUPS).items()}
    assert set(groups) == GROUP_NAMES, f"jobs ran in {groups}"
    handed_back = [match["why"] for output in outputs for match in HANDED_BACK.finditer(output)]
    figures = {
        "stops": stops, "docker_stops": (stops + 1) // 2, "heroku_stops": stops // 2,
        "term_timeout": float(LOOP_TERM_TIMEOUT), "jobs": len(ids), "finished": result.count("finished"),
        "failed": result.count("failed"), "stranded": 0, "lost": 0,
        "interruptions": sum(result.interrupted.values()), "jobs_run_twice": len(run_twice),
        "jobs_interrupted": len(result.interrupted), "most_interruptions": max(result.interrupted.values(), default=0),
        "given_back_before_start": len(handed_back), "given_back_why": dict(sorted(Counter(handed_back).items())),
        "stops_where_the_kill_found_a_worker_past_its_teardown": killed,
        "longest_stop_seconds": round(max(stop_seconds), 2),
        "jobs_by_group": groups, "run_seconds": round(time.monotonic() - started, 1),
    }
    print(f"\nrestart loop figures:\n{json.dumps(figures, indent=2)}")
    if os.environ.get("STOPS_REPORT"):
        Path(os.environ["STOPS_REPORT"]).write_text(json.dumps(figures, indent=2) + "\n")
