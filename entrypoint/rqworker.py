"""RQ as the default worker: the command line the pool runs when the config names no command."""

from __future__ import annotations

import sys
from collections.abc import Mapping

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
EVERY_QUEUE = "*"


def default_worker_argv(queues: tuple[str, ...], env: Mapping[str, str]) -> tuple[str, ...]:
    """`rq worker` for these queues against $REDIS_URL, as resque-pool runs `rake resque:work`.

    The worker class is ours (entrypoint/rq_reliable.py): no job lost or failed by a stop, on one
    queue or several. On Heroku ($DYNO set) it is built on RQ's HerokuWorker, whose work-horse
    ignores the TERM Heroku sends to every process. Resque's '*' (every queue) is its variant
    that listens to every queue RQ knows.
    """
    heroku = bool(env.get("DYNO"))
    if EVERY_QUEUE in queues:
        worker_class = "rq_every_queue.EveryQueueHerokuWorker" if heroku else "rq_every_queue.EveryQueueWorker"
        queues = tuple(q for q in queues if q != EVERY_QUEUE)
    else:
        worker_class = "rq_reliable.ReliableHerokuWorker" if heroku else "rq_reliable.ReliableWorker"
    url = env.get("REDIS_URL") or DEFAULT_REDIS_URL
    return (sys.executable, "-m", "rq.cli", "worker", "--url", url, "--worker-class", f"entrypoint.{worker_class}",
            *queues)
