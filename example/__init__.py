"""The Heroku article's example as an RQ app: two queues, `send_welcome_email` and `crunch_data`.

The pool imports nothing from here; RQ's work-horse imports `example.jobs` by its dotted path,
which resolves because the worker's working directory (the image's WORKDIR, /app) is on
sys.path: `python -m rq.cli` puts it there, and so does RQ's own `--path .` default.
"""

QUEUES = ("send_welcome_email", "crunch_data")

# Where the example keeps its own bookkeeping in Redis (RQ's keys stay under rq:).
ENQUEUED = "example:enqueued"  # set: every job id enqueue.py created
STARTS = "example:starts"  # hash: job id -> how many times its function began
RUNS = "example:runs"  # hash: job id -> how many times its function ran to the end
GROUPS = "example:groups"  # hash: pool group -> how many jobs its workers ran to the end
