"""A command for tests: appends one JSON line with its argv and WATCHD_* environment, as hex.

Usage: recorder.py OUTFILE [ARG …]. Extra environment: RECORD_SLEEP (seconds to sleep),
RECORD_EXIT (exit status), RECORD_STDERR (written to stderr), RECORD_END (after the sleep,
append a second line: {"ended": <CLOCK_MONOTONIC>, "pid": …}), RECORD_STDIN (read stdin to
its end and record it, as hex, under "stdin").
"""

import json
import os
import sys
import time

started = time.monotonic()
out = sys.argv[1]
record = {
    "argv": [os.fsencode(arg).hex() for arg in sys.argv[2:]],
    "env": {
        os.fsdecode(key): value.hex()
        for key, value in os.environb.items()
        if key.startswith((b"WATCHD_", b"NOTIFY_", b"WATCHDOG_", b"MODE", b"HOME", b"USER",
                           b"RECORD_"))
    },
    "pid": os.getpid(),
    "ppid": os.getppid(),  # the daemon that ran it; 1 (or a subreaper) once that one is gone
    "uid": os.getuid(),
    "gid": os.getgid(),
    "groups": os.getgroups(),
    "cwd": os.getcwd(),
    "started": started,
}
if os.environ.get("RECORD_STDIN"):
    record["stdin"] = sys.stdin.buffer.read().hex()


def append(line: dict) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    os.write(fd, (json.dumps(line) + "\n").encode())
    os.close(fd)


append(record)
if os.environ.get("RECORD_STDERR"):
    sys.stderr.write(os.environ["RECORD_STDERR"])
time.sleep(float(os.environ.get("RECORD_SLEEP", "0")))
if os.environ.get("RECORD_END"):
    append({"ended": time.monotonic(), "pid": os.getpid()})
sys.exit(int(os.environ.get("RECORD_EXIT", "0")))
