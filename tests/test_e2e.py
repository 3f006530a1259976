"""The container as it ships, without a Docker engine.

Each test reads the shipped files (the Dockerfile's ENTRYPOINT, CMD, WORKDIR, ENV and USER,
docker-compose.yml's `worker` service, heroku.yml's `run.worker` string), maps the image's
WORKDIR (/app) onto the project tree, points REDIS_URL at a private redis-server, and runs the
resulting command line as PID 1 of a fresh PID namespace (`unshare --pid --fork --mount-proc`),
as the image's non-root user where this machine allows. Then it stops the pool the way Docker
and Heroku do and checks every job: finished exactly once, still queued, or failed with a
reason. Nothing may vanish and nothing may run twice.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import conftest
import pytest
from conftest import children_of, wait_for
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

from rq import Queue, Worker
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from entrypoint.control import request
from example import QUEUES, RUNS
from example.check import Tally, tally
from example.check import wait as wait_for_jobs
from example.connection import connect
from example.enqueue import enqueue

if not shutil.which("unshare"):
    pytest.skip("unshare (util-linux) is not installed", allow_module_level=True)

# Modest, for a 2-core machine: the crunch_data group's size (example/pool.yml adds 2 for e-mail).
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


def busy_workers(init: int) -> list[int]:
    """Worker processes (the init's children) that have a work-horse running a job."""
    busy = []
    for pid in children_of(init):
        with contextlib.suppress(OSError):
            if children_of(pid):
                busy.append(pid)
    return busy


def rq_workers(init: int) -> list[bytes]:
    """The command lines of the init's children that are RQ workers (not a fork before exec)."""
    found = []
    for pid in children_of(init):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"rq.cli" in cmdline:
                found.append(cmdline)
    return found


def pool_worker_name(pid: int) -> str:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(item.split(b"=", 1)[1].decode() for item in environ
                if item.startswith(b"POOL_WORKER="))


def settle_stranded(connection) -> int:
    """RQ's own recovery for jobs stranded by a stop, run now instead of minutes from now.

    A worker on one queue takes a job with BLMOVE into `rq:queue:NAME:intermediate`, registers
    an execution, forks a work-horse, and only the horse marks the job STARTED. A stop signal
    landing in between (on Heroku the TERM also reaches a horse too young to ignore it) leaves
    the job QUEUED in the intermediate list. RQ does not lose it: its maintenance drops the
    stale execution entry once it expires (StartedJobRegistry.cleanup skips jobs that are not
    STARTED) and then fails the job ("Job was stuck in intermediate queue"). That race is
    RQ's, not the pool's: these tests stop with exit status 0, so no worker was KILLed. We
    expire those two entries and run that maintenance step; jobs really STARTED are untouched.
    Returns how many jobs it settled.
    """
    settled = 0
    for name in QUEUES:
        queue = Queue(name, connection=connection)
        intermediate = queue.intermediate_queue
        started = StartedJobRegistry(name, connection=connection)
        for job_id in intermediate.get_job_ids():
            job = queue.fetch_job(job_id)
            if job is None or job.get_status() != JobStatus.QUEUED:
                continue
            for entry in connection.zrange(started.key, 0, -1):
                if entry.decode().split(":", 1)[0] == job_id:
                    connection.zrem(started.key, entry)
            connection.set(intermediate.get_first_seen_key(job_id), time.time() - 120)
            settled += 1
        intermediate.cleanup(Worker([queue], connection=connection), queue)
    return settled


def assert_stopped_in_time(code: int, running: Running) -> None:
    """Exit status 0: every worker stopped within its grace, none had to be KILLed.

    One exception is RQ's own: its stop handler raises StopRequested from wherever the signal
    lands, and when that is inside a finalizer (redis-py's Pipeline.__del__) Python prints
    "Exception ignored in ..." and drops it. That worker never hears the stop and the pool
    KILLs it at the deadline (exit status 1). It was idle (a busy worker only sets a flag),
    so no job is lost, which the accounting checks anyway; we accept that case by its trace.
    """
    output = running.output()
    if code == 1 and "Exception ignored in" in output and "StopRequested" in output:
        return
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
    settle_stranded(connection)
    result = tally(connection, ids)
    assert_accounted(result, len(ids))
    assert running_at_stop <= set(result.buckets["finished"]), (
        f"jobs running at `docker stop` did not finish: {result.summary()} {result.reasons}")
    assert result.count("queued") > 0, "stopped after the queue was empty: nothing tested"
    assert took < running.shipped.kill_after


@pytest.mark.timeout(90)
def test_heroku_shutdown_term_to_everyone_finishes_jobs_without_a_second_term(
    launch, redis_server  # noqa: F811
) -> None:
    connection = connect(redis_server)
    ids = enqueue(connection, 80, seconds=0.8)
    running = launch(as_heroku(redis_server))
    wait_for(lambda: len(in_flight(connection)) >= 3 and connection.hlen(RUNS) >= 3, 30,
             "jobs to be running")
    running_at_stop = in_flight(connection)
    workers = rq_workers(running.init)
    assert workers, "no RQ worker is running"
    for cmdline in workers:  # $DYNO set: RQ's HerokuWorker, whose horse ignores TERM
        assert b"rq.worker.HerokuWorker" in cmdline, cmdline
    # Heroku: TERM to every process in the dyno at once, then KILL at its deadline.
    for pid in [running.init, *descendants(running.init)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    code, _ = wait_exit(running, running.shipped.kill_after)
    output = running.output()
    assert_stopped_in_time(code, running)
    assert "TERM comes from the platform" in output, tail(running)
    assert "cold shut down" not in output.lower(), "a worker got a second TERM: cold shutdown"
    settle_stranded(connection)
    result = tally(connection, ids)
    assert_accounted(result, len(ids))
    assert running_at_stop <= set(result.buckets["finished"]), (
        f"jobs running at the TERM did not finish: {result.summary()} {result.reasons}")


@pytest.mark.timeout(90)
def test_heroku_shutdown_kills_a_job_that_outlives_the_term_timeout_by_the_deadline(
    launch, redis_server  # noqa: F811
) -> None:
    """A job longer than the grace: everything is KILLed at TERM_TIMEOUT, before Heroku's KILL.

    RQ's work-horse runs in its own process group and HerokuWorker's horse ignores TERM, so
    the horse outlives its KILLed worker; the pool must still end it by the deadline.
    """
    connection = connect(redis_server)
    queue = Queue("crunch_data", connection=connection)
    long_job = queue.enqueue("example.jobs.crunch_data", 10, seconds=60)
    running = launch(as_heroku(redis_server))
    wait_for(lambda: long_job.id in in_flight(connection), 30, "the long job to start")
    for pid in [running.init, *descendants(running.init)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    code, took = wait_exit(running, running.shipped.kill_after)
    assert took < HEROKU_TERM_TIMEOUT + 1.0, (
        f"the init took {took:.1f}s to exit, TERM_TIMEOUT is {HEROKU_TERM_TIMEOUT:g}s\n"
        f"{tail(running)}")
    assert code == 1, f"a worker was KILLed: exit status 1 expected, got {code}"
    # The job was cut short: RQ's maintenance later marks it abandoned; do that now.
    StartedJobRegistry("crunch_data", connection=connection).cleanup(time.time() + 10**6)
    result = tally(connection, [long_job.id])
    assert result.buckets["failed"] == [long_job.id], f"{result.summary()} {result.reasons}"


@pytest.mark.timeout(90)
def test_killed_workers_are_replaced_and_the_remaining_jobs_finish(
    launch, redis_server, pool_socket  # noqa: F811
) -> None:
    connection = connect(redis_server)
    ids = enqueue(connection, 120, seconds=0.25)
    running = launch(as_docker_compose(redis_server))

    def two_busy_workers():
        busy = busy_workers(running.init)
        return busy[:2] if len(busy) >= 2 else None

    victims = wait_for(two_busy_workers, 30, "two workers in the middle of a job")
    names = {pool_worker_name(pid) for pid in victims}
    for pid in victims:
        os.kill(pid, signal.SIGKILL)

    def replaced():
        workers = request(pool_socket, {"command": "status"})["workers"]
        slots = {f"{w['group']}.{w['slot']}": w for w in workers}
        return all(slots[name]["restarts"] >= 1 and slots[name]["state"] == "running"
                   for name in names)

    wait_for(replaced, 15, f"{sorted(names)} to be replaced")
    assert "killed by SIGKILL" in running.output()
    result = wait_for_jobs(connection, timeout=60, interval=0.25)
    assert result.count("finished") == len(ids), f"{result.summary()} {result.reasons}"
    assert_accounted(result, len(ids))
    os.kill(running.init, signal.SIGTERM)
    code, _ = wait_exit(running, running.shipped.kill_after)
    assert_stopped_in_time(code, running)
