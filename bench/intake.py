"""Intake benchmark: how fast events get from the kernel to rule matching.

Two measures, each for watchd's notifier (rule matching included, a pattern that
matches nothing so no action runs), raw pyinotify's ThreadedNotifier with a
processor that only counts, and (burst only) ``inotifywait -m -r`` counting lines:

- drain: N files created while the reader is not yet reading (their events wait
  in the kernel queue), then the reader starts: events/s until the last is seen;
- burst: the reader running, a writer process creates N files as fast as it can:
  events/s from the writer's start to the last event seen.

Usage: bench/intake.py [--quick]. Prints a table; ratios are against raw pyinotify
measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchd.config.compile import compile_rules
from watchd.config.loader import load
from watchd.control.server import ControlServer
from watchd.core._pyinotify import pyinotify
from watchd.core.stats import Counters
from watchd.core.trace import tracing
from watchd.run.dispatch import Dispatcher
from watchd.run.queue import JobQueue
from watchd.source.notifier import Notifier

EVENTS = pyinotify.IN_CREATE | pyinotify.IN_CLOSE_WRITE
# Trees live on tmpfs, so that the readers are measured, not the disk.
FAST_BASE = "/dev/shm" if os.path.isdir("/dev/shm") else None
# Seconds without a new event after which the rest are lost. An overflow's rescan reports
# nothing until it has listed a directory: on a slow machine, the 400,000-file directory took
# longer than 3 s, and a burst that was all seen 5 s later was counted as 302,537 lost.
QUIET = 10.0


def write_files(directory: Path, count: int) -> None:
    """Create ``count`` empty files from another process (each: a create and a close_write)."""
    code = (f"import os\nfor i in range({count}):\n"
            f"    os.close(os.open('{directory}/f%d' % i, os.O_CREAT | os.O_WRONLY, 0o644))")
    subprocess.run([sys.executable, "-c", code], check=True)


@dataclass
class Result:
    seen: int
    expected: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.seen / self.seconds

    @property
    def lost(self) -> int:
        return self.expected - self.seen


def wait_count(counted: Callable[[], int], target: int, started: float) -> Result:
    """Wait for ``target`` events; give up after QUIET seconds without a new one (events lost)."""
    last_seen, last_time = -1, time.perf_counter()
    while (seen := counted()) < target:
        now = time.perf_counter()
        if seen != last_seen:
            last_seen, last_time = seen, now
        elif now - last_time > QUIET:
            return Result(seen, target, last_time - started)
        time.sleep(0.0005)
    return Result(seen, target, time.perf_counter() - started)


class RawPyinotify:
    def __init__(self, tree: Path) -> None:
        self.count = 0
        owner = self

        class Count(pyinotify.ProcessEvent):
            def process_default(self, event: pyinotify.Event) -> None:
                owner.count += 1

        self.manager = pyinotify.WatchManager()
        self.manager.add_watch(str(tree), EVENTS, rec=True, auto_add=True)
        self.notifier = pyinotify.ThreadedNotifier(self.manager, Count())

    def start(self) -> None:
        self.notifier.start()

    def stop(self) -> None:
        self.notifier.stop()


class Watchd:
    def __init__(self, tree: Path) -> None:
        config = tree.parent / "rules.yaml"
        config.write_text(textwrap.dedent(f"""\
            rules:
              - name: nothing
                paths: [{tree}]
                recursive: true
                events: [create, close_write]
                include: ["*.matches-nothing"]
                actions: [{{command: [/bin/true]}}]
            """))
        self.counters = Counters()
        dispatcher = Dispatcher(JobQueue(10**6), self.counters, lambda: None)
        self.notifier = Notifier.watching(compile_rules(load(config)), dispatcher, self.counters)

    @property
    def count(self) -> int:
        return self.counters.inotify_records

    def start(self) -> None:
        self.notifier.start()

    def stop(self) -> None:
        self.notifier.stop()


class TracedWatchd(Watchd):
    """The same, with one ``watchd trace`` attached: the real control socket's server, and a
    client reading every line (and throwing it away) as the command line would."""

    def __init__(self, tree: Path) -> None:
        super().__init__(tree)
        self.socket_path = str(tree.parent / "control")
        self.server = ControlServer(self.socket_path, {"trace": lambda request: {}}, tracing)
        self.server.open()
        self.server.start()
        self.client = socket.socket(socket.AF_UNIX)
        self.client.connect(self.socket_path)
        self.client.sendall(b'{"version": 1, "command": "trace"}\n')
        self.client.recv(4096)  # the first answer: attached
        self._reading = threading.Thread(target=self._read, daemon=True)
        self._reading.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while self.client.recv(1 << 16):
                pass

    def stop(self) -> None:
        super().stop()
        self.client.close()
        self.server.stop(5)
        self._reading.join()


def drain(kind: type[RawPyinotify] | type[Watchd], tree: Path, files: int) -> Result:
    reader = kind(tree)
    write_files(tree, files)
    started = time.perf_counter()
    reader.start()
    result = wait_count(lambda: reader.count, 2 * files, started)
    reader.stop()
    return result


def burst(kind: type[RawPyinotify] | type[Watchd], tree: Path, files: int) -> Result:
    reader = kind(tree)
    reader.start()
    started = time.perf_counter()
    write_files(tree, files)
    result = wait_count(lambda: reader.count, 2 * files, started)
    reader.stop()
    return result


def burst_inotifywait(tree: Path, files: int) -> Result:
    # Lines go to a file, line-buffered: a slow pipe reader would hold inotifywait back.
    output = tree.parent / "inotifywait.out"
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            ["stdbuf", "-oL", "inotifywait", "-m", "-r", "-e", "create,close_write",
             "--format", "%w%f", str(tree)],
            stdout=sink, stderr=subprocess.PIPE, text=True,
        )
    assert process.stderr is not None
    while "Watches established" not in process.stderr.readline():
        pass
    lines = LineCounter(output)
    started = time.perf_counter()
    write_files(tree, files)
    result = wait_count(lines.count, 2 * files, started)
    process.kill()
    process.wait()
    return result


class LineCounter:
    def __init__(self, path: Path) -> None:
        self.stream = open(path, "rb")  # noqa: SIM115 - read until the process ends
        self.lines = 0

    def count(self) -> int:
        self.lines += self.stream.read().count(b"\n")
        return self.lines


def measure(runs: int, run: Callable[[Path], Result]) -> list[Result]:
    results = []
    for _ in range(runs):
        base = Path(tempfile.mkdtemp(prefix="watchd-bench-"))
        tree = base / "tree"
        tree.mkdir()
        try:
            results.append(run(tree))
        finally:
            shutil.rmtree(base)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, for development")
    args = parser.parse_args()
    runs = 3 if args.quick else 7
    drain_files = 8000  # 16,000 events: the default kernel queue holds 16,384
    burst_files = 20000
    rows = [
        ("drain", "raw pyinotify", measure(runs, lambda t: drain(RawPyinotify, t, drain_files))),
        ("drain", "watchd", measure(runs, lambda t: drain(Watchd, t, drain_files))),
        ("drain", "watchd traced", measure(runs, lambda t: drain(TracedWatchd, t, drain_files))),
        ("burst", "raw pyinotify", measure(runs, lambda t: burst(RawPyinotify, t, burst_files))),
        ("burst", "watchd", measure(runs, lambda t: burst(Watchd, t, burst_files))),
        ("burst", "watchd traced", measure(runs, lambda t: burst(TracedWatchd, t, burst_files))),
    ]
    if shutil.which("inotifywait"):
        inotifywait = measure(runs, lambda t: burst_inotifywait(t, burst_files))
        rows.append(("burst", "inotifywait", inotifywait))
    print(f"intake, {runs} runs each; drain {2 * drain_files} events, burst {2 * burst_files}")
    print(f"{'measure':8} {'reader':14} {'median ev/s':>12} {'min':>10} {'max':>10} {'vs raw':>7}"
          f" {'lost (runs)':>14}")
    raw = {m: statistics.median(r.rate for r in v) for m, who, v in rows if who == "raw pyinotify"}
    for measure_, who, results in rows:
        rates = [result.rate for result in results]
        median = statistics.median(rates)
        lossy = [result.lost for result in results if result.lost]
        lost = f"{max(lossy)} ({len(lossy)})" if lossy else "0"
        print(f"{measure_:8} {who:14} {median:12,.0f} {min(rates):10,.0f} {max(rates):10,.0f} "
              f"{median / raw[measure_]:6.2f}x {lost:>14}", flush=True)


if __name__ == "__main__":
    main()
