"""RQ as the default worker: the command line the pool runs when the config names no command."""

from __future__ import annotations

import sys
from collections.abc import Mapping

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
EVERY_QUEUE = "*"


def default_worker_argv(queues: tuple[str, ...], env: Mapping[str, str]) -> tuple[str, ...]:
    """`rq worker` for these queues against $REDIS_URL, as resque-pool runs `rake resque:work`.

    On Heroku ($DYNO set) the worker class is RQ's HerokuWorker, whose work-horse ignores the
    TERM Heroku sends to every process, so a running job gets its grace instead of dying.
    Resque's '*' (every queue) is a worker class of ours that listens to every queue RQ knows.
    """
    heroku = bool(env.get("DYNO"))
    argv = [sys.executable, "-m", "rq.cli", "worker", "--url", env.get("REDIS_URL") or DEFAULT_REDIS_URL]
    if EVERY_QUEUE in queues:
        kind = "EveryQueueHerokuWorker" if heroku else "EveryQueueWorker"
        argv += ["--worker-class", f"entrypoint.rq_every_queue.{kind}"]
        queues = tuple(q for q in queues if q != EVERY_QUEUE)
    elif heroku:
        argv += ["--worker-class", "rq.worker.HerokuWorker"]
    return (*argv, *queues)
