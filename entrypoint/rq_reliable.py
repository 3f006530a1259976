"""The pool's default RQ worker: no job lost or failed by a stop, on one queue, several, or every queue.

On top of RQ's Worker (HerokuWorker on a dyno), selected with `rq worker --worker-class`:
- jobs are taken in priority order from any list of queues with one atomic move into the
  worker's own holding list (rq_holding.py), never with a BLPOP that a stop can interrupt;
- a stop that comes before the work-horse started the job puts the job back at the head of its
  queue at once, and so does a horse that dies before starting it;
- shortly before the pool's KILL (POOL_TERM_TIMEOUT after the stop signal) a job still running is
  stopped and requeued at the head of its queue, its meta counting the interruption, and the
  worker exits in time. POOL_REQUEUE_ON_SHUTDOWN=0 keeps RQ's own behaviour for running jobs;
- at start and at each maintenance, what dead workers left in their holding lists goes back.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis
from rq.exceptions import NoSuchJobError
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.worker import HerokuWorker, Worker, WorkerStatus

from entrypoint.rq_holding import Holder, HoldingList, Place, fate_of_held_job, owner_is_dead, process_start_time
from entrypoint.rq_holding import holders as registered_holders
from entrypoint.rq_holding import registered as rq_registered
from entrypoint.shutdown import parse_seconds, parse_switch

# job.meta key: how many times a shutdown stopped the job and put it back in its queue.
INTERRUPTED = "interrupted_by_shutdown"
# An idle worker on several queues blocks on its first queue and looks at the others this often.
POLL_SECONDS = 1.0
# A second stop signal this soon after the first is the same stop seen twice (RQ's own rule).
DUPLICATE_STOP_SECONDS = 1.0


class WaitInterrupted(Exception):
    """A stop signal ending the blocking wait for a job (raised and caught only there)."""


@dataclass(frozen=True)
class ShutdownSettings:
    requeue: bool  # requeue a job a shutdown stops (else RQ's behaviour for running jobs)
    term_timeout: float | None  # seconds from the stop signal until the pool's KILL; None: unknown

    @property
    def requeue_at_deadline(self) -> bool:
        return self.requeue and self.term_timeout is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ShutdownSettings:
        """From the pool's POOL_REQUEUE_ON_SHUTDOWN and POOL_TERM_TIMEOUT; ValueError names a bad one."""
        requeue = parse_switch(env.get("POOL_REQUEUE_ON_SHUTDOWN") or "1", "POOL_REQUEUE_ON_SHUTDOWN")
        timeout = env.get("POOL_TERM_TIMEOUT")
        return cls(requeue, parse_seconds(timeout, "POOL_TERM_TIMEOUT") if timeout else None)


def interrupt_at(stop_at: float, term_timeout: float) -> float:
    """When to stop a job still running: early enough before the KILL for the worker to requeue it
    and exit (a tenth of the grace, at least 1 s, at most half of it)."""
    return stop_at + term_timeout - min(term_timeout / 2, max(1.0, term_timeout / 10))


