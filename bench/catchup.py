"""Catch-up benchmark: what a start costs a rule whose tree is large, and how soon it acts.

A tree of regular files on tmpfs (1,000 directories of 1,000 files; --quick: 100 of 1,000),
one rule ``recursive: true`` on it with a command action (/bin/true). Each start is driven in
this process as the daemon makes it (``watchd.service.daemon``): the ledger opened on a state
directory beside the tree (tmpfs too), a queue and a dispatcher with that ledger, the tree's
watches (a notifier that is never started: nothing but the catch-up reads), then the catch-up,
timed from ``begin()`` to the end of its thread.

- the first start: the tree recorded, nothing acted on (``existing: ignore``); then the
  ledger's size on disk per file, once checkpointed;
- nothing changed since the last start, against ``find TREE -printf '%i %s %T@\\n'`` (the same
  listing and lstat of every file, in C), round by round;
- 10,000 files changed while down (a byte appended to each): the time until their 10,000 jobs
  are queued (no worker), and until 2 workers ran /bin/true for each.

Usage: bench/catchup.py [--quick]. Prints a table (the suite's rows).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from suite import HEADER, Report, Row, paired_ratio, workspace

from watchd.config.compile import compile_rules
from watchd.config.loader import load
from watchd.core.rules import RuleSet
from watchd.core.stats import Counters
from watchd.ledger import store
from watchd.ledger.writer import Ledger
from watchd.run.catchup import CatchUp
from watchd.run.dispatch import Dispatcher
from watchd.run.ownwrites import OwnWrites
from watchd.run.queue import JobQueue
from watchd.run.workers import WorkerPool
from watchd.source.notifier import Notifier

FILES_PER_DIR = 1000
CHANGED = 10_000
QUEUE_SIZE = 10**6  # the catch-up never waits for room in the queue
POLL = 0.002  # seconds between looks at what is being timed
GIVE_UP = 600.0


def make_files(tree: Path, directories: int, per_dir: int = FILES_PER_DIR) -> int:
    for d in range(directories):
        directory = tree / f"d{d}"
        directory.mkdir(parents=True)
        for f in range(per_dir):
            os.close(os.open(directory / f"f{f}", os.O_CREAT | os.O_WRONLY, 0o644))
    return directories * per_dir


def change_files(tree: Path, directories: int, count: int) -> None:
    """Append a byte to ``count`` files, spread over every directory."""
    per_dir = -(-count // directories)
    changed = 0
    for f in range(per_dir):
        for d in range(directories):
            if changed == count:
                return
            with open(tree / f"d{d}" / f"f{f}", "ab") as stream:
                stream.write(b"x")
            changed += 1


def find_seconds(tree: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["find", str(tree), "-printf", "%i %s %T@\\n"], stdout=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - started


class Start:
    """One start of the daemon, as far as the catch-up goes (see the module's docstring)."""

    def __init__(self, state_dir: Path, ruleset: RuleSet, workers: int = 0) -> None:
        self.counters = Counters()
        self.ledger = Ledger(state_dir, self.counters)
        self.ledger.open()  # jobs a previous start left queued are not run again here
        self.jobs = JobQueue(QUEUE_SIZE, ledger=self.ledger)
        self.dispatcher = Dispatcher(self.jobs, self.counters, lambda: None)
        self.notifier = Notifier.watching(ruleset, self.dispatcher, self.counters)
        self.catch_up = CatchUp(self.ledger, self.dispatcher, self.jobs, self.counters,
                                self.notifier)
        self.catch_up.prepare(ruleset)()
        self.workers: WorkerPool | None = None
        if workers:
            self.workers = WorkerPool(self.jobs, self.counters, lambda job, step: True,
                                      OwnWrites(), ledger=self.ledger)
            self.workers.resize(workers)

    def catch_up_seconds(self, *marks: Callable[[], bool]) -> list[float]:
        """Begin the catch-up; the seconds until each of ``marks`` holds, in turn (the end of
        the catch-up's thread, if none)."""
        marks = marks or (lambda: self.catch_up.walking() == 0,)
        started = time.perf_counter()
        self.catch_up.begin()
        seconds = []
        for mark in marks:
            while not mark():
                if time.perf_counter() - started > GIVE_UP:
                    raise TimeoutError("the catch-up took too long")
                time.sleep(POLL)
            seconds.append(time.perf_counter() - started)
        return seconds

    def stop(self) -> float:
        """Stop as the daemon does; the seconds the ledger took to write what it held."""
        self.catch_up.stop(60)
        if self.workers is not None:
            self.workers.stop(5)
        self.jobs.close()
        started = time.perf_counter()
        left = self.ledger.close(300).operations
        seconds = time.perf_counter() - started
        self.notifier.table.manager.close()  # never started: its inotify fd is closed here
        if left:
            raise RuntimeError(f"the ledger left {left} operations unwritten")
        return seconds


def ledger_bytes(state_dir: Path) -> int:
    """The ledger's size on disk, its WAL checkpointed into the database first."""
    file = store.path_in(state_dir)
    connection = sqlite3.connect(file)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        connection.close()
    wal = Path(f"{file}-wal")
    return file.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def bench_catchup(report: Report, directories: int, runs: int, changed_runs: int) -> None:
    with workspace() as work:
        tree, state = work / "tree", work / "state"
        made = time.perf_counter()
        files = make_files(tree, directories)
        made = time.perf_counter() - made
        config = work / "rules.yaml"
        config.write_text(f"rules:\n  - name: tree\n    paths: [{tree}]\n    recursive: true\n"
                          "    actions: [{command: [/bin/true]}]\n")
        ruleset = compile_rules(load(config))
        label = f"catch-up, {files // 1000:,}k files"

        start = Start(state, ruleset)
        first = start.catch_up_seconds()
        first.append(first[0] + start.stop())
        size = ledger_bytes(state)
        report.add(Row(label, "first start: tree recorded (ignore)", "s", [first[0]], None,
                       note=f"on disk {first[1]:.1f} s after begin; tree made in {made:.0f} s"))
        report.add(Row(label, "ledger on disk per file", "bytes", [size / files], None,
                       "≤ 150 bytes", size / files <= 150, f"{size / 2**20:,.1f} MiB, "
                       "ledger.db + -wal after wal_checkpoint(TRUNCATE)"))

        found, mine = [], []
        for _ in range(runs):  # round by round: a drift of the machine weighs on both alike
            found.append(find_seconds(tree))
            start = Start(state, ruleset)
            mine.extend(start.catch_up_seconds())
            start.stop()
        ratio = paired_ratio(mine, found)
        report.add(Row(label, "find -printf '%i %s %T@' (lstat each)", "s", found, 1.0))
        report.add(Row(label, "watchd catch-up, nothing changed", "s", mine, ratio, "≤ 2x find",
                       ratio <= 2, f"{files / statistics.median(mine):,.0f} files/s"))

        queued, done = [], []
        for run in range(2 * changed_runs):
            change_files(tree, directories, CHANGED)
            workers = 2 if run % 2 else 0
            start = Start(state, ruleset, workers)
            counters, jobs = start.counters, start.jobs
            if workers:
                done.append(start.catch_up_seconds(
                    lambda c=counters: c.actions_ok >= CHANGED)[0])
            else:
                queued.append(start.catch_up_seconds(lambda j=jobs: len(j) >= CHANGED)[0])
            start.stop()
            told = counters.caught_up
            if told != CHANGED:
                raise RuntimeError(f"the catch-up told {told} changes, not {CHANGED}")
        report.add(Row(label, f"{CHANGED:,} changed: all jobs queued", "s", queued, None,
                       note=f"from begin(), no worker: the walk (as above) and "
                       f"{statistics.median(queued) - statistics.median(mine):.2f} s more"))
        report.add(Row(label, f"{CHANGED:,} changed: all run (2 workers)", "s", done, None,
                       note=f"{CHANGED / statistics.median(done):,.0f} jobs/s; /bin/true each"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 files, fewer runs")
    args = parser.parse_args()
    report = Report()
    print(HEADER)
    run(report, args.quick)


def run(report: Report, quick: bool) -> None:
    """The suite's part: what ``bench/suite.py`` runs."""
    bench_catchup(report, 100 if quick else 1000, 3, 1 if quick else 2)


if __name__ == "__main__":
    main()
