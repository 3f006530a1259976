"""A child that appends the number of every signal it receives to the file named by argv[1]."""

import signal
import sys
import time

log = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - kept open for the handler


def record(signum, _frame):
    log.write(f"{signum}\n")
    if signum == signal.SIGTERM and len(sys.argv) > 2 and sys.argv[2] == "exit-on-term":
        sys.exit(0)


for number in range(1, 32):
    if number not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(number, record)
log.write("ready\n")
while True:
    time.sleep(3600)