class ReliableMixin:
    """The holding list, the hand-back on a stop, the deadline's requeue and the recovery, over any RQ Worker."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        try:
            self.shutdown = ShutdownSettings.from_env(os.environ)
        except ValueError as error:
            print(f"entrypoint: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        self.holding = HoldingList(self.connection, self.name)
        self.here: Place | None = None
        self._stop_at: float | None = None
        self._stop_seen = threading.Event()
        self._running_job_id: str | None = None
        self._interrupting = False  # we KILLed the horse to requeue its job
        self._blocking = False  # in the blocking wait, where a stop may interrupt us at once

    # -- start ---------------------------------------------------------------------------------

    def bootstrap(self, *args, **kwargs) -> None:
        super().bootstrap(*args, **kwargs)
        self.here = Place.here()
        self.register_holder()
        if self.shutdown.requeue_at_deadline:
            threading.Thread(target=self._watch_deadline, name="entrypoint-deadline", daemon=True).start()

    def register_holder(self) -> None:
        pid = os.getpid()
        self.holding.register(Holder(
            self.name, self.key, self.here, pid, process_start_time(pid) if self.here else None,
            os.environ.get("POOL_ID", ""), os.environ.get("POOL_WORKER", ""),
        ))

    def run_maintenance_tasks(self) -> None:
        """RQ's maintenance (first thing after start, then every maintenance interval), and ours."""
        super().run_maintenance_tasks()
        self.register_holder()  # again: a Redis restarted without persistence forgot us
        self.recover()

    def recover(self) -> None:
        """Jobs that dead workers took and never started go back to the head of their queues."""
        others = [h for h in registered_holders(self.connection, self.worker_key_of) if h.name != self.name]
        alive = rq_registered(self.connection, [holder.worker_key for holder in others])
        for holder, registered in zip(others, alive, strict=True):
            if owner_is_dead(holder, self.here, process_start_time, registered):
                whose = f"{holder.slot or holder.name}" + (f" of pool {holder.pool}" if holder.pool else "")
                self.return_held_jobs(HoldingList(self.connection, holder.name), f"dead worker {whose}")

    def worker_key_of(self, name: str) -> str:
        return self.redis_worker_namespace_prefix + name

    # -- taking jobs ---------------------------------------------------------------------------

    def dequeue_job_and_maintain_ttl(self, timeout: float | None, max_idle_time: float | None = None):
        """RQ's dequeue loop (heartbeat, idle limit, Redis outages) around our take."""
        self.set_state(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))
        idle_until = None if max_idle_time is None else time.monotonic() + max_idle_time
        retry_in = 1.0
        while not self._stop_requested:
            window = timeout
            if idle_until is not None and timeout is not None:
                window = min(timeout, idle_until - time.monotonic())
                if window <= 0:
                    return None
            try:
                self.heartbeat()
                taken = self.take(window)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
                self.log.error("Worker %s: could not reach Redis: %s; retrying in %d seconds", self.name,
                               error, retry_in)
                time.sleep(retry_in)
                retry_in = min(retry_in * 2, self.max_connection_wait_time)
                continue
            if taken is not None or timeout is None:
                self.heartbeat()
                return taken
        return None

    def refresh_queues(self) -> None:
        """Called before each look at the queues: the every-queue worker updates its list here."""

    def looks_again_after(self) -> float | None:
        """How long to block on the first queue before looking at every queue again: POLL_SECONDS
        while others wait behind it; one queue alone is left to BLMOVE for the whole window, as
        RQ's own worker does (an idle worker then costs Redis nothing)."""
        return POLL_SECONDS if len(self._ordered_queues) > 1 else None

    def take(self, seconds: float | None) -> tuple[Job, Queue] | None:
        """The first job of the first non-empty queue, now in our holding list; None after `seconds`
        (at once when None) or on a stop. Between looks we block on the first queue, so a job
        there starts at once, and one on a later queue within looks_again_after()."""
        give_up = None if seconds is None else time.monotonic() + seconds
        while not self._stop_requested:
            if self.should_run_maintenance_tasks:  # checked every look, not once in worker_ttl as RQ does
                self.run_maintenance_tasks()
            self.refresh_queues()
            found = self.holding.take([queue.key for queue in self._ordered_queues])
            if found is None and give_up is not None:
                left = give_up - time.monotonic()
                if left <= 0:
                    return None
                poll = self.looks_again_after()
                found = self.wait(left if poll is None else min(poll, left))
            if found is not None:
                taken = self.fetch_taken(*found)
                if taken is not None:
                    return taken
            elif give_up is None:
                return None
        return None

    def wait(self, seconds: float) -> tuple[str, str] | None:
        """Block on the first queue; a stop interrupts the wait at once (see _shutdown)."""
        first = self._ordered_queues[0].key
        try:
            self._blocking = True
            if self._stop_requested:  # a stop that came just before we blocked raised nothing
                return None
            if self.get_redis_server_version() < (6, 2, 0):  # no BLMOVE before Redis 6.2: poll
                time.sleep(min(seconds, POLL_SECONDS))
                return None
            job_id = self.holding.wait(first, seconds)
        except WaitInterrupted:
            return None  # a job the BLMOVE moved as we were interrupted is in our list: teardown returns it
        finally:
            self._blocking = False
        return (first, job_id) if job_id is not None else None

    def fetch_taken(self, queue_key: str, job_id: str) -> tuple[Job, Queue] | None:
        queue = next(q for q in self._ordered_queues if q.key == queue_key)
        try:
            job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
        except NoSuchJobError:
            self.holding.drop(job_id)  # deleted while queued, as RQ's own dequeue skips it
            return None
        self.reorder_queues(reference_queue=queue)
        job.redis_server_version = self.get_redis_server_version()
        description = f"{job.description} ({job.id})" if self.log_job_description else job.id
        self.log.info("Worker %s: %s: %s", self.name, queue.name, description)
        return job, queue

    # -- running them --------------------------------------------------------------------------

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self._stop_requested:  # the stop came between the take and the start
            self.return_held_jobs(self.holding, "a stop before it started", unregister=False)
            return
        self._running_job_id = job.id
        try:
            super().execute_job(job, queue)
        finally:
            self._running_job_id = None
            self._interrupting = False

    def prepare_job_execution(self, job: Job, *args, **kwargs) -> None:
        """In the work-horse: take the job out of the holding list as it is marked started."""
        if not self.holding.claim(job.id, job.key, JobStatus.STARTED.value):
            self.log.warning("Worker %s: job %s was given back before it started; not running it",
                             self.name, job.id)
            execution = getattr(self, "execution", None)
            if execution is not None:
                with self.connection.pipeline() as pipe:
                    execution.delete(job=job, pipeline=pipe)
                    pipe.execute()
            os._exit(0)
        super().prepare_job_execution(job, *args, **kwargs)

    def handle_job_failure(self, job: Job, queue: Queue, *args, **kwargs):
        """The worker's side of a horse that ended badly: a job it never started goes back to its
        queue, one we stopped at the deadline is requeued; anything else is RQ's failure."""
        ours = not self.is_horse and job.id == self._running_job_id and self._stopped_job_id != job.id
        if ours and self.holding.holds(job.id):
            self.return_held_jobs(self.holding, "a work-horse that died before starting it", unregister=False)
            return None
        if ours and self._interrupting and job.get_status(refresh=True) == JobStatus.STARTED:
            self.requeue_interrupted(job, queue)
            return None
        return super().handle_job_failure(job, queue, *args, **kwargs)

    def return_held_jobs(self, holding: HoldingList, why: str, *, unregister: bool = True) -> None:
        """Every job in a holding list back to the head of its queue (or dropped if RQ settled it)."""
        for job_id in holding.job_ids():
            try:
                job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
            except NoSuchJobError:
                job = None
            status = job.get_status(refresh=False) if job is not None else None
            if job is None or fate_of_held_job(status, JobStatus.QUEUED.value) == "drop":
                holding.drop(job_id)
                continue
            with self.connection.pipeline() as pipe:
                self.forget_executions(job, pipe)
                pipe.execute()
            queue = self.queue_class(job.origin, connection=self.connection, serializer=self.serializer)
            if holding.give_back(job_id, queue.key):
                self.log.warning("Worker %s: job %s back at the head of %s (%s)", self.name, job_id,
                                 job.origin, why)
        if unregister:
            holding.unregister()

    def forget_executions(self, job: Job, pipe) -> None:
        """RQ's records of a job's executions, which stop being true when the job goes back to its
        queue: left in StartedJobRegistry, one would later fail the job's next run as abandoned."""
        for execution_id in ExecutionRegistry(job_id=job.id, connection=self.connection).get_execution_ids():
            Execution(execution_id, job.id, connection=self.connection).delete(job=job, pipeline=pipe)

    def requeue_interrupted(self, job: Job, queue: Queue) -> None:
        job.refresh()  # the horse may have saved meta of its own
        job.meta[INTERRUPTED] = int(job.meta.get(INTERRUPTED, 0)) + 1
        job.started_at = None
        with self.connection.pipeline() as pipe:  # one transaction: never half requeued
            self.forget_executions(job, pipe)
            job.set_status(JobStatus.QUEUED, pipeline=pipe)
            job.save(pipeline=pipe)
            queue.push_job_id(job.id, pipeline=pipe, at_front=True)
            pipe.execute()
        self.log.warning("Worker %s: job %s requeued at the head of %s (shutdown interruption %d)",
                         self.name, job.id, queue.name, job.meta[INTERRUPTED])

    # -- stopping ------------------------------------------------------------------------------

    def request_stop(self, signum, frame) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic()
            self._stop_seen.set()
        super().request_stop(signum, frame)

    def _shutdown(self) -> None:
        """RQ's warm shutdown while busy. Idle, RQ raises StopRequested wherever the signal lands (in
        a finalizer it is lost, and the worker never stops); we raise only inside the blocking
        wait, and elsewhere let the loop see the flag within a moment."""
        if self.get_state() == WorkerStatus.BUSY:
            super()._shutdown()
            return
        self._stop_requested = True
        if self._blocking:
            raise WaitInterrupted()

    def request_force_stop(self, signum, frame) -> None:
        """A second stop signal: RQ KILLs the horse and the job fails; we requeue the job first."""
        repeated = self._stop_at is not None and time.monotonic() - self._stop_at < DUPLICATE_STOP_SECONDS
        if self.shutdown.requeue and self.horse_pid and not repeated:
            self.interrupt_job("a second stop signal")
            return
        super().request_force_stop(signum, frame)

    def _watch_deadline(self) -> None:
        """A thread: at the deadline, a job still running is stopped so that the worker requeues it."""
        self._stop_seen.wait()
        assert self._stop_at is not None and self.shutdown.term_timeout is not None
        delay = interrupt_at(self._stop_at, self.shutdown.term_timeout) - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if self.horse_pid:
            kill_in = self._stop_at + self.shutdown.term_timeout - time.monotonic()
            self.interrupt_job(f"the pool KILLs in {kill_in:.1f}s")

    def interrupt_job(self, why: str) -> None:
        self.log.warning("Worker %s: %s: stopping job %s to requeue it", self.name, why, self._running_job_id)
        self._interrupting = True
        self.kill_horse(signal.SIGKILL)

    def teardown(self) -> None:
        if not self.is_horse:
            self.return_held_jobs(self.holding, "the worker stopped before starting it")
            if self.pubsub_thread is not None:
                # Stopped before RQ unsubscribes, not after: the thread then ends on the unsubscribe
                # reply instead of sleeping through it and costing RQ's 1 s join, part of our grace.
                self.pubsub_thread.stop()
        super().teardown()


class ReliableWorker(ReliableMixin, Worker):
    pass


class ReliableHerokuWorker(ReliableMixin, HerokuWorker):
    """RQ's HerokuWorker: the horse ignores the TERM Heroku sends every process. HerokuWorker also
    fails the job 6 s after a stop (SIGRTMIN to the horse); when we know the deadline, the job
    runs on until shortly before it and is requeued instead."""

    def handle_warm_shutdown_request(self) -> None:
        if self.shutdown.requeue_at_deadline:
            Worker.handle_warm_shutdown_request(self)
        else:
            super().handle_warm_shutdown_request()
