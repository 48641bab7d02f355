"""Ledger benchmark: the commit of a lone job, which its action waits for.

A job comes alone (a file written now and then, as in the suite's latency rows): the ledger's
writer thread commits it by itself, with the end of the job before, and the worker starts the
command only once it is on disk. The writer's CPU for that commit is on the path from the
close to the command's start; while the writer runs, the worker waits for the interpreter
lock. This measures it in-process: a ``Ledger`` on tmpfs, a rule that catches up, ``add``,
wait until on disk, ``end``; jobs back to back, or 2 ms apart (``--spaced``: the latency
bench's spacing, where every commit finds the caches cold).

Usage: bench/ledger.py [--jobs N] [--spaced]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

from intake import FAST_BASE

from watchd.config.compile import compile_rules
from watchd.config.loader import load
from watchd.core.events import FileEvent
from watchd.core.job import Job
from watchd.core.stats import Counters
from watchd.ledger.writer import Ledger


def lone_commits(work: Path, jobs: int, spacing: float) -> tuple[list[int], list[int]]:
    """The writer's CPU for each commit, and each job's time from ``add`` to on disk (ns)."""
    watched = work / "in"
    watched.mkdir()
    config = work / "rules.yaml"
    config.write_text(textwrap.dedent(f"""\
        settings: {{state_dir: {work / 'state'}}}
        rules:
          - name: lone
            paths: [{watched}]
            actions: [{{command: [/bin/true]}}]
        """))
    ruleset = compile_rules(load(config))
    ledger = Ledger(work / "state", Counters())
    ledger.open()
    cpu: list[int] = []
    write = ledger._write

    def timed_write(*args: object) -> bool:
        started = time.thread_time_ns()
        try:
            return write(*args)  # type: ignore[arg-type]
        finally:
            cpu.append(time.thread_time_ns() - started)

    ledger._write = timed_write  # type: ignore[method-assign]
    waits, before = [], 0
    for index in range(jobs):
        event = FileEvent(os.fsencode(watched / f"f{index}"), "close_write", 8, False,
                          state=(1000 + index, 0, time.time_ns()))
        started = time.perf_counter_ns()
        job_id = ledger.add(Job(ruleset.rules[0], ruleset.roots[0], event))
        ledger.write_added()  # as the queue does
        ledger.wait_durable(job_id)
        waits.append(time.perf_counter_ns() - started)
        if before:
            ledger.end(before)
        before = job_id
        if spacing:
            time.sleep(spacing)
    ledger.close(5)
    return cpu[1:], waits  # the first commit also makes the rule's directory record


def percentiles(values: list[int]) -> str:
    cuts = statistics.quantiles(values, n=100)
    return (f"p50 {statistics.median(values) / 1000:.0f} µs, p90 {cuts[89] / 1000:.0f}, "
            f"p99 {cuts[98] / 1000:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--spaced", action="store_true", help="2 ms between jobs")
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="watchd-bench-", dir=FAST_BASE))
    try:
        cpu, waits = lone_commits(work, arguments.jobs, 0.002 if arguments.spaced else 0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"writer CPU a commit: {percentiles(cpu)}")
    print(f"add to on disk:      {percentiles(waits)}")


if __name__ == "__main__":
    main()
