"""Enqueue example jobs across both queues and remember their ids for check.py.

    python -m example.enqueue --count 200 --seconds 0.5
    python -m example.enqueue --count 200 --seconds 0.05-1.5    # each job its own duration

Even-numbered jobs are send_welcome_email(user_id), odd ones crunch_data(n, seconds).
The ids go into the Redis set example:enqueued (and one per line on stdout with --print-ids).
"""

from __future__ import annotations

import argparse
import random

from rq import Queue

from example import ENQUEUED, GROUPS, RUNS, STARTS
from example.connection import connect
from example.jobs import crunch_data, send_welcome_email

# Long enough for check.py to read every result after a slow run; RQ's default is 500 s.
KEEP_SECONDS = 24 * 3600


def enqueue(connection, count: int, seconds: float | tuple[float, float] = 0.0, *, reset: bool = False,
            seed: int | None = None) -> list[str]:
    """Enqueue `count` jobs in one round trip per queue; their ids, in order.

    `seconds` is each crunch_data job's duration, or (shortest, longest) to draw each one from.
    """
    if reset:
        connection.delete(ENQUEUED, STARTS, RUNS, GROUPS)
    shortest, longest = seconds if isinstance(seconds, tuple) else (seconds, seconds)
    durations = random.Random(seed)
    welcome = Queue("send_welcome_email", connection=connection)
    crunch = Queue("crunch_data", connection=connection)
    batches: dict[Queue, list] = {welcome: [], crunch: []}
    for number in range(count):
        if number % 2 == 0:
            batches[welcome].append(Queue.prepare_data(
                send_welcome_email, args=(number,),
                result_ttl=KEEP_SECONDS, failure_ttl=KEEP_SECONDS))
        else:
            batches[crunch].append(Queue.prepare_data(
                crunch_data, args=(1000 + number,),
                kwargs={"seconds": round(durations.uniform(shortest, longest), 3)},
                result_ttl=KEEP_SECONDS, failure_ttl=KEEP_SECONDS))
    ids = []
    for queue, data in batches.items():
        if data:
            with connection.pipeline() as pipe:
                jobs = queue.enqueue_many(data, pipeline=pipe)
                pipe.sadd(ENQUEUED, *(job.id for job in jobs))
                pipe.execute()
            ids.extend(job.id for job in jobs)
    return ids


def duration(text: str) -> float | tuple[float, float]:
    """'0.5' or '0.05-1.5' (seconds), for argparse."""
    try:
        bounds = tuple(float(part) for part in text.split("-", 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or a range like 0.05-1.5, got {text!r}") from None
    if any(bound < 0 for bound in bounds) or bounds[0] > bounds[-1]:
        raise argparse.ArgumentTypeError(f"expected seconds from 0, shortest first, got {text!r}")
    return bounds if len(bounds) == 2 else bounds[0]  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example.enqueue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="how many jobs (default 100)")
    parser.add_argument("--seconds", type=duration, default=0.0,
                        help="how long each crunch_data job works, or a range to draw from (default 0)")
    parser.add_argument("--seed", type=int, help="seed for the durations drawn from a range")
    parser.add_argument("--reset", action="store_true",
                        help="forget earlier runs' ids and run counts first")
    parser.add_argument("--print-ids", action="store_true", help="print every job id")
    parser.add_argument("--url", help="Redis URL (default $REDIS_URL)")
    args = parser.parse_args(argv)
    ids = enqueue(connect(args.url), args.count, args.seconds, reset=args.reset, seed=args.seed)
    if args.print_ids:
        print("\n".join(ids))
    print(f"enqueued {len(ids)} jobs on send_welcome_email and crunch_data", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
