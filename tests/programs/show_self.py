"""Writes what it was started as to the JSON file OUT: argv after OUT, pid, ppid, pgid, comm, fds.

argv: OUT [ARG...], or OUT --record LOG: afterwards become record_signals.py LOG exit-on-term.
`fds` are the descriptors open in this process, `parent_fds` those of its parent; `foreground`
tells whether our group is stdin's terminal foreground group (None: stdin is no terminal).
"""

import json
import os
import sys


def open_fds(pid):
    found = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        if pid != os.getpid():
            found.append(int(name))
            continue
        try:
            os.fstat(int(name))  # the listing's own descriptor is closed by now
        except OSError:
            continue
        found.append(int(name))
    return sorted(found)


try:
    foreground = os.tcgetpgrp(0) == os.getpgrp()
except OSError:
    foreground = None
with open(f"/proc/{os.getpid()}/comm") as comm:
    name = comm.read().strip()
report = {
    "argv": sys.argv[2:],
    "pid": os.getpid(),
    "ppid": os.getppid(),
    "pgid": os.getpgrp(),
    "comm": name,
    "fds": open_fds(os.getpid()),
    "parent_fds": open_fds(os.getppid()),
    "foreground": foreground,
}
with open(sys.argv[1] + ".tmp", "w") as out:
    json.dump(report, out)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
if sys.argv[2:3] == ["--record"]:
    recorder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "record_signals.py")
    os.execv(sys.executable, [sys.executable, recorder, sys.argv[3], "exit-on-term"])
