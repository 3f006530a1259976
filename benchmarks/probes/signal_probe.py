"""Print CLOCK_MONOTONIC (ns) the moment each SIGUSR1 arrives; TERM ends it.

SIGUSR1 is blocked and taken with sigwaitinfo, so no Python handler delay is measured.
"ready" is printed once the mask is in place.
"""

import os
import signal
import time

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
os.write(1, b"ready\n")
while True:
    signal.sigwaitinfo({signal.SIGUSR1})
    os.write(1, b"%d\n" % time.monotonic_ns())
