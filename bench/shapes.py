"""Work-shape benchmarks: a batch rule under a burst, and a poll of a large tree.

- 100,000 new files (--quick: 20,000) into a rule with ``batch: {max: 1000}`` running
  ``/bin/true {paths}`` in a real daemon: end-to-end files per second (from the first file
  written to the end of the last run), against watchd's own intake of the same burst
  (``suite.Watchd``, the notifier and matching) in the same run; the runs, and that their
  ``count``s add up to the files; and ``find -print0 | xargs -0 -n1000 /bin/true`` over the
  same files, beside it.
- one poll of a tree of 100,000 files (--quick: 20,000): the daemon's CPU for a poll that
  finds nothing changed (the first to compare the tree with the ledger's records, and one
  after it), against ``find -printf '%i %s %T@\\n'`` over the tree; and the
  daemon's intake of 8,000 files into another rule while it polls, against the same with no
  poll.

Usage: bench/shapes.py [--quick]. Prints a table (the suite's rows).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from intake import write_files
from suite import HEADER, Daemon, Report, Row, Watchd, burst, workspace

BATCH_MAX = 1000
INTAKE_FILES = 8_000  # 16,000 events: within the kernel's default queue of 16,384
GIVE_UP = 600.0


def batch_run(files: int) -> tuple[float, int, int]:
    """(files per second end to end, runs, paths the runs were given)."""
    with workspace() as work:
        tree = work / "in"
        tree.mkdir()
        daemon = Daemon(work, f"rules:\n  - name: batch\n    paths: [{tree}]\n"
                        f"    batch: {{window: 1s, max: {BATCH_MAX}}}\n"
                        "    actions: [{command: [/bin/true, '{paths}']}]\n")
        try:
            started = time.time()
            write_files(tree, files)
            deadline = time.monotonic() + GIVE_UP
            while True:
                runs = re.findall(rb"^(\S+) INFO action ok .* count=(\d+)",
                                  daemon.log.read_bytes(), re.MULTILINE)
                given = sum(int(count) for _, count in runs)
                if given >= files or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            ended = datetime.datetime.fromisoformat(runs[-1][0].decode()).timestamp()
            return files / (ended - started), len(runs), given
        finally:
            daemon.stop()


def xargs_seconds(files: int) -> float:
    with workspace() as work:
        tree = work / "in"
        tree.mkdir()
        write_files(tree, files)
        started = time.perf_counter()
        subprocess.run(f"find {tree} -type f -print0 | xargs -0 -n{BATCH_MAX} /bin/true",
                       shell=True, check=True)
        return time.perf_counter() - started


def bench_batch(report: Report, files: int, runs: int) -> None:
    label = f"batch, {files:,} files"
    intake = [burst(Watchd, work / "tree", files).rate / 2
              for work in _trees(runs)]
    measured = [batch_run(files) for _ in range(runs)]
    intake_rate = statistics.median(intake)
    report.add(Row(label, "watchd intake (notifier, matching)", "files/s", intake, 1.0))
    rates = [rate for rate, _, _ in measured]
    ratio = statistics.median(rates) / intake_rate
    run_counts = [count for _, count, _ in measured]
    given = {paths for _, _, paths in measured}
    ok = all(100 <= count <= 110 for count in run_counts) and given == {files}
    report.add(Row(label, f"batch max {BATCH_MAX}, /bin/true {{paths}}", "files/s", rates,
                   ratio, "≥ 0.8x intake", ratio >= 0.8 and ok,
                   f"runs {min(run_counts)}-{max(run_counts)} (goal 100-110 for 100,000), "
                   f"paths given {sorted(given)}"))
    xargs = [xargs_seconds(files) for _ in range(runs)]
    report.add(Row(label, f"find -print0 | xargs -0 -n{BATCH_MAX} /bin/true", "files/s",
                   [files / seconds for seconds in xargs],
                   statistics.median(files / seconds for seconds in xargs) / intake_rate,
                   note="the same work with no watching: what batching itself costs"))


def _trees(runs: int) -> Iterator[Path]:
    for _ in range(runs):
        with workspace() as work:
            (work / "tree").mkdir()
            yield work


def make_tree(tree: Path, files: int, per_dir: int = 1000) -> None:
    for d in range(files // per_dir):
        directory = tree / f"d{d}"
        directory.mkdir(parents=True)
        for f in range(per_dir):
            os.close(os.open(directory / f"f{f}", os.O_CREAT | os.O_WRONLY, 0o644))


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def find_cpu(tree: Path) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["find", str(tree), "-printf", "%i %s %T@\\n"], stdout=subprocess.DEVNULL,
                   check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def wait_polls(daemon: Daemon, polls: int) -> None:
    deadline = time.monotonic() + GIVE_UP
    while daemon.counters().get("polls", 0) < polls and time.monotonic() < deadline:
        time.sleep(0.05)


def poll_cpu(work: Path, tree: Path, other: Path, poll: str) -> tuple[Daemon, float, float]:
    """A daemon polling ``tree`` every ``poll`` (and a rule on ``other`` matching nothing);
    the CPU of the first poll that compares the tree with the ledger's records of it (the
    one before recorded it), and of a poll after that (as every later poll is)."""
    daemon = Daemon(work, f"rules:\n  - name: share\n    paths: [{tree}]\n    recursive: true\n"
                    f"    catch_up: false\n    poll: {poll}\n"
                    "    actions: [{command: [/bin/true]}]\n"
                    f"  - name: intake\n    paths: [{other}]\n    include: ['*.none']\n"
                    "    actions: [{command: [/bin/true]}]\n")
    wait_polls(daemon, 1)  # the first poll records the tree
    spent = []
    for polls in (2, 3):
        before = process_cpu(daemon.process.pid)
        wait_polls(daemon, polls)
        spent.append(process_cpu(daemon.process.pid) - before)
    return daemon, spent[0], spent[1]


def daemon_intake(daemon: Daemon, other: Path, files: int) -> float:
    """Files per second the daemon takes in from a burst into ``other`` (each file's
    close_write handed to the rules)."""
    start = daemon.counters()["events"]
    started = time.perf_counter()
    write_files(other, files)
    deadline = time.monotonic() + GIVE_UP
    while daemon.counters()["events"] < start + files and time.monotonic() < deadline:
        time.sleep(0.005)
    return files / (time.perf_counter() - started)


def bench_poll(report: Report, files: int, runs: int) -> None:
    label = f"poll, {files:,} files"
    compares, polls, finds, during, without = [], [], [], [], []
    for _ in range(runs):
        with workspace() as work:
            tree, other = work / "share", work / "other"
            make_tree(tree, files)
            other.mkdir()
            finds.append(find_cpu(tree))
            daemon, compare, cpu = poll_cpu(work, tree, other, "1s")
            try:
                compares.append(compare)
                polls.append(cpu)
                # Bursts one after another while the tree is polled every second.
                during.append(statistics.median(daemon_intake(daemon, other, INTAKE_FILES)
                                                for _ in range(5)))
            finally:
                daemon.stop()
            (work / "state").rename(work / "state-polled")
            quiet = Daemon(work, f"rules:\n  - name: intake\n    paths: [{other}]\n"
                           "    include: ['*.none']\n    actions: [{command: [/bin/true]}]\n")
            try:
                for name in os.listdir(other):
                    os.unlink(other / name)
                without.append(statistics.median(daemon_intake(quiet, other, INTAKE_FILES)
                                                 for _ in range(5)))
            finally:
                quiet.stop()
    report.add(Row(label, "find -printf '%i %s %T@\\n' (CPU)", "s", finds, 1.0))
    report.add(Row(label, "first poll comparing with the ledger (daemon CPU)", "s", compares,
                   statistics.median(compares) / statistics.median(finds), note="reads every "
                   "directory's records; CPU as /proc counts it, in 10 ms ticks"))
    ratio = statistics.median(polls) / statistics.median(finds)
    report.add(Row(label, "one poll, nothing changed (daemon CPU)", "s", polls, ratio,
                   "≤ 1.5x find", ratio <= 1.5, "each later poll: a directory found as before, "
                   "its records unchanged, is not read again"))
    report.add(Row(label, f"daemon intake of {INTAKE_FILES:,} files, no poll", "files/s", without,
                   1.0))
    ratio = statistics.median(during) / statistics.median(without)
    report.add(Row(label, f"daemon intake of {INTAKE_FILES:,} files, polling", "files/s", during,
                   ratio, "≥ 0.9x without", ratio >= 0.9,
                   "5 bursts in a row (median) while the tree is polled every 1 s (the least)"))


def run(report: Report, quick: bool) -> None:
    runs = 1 if quick else 3
    bench_batch(report, 20_000 if quick else 100_000, runs)
    bench_poll(report, 20_000 if quick else 100_000, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(HEADER)
    run(Report(), args.quick)


if __name__ == "__main__":
    main()
