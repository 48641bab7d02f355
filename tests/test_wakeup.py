"""The main loop's wake-up: a ring that comes while the loop takes the last one must still
reach it, however the two threads interleave."""

from __future__ import annotations

import select
import sys
import threading
import time

from conftest import DEADLINE, wait_for

from watchd.core.wakeup import Doorbell

TAKES = 5_000  # turns of the loop with rings coming all the while: each a chance to lose one


def test_a_reason_rung_while_the_loop_takes_the_last_one_is_never_lost():
    """Another thread rings for one reason, again and again, while the loop takes what rang:
    the last ring must still wake the loop with its reason. (The main loop forgot the reasons
    rung before it read the pipe: a ring between the two left its reason marked as rung over
    an empty pipe, and that reason never woke the loop again. It was seen as a symlink swap
    on a watched path that the daemon never looked at.)"""
    doorbell, reason = Doorbell(), 0xFE
    asked, seen, takes = [0], [0], [0]
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            if select.select([doorbell.read_fd], [], [], 0.1)[0]:
                _, reasons = doorbell.take()
                takes[0] += 1
                if reason in reasons:
                    seen[0] = asked[0]  # what the ringer asked before the ring this took

    thread = threading.Thread(target=loop)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads take turns between any two steps
    thread.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while takes[0] < TAKES and time.monotonic() < deadline:
            asked[0] += 1
            doorbell.ring(reason)
        last = asked[0]
        wait_for(lambda: seen[0] == last, timeout=5.0, what="the last ring taken")
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
        doorbell.close()
