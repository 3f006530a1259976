"""RQ as the default worker: the command line the pool runs when the config names no command, and the Redis an
RQ worker's command line reads its queues from."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
EVERY_QUEUE = "*"
# How RQ's CLI is started: `rq worker ...`, `python -m rq.cli worker ...`.
_RQ_PROGRAMS = ("rq",)
_RQ_MODULES = ("rq", "rq.cli")


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


def rq_worker_url(argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    """The Redis URL of an RQ worker's command line (`--url`, else RQ's RQ_REDIS_URL, else RQ's
    default); None when the command line does not run RQ's worker."""
    if len(argv) >= 2 and os.path.basename(argv[0]) in _RQ_PROGRAMS:
        rest = argv[1:]
    elif len(argv) >= 3 and argv[1] == "-m" and argv[2] in _RQ_MODULES:
        rest = argv[3:]
    else:
        return None
    if not rest or rest[0] != "worker":
        return None
    args = list(rest[1:])
    for index, arg in enumerate(args):
        if arg in ("--url", "-u") and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--url="):
            return arg.removeprefix("--url=")
    return env.get("RQ_REDIS_URL") or DEFAULT_REDIS_URL
