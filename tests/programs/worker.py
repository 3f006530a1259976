"""A stand-in job worker: writes its life and every signal it gets, as JSON lines, to $WORKER_LOG.

WORKER_ON_TERM: "exit" (default), "ignore", or a number of seconds to finish the "job" first.
WORKER_HELPER=1: also start a helper child in the worker's process group that logs its signals
(and exits on TERM, unless HELPER_ON_TERM=ignore).
WORKER_DAEMON=1: also leave a daemon behind (its own session) that logs TERM and stays.
"""

import json
import os
import signal
import sys
import time

LOG = open(os.environ["WORKER_LOG"], "a", buffering=1)  # noqa: SIM115 - used by the handlers
ROLE = "worker"


def note(event, **fields):
    record = {"event": event, "role": ROLE, "pid": os.getpid(), "pgid": os.getpgrp(),
              "worker": os.environ.get("POOL_WORKER"), "time": time.time(), **fields}
    LOG.write(json.dumps(record) + "\n")


def on_signal(signum, _frame):
    note("signal", signum=signum)
    if signum == signal.SIGTERM and ROLE == "helper" and os.environ.get("HELPER_ON_TERM") != "ignore":
        sys.exit(0)  # as RQ's work-horse does: TERM kills the job
    if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT) and ROLE == "worker":
        behaviour = os.environ.get("WORKER_ON_TERM", "exit")
        if behaviour == "ignore":
            return
        if behaviour != "exit":
            time.sleep(float(behaviour))
        note("exit")
        sys.exit(0)


for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
               signal.SIGUSR2, signal.SIGCONT, signal.SIGWINCH, signal.SIGTTIN, signal.SIGTTOU):
    signal.signal(number, on_signal)

if ROLE == "worker":
    if os.environ.get("WORKER_HELPER") == "1" and os.fork() == 0:
        ROLE = "helper"
    elif os.environ.get("WORKER_DAEMON") == "1" and os.fork() == 0:
        os.setsid()
        ROLE = "daemon"
note("start", queues=os.environ.get("QUEUES"), group=os.environ.get("POOL_GROUP"),
     slot=os.environ.get("POOL_SLOT"), pool=os.environ.get("POOL_ID"), argv=sys.argv[1:])
while True:
    time.sleep(3600)
