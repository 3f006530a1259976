"""A worker of known size: holds HOG_MB of touched memory and grows by HOG_LEAK_MB every HOG_EVERY seconds."""

import os
import signal
import sys
import time

MIB = 1024 * 1024
PAGE = 4096


def touched(megabytes: float) -> bytearray:
    block = bytearray(int(megabytes * MIB))
    for offset in range(0, len(block), PAGE):
        block[offset] = 1  # a page never written is never resident
    return block


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
held = [touched(float(os.environ.get("HOG_MB", "20")))]
leak = float(os.environ.get("HOG_LEAK_MB", "0"))
every = float(os.environ.get("HOG_EVERY", "0.5"))
while True:
    time.sleep(every)
    if leak:
        held.append(touched(leak))
