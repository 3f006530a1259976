"""Our RQ worker classes with one moment of a job's hand-over held open, so a test can strike there.

Selected with `rq worker --worker-class rq_windows.NAME` (this directory on PYTHONPATH), as a
user's subclass would be. The first time a job passes the window, the process writes a file
named `WINDOW-JOBID` holding its pid into $WINDOW_DIR, then waits $WINDOW_SECONDS (a worker
stops waiting when it is asked to stop). A job passes each window only once, so a job that
comes back runs through.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from entrypoint.rq_reliable import ReliableHerokuWorker, ReliableWorker


def hold(window: str, job_id: str, stop: Callable[[], bool] = lambda: False) -> None:
    mark = Path(os.environ["WINDOW_DIR"], f"{window}-{job_id}")
    if mark.exists():
        return
    mark.write_text(str(os.getpid()))
    until = time.monotonic() + float(os.environ.get("WINDOW_SECONDS", "30"))
    while time.monotonic() < until and not stop():
        time.sleep(0.02)


class PauseAfterTake(ReliableWorker):
    """Between taking a job (it is in the holding list) and starting to run it."""

    def execute_job(self, job, queue):
        hold("taken", job.id, lambda: self._stop_requested)
        super().execute_job(job, queue)


class HorsePausesBeforeStart(ReliableWorker):
    """In the work-horse, before it marks the job started."""

    def prepare_job_execution(self, job, *args, **kwargs):
        hold("horse", job.id)
        super().prepare_job_execution(job, *args, **kwargs)


class HerokuHorsePausesBeforeStart(ReliableHerokuWorker):
    def prepare_job_execution(self, job, *args, **kwargs):
        hold("horse", job.id)
        super().prepare_job_execution(job, *args, **kwargs)


class HorseFindsItsJobGone(ReliableWorker):
    """In the work-horse, the job is taken out of the holding list just before the horse claims
    it, as a worker that wrongly took this one for dead would do (once per job)."""

    def prepare_job_execution(self, job, *args, **kwargs):
        mark = Path(os.environ["WINDOW_DIR"], f"gone-{job.id}")
        if not mark.exists():
            mark.write_text(str(os.getpid()))
            self.holding.give_back(job.id, self.queue_class(job.origin, connection=self.connection).key)
        super().prepare_job_execution(job, *args, **kwargs)
