"""The benchmark suite: watchd side by side with raw pyinotify, inotifywait and bare loops.

Every figure is measured in the same run as what it is compared with, several times (median,
min-max). Trees live on tmpfs (/dev/shm) so that the readers, not the disk, are measured.
Prints one table and rewrites the measured section of docs/performance.md.

Usage: bench/suite.py [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import intake
import webhooks
from intake import (
    FAST_BASE,
    RawPyinotify,
    Result,
    TracedWatchd,
    burst,
    burst_inotifywait,
    wait_count,
    write_files,
)

from watchd.config.compile import compile_rules
from watchd.config.loader import load
from watchd.core._pyinotify import pyinotify
from watchd.core.stats import Counters
from watchd.ledger.writer import Ledger
from watchd.run.dispatch import Dispatcher
from watchd.run.queue import JobQueue
from watchd.security.trust import ProgramTrust, check_program
from watchd.source.notifier import Notifier

BENCH = Path(__file__).resolve().parent
PERFORMANCE = BENCH.parent / "docs" / "performance.md"
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"
# The daemon runs with what systemd gives the service, not with the shell's environment: Popen
# encodes each variable a command gets (~0.7 µs each), and a shell's 35 would cost each action
# ~25 µs that the service does not pay.
SERVICE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": "C.UTF-8", "INVOCATION_ID": "5f0c5a1b8f6e4f0b9d2b7c0e3a4d6e8f",
               "SYSTEMD_EXEC_PID": "1", "STATE_DIRECTORY": "/var/lib/watchd"}


@dataclass
class Row:
    measure: str
    subject: str
    unit: str
    values: list[float]
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(format_row(row), flush=True)
        return row


def format_row(row: Row) -> str:
    spread = (f"{min(row.values):,.4g}-{max(row.values):,.4g}" if len(row.values) > 1 else "")
    ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
    verdict = {True: "met", False: "MISSED", None: ""}[row.met]
    goal = f"{row.goal} {verdict}".strip()
    return (f"{row.measure:<22} {row.subject:<40} {row.median:>12,.4g} {row.unit:<9} "
            f"{spread:>19} {ratio:>7}  {goal:<26} {row.note}")


HEADER = (f"{'measure':<22} {'subject':<40} {'median':>12} {'unit':<9} {'min-max':>19} "
          f"{'ratio':>7}  {'goal':<26} note")


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="watchd-bench-", dir=FAST_BASE))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def make_tree(top: Path, directories: int, fanout: int = 100) -> None:
    """``directories`` directories below ``top``, ``fanout`` per level."""
    top.mkdir(parents=True, exist_ok=True)
    made, level = 0, [top]
    while made < directories:
        following = []
        for parent in level:
            for index in range(min(fanout, directories - made)):
                child = parent / f"d{index}"
                child.mkdir()
                following.append(child)
                made += 1
            if made >= directories:
                break
        level = following


# -- a watchd daemon as a process ---------------------------------------------------------

class Daemon:
    def __init__(self, work: Path, rules: str, settings: str = "") -> None:
        self.config = work / "rules.yaml"
        self.config.write_text(f"settings: {{log_level: info, state_dir: {work / 'state'}"
                               f"{settings}}}\n" + rules)
        self.log = work / "daemon.log"
        self._read_up_to = 0
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = work / f"notify-{time.monotonic_ns()}"
        self.notify.bind(str(notify_path))
        self.notify.settimeout(600)
        self.started = time.perf_counter()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "watchd", "run", "--config", str(self.config),
                 "--log-target", "stderr"], stderr=log,
                env={**SERVICE_ENV, "NOTIFY_SOCKET": str(notify_path)})
        while b"READY=1" not in self.notify.recv(4096):
            pass
        self.ready_after = time.perf_counter() - self.started
        # Nobody reads further notifications: unbind, so that the daemon's are refused at once.
        self.notify.close()
        notify_path.unlink()

    def counters(self) -> dict[str, int]:
        """SIGUSR1's counters line, parsed. Only what the log gained since the last call is
        read: rereading a log of thousands of action lines would load the machine measured."""
        with open(self.log, "rb") as log:
            log.seek(self._read_up_to)
            self.process.send_signal(signal.SIGUSR1)
            seen = b""
            while b" counters " not in seen or not seen.endswith(b"\n"):
                chunk = log.read()
                if not chunk:
                    time.sleep(0.01)
                seen += chunk
            self._read_up_to = log.tell()
        line = seen.rpartition(b" counters ")[2].decode().splitlines()[0]
        return {k: int(v) for k, _, v in (item.partition("=") for item in line.split())}

    def last_of(self, marker: bytes, count: int) -> float:
        """Wait for the ``count``-th log line with ``marker`` since the last call, and return the
        wall-clock time it was logged at: exact to its millisecond, unlike polling for it, and
        it asks nothing of the daemon (a SIGUSR1 costs it a report every poll)."""
        with open(self.log, "rb") as log:
            log.seek(self._read_up_to)
            pending = b""
            while True:
                lines = (pending + log.read()).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if marker in line:
                        count -= 1
                        if not count:
                            self._read_up_to = log.tell() - len(pending)
                            stamp = line.split(b" ", 1)[0].decode()
                            return datetime.datetime.fromisoformat(stamp).timestamp()
                time.sleep(0.01)

    def rss_kib(self) -> int:
        return rss_kib(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_and_switches(pid: int) -> tuple[float, int]:
    """CPU seconds used and context switches made by every thread of ``pid``."""
    cpu = process_cpu(pid)[0]
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if "ctxt_switches" in line:
                switches += int(line.split()[1])
    return cpu, switches


# -- 1. intake ---------------------------------------------------------------------------

class Watchd(intake.Watchd):
    """watchd's notifier in this process, with ``rules`` rules (see ``rules_for``).

    What it saw counts what an overflow's rescan recovered, as a rule would see it.
    """

    recovered: ClassVar[list[int]] = []  # per run: events an overflow's rescan reported

    @property
    def count(self) -> int:
        return self.counters.inotify_records + self.counters.found_by_scan

    def stop(self) -> None:
        super().stop()
        Watchd.recovered.append(self.counters.found_by_scan)

    def __init__(self, tree: Path, rules: str | None = None) -> None:
        if rules is None:
            super().__init__(tree)
            return
        config = tree.parent / "rules.yaml"
        config.write_text(rules)
        self.counters = Counters()
        dispatcher = Dispatcher(JobQueue(10**7), self.counters, lambda: None)
        self.notifier = Notifier.watching(compile_rules(load(config)), dispatcher, self.counters)


class LedgerWatchd(Watchd):
    """watchd's notifier with a rule that matches every file written, its jobs queued and kept
    in a real ledger (one writer thread, group commit) whose state directory is beside the tree
    (tmpfs: the fsyncs cost nothing, the writer's CPU is what is measured). No worker runs."""

    queued: ClassVar[list[int]] = []  # per run: jobs in the queue at the end
    drained: ClassVar[list[float]] = []  # per run: seconds the ledger took after the last event
    unwritten: ClassVar[list[int]] = []  # per run: operations the ledger's close left
    include = ""  # the rule's include patterns: every name
    ledger_on = True

    def __init__(self, tree: Path) -> None:
        config = tree.parent / "rules.yaml"
        config.write_text(f"rules:\n  - name: all\n    paths: [{tree}]\n    recursive: true\n"
                          f"    events: [create, close_write]\n{self.include}"
                          "    actions: [{command: [/bin/true]}]\n")
        self.counters = Counters()
        self.ledger = Ledger(tree.parent / "state", self.counters)
        self.ledger.open()
        self.jobs = JobQueue(10**7, ledger=self.ledger if self.ledger_on else None)
        dispatcher = Dispatcher(self.jobs, self.counters, lambda: None)
        self.notifier = Notifier.watching(compile_rules(load(config)), dispatcher, self.counters)

    def stop(self) -> None:
        self.notifier.stop()
        LedgerWatchd.queued.append(len(self.jobs))
        started = time.perf_counter()
        LedgerWatchd.unwritten.append(self.ledger.close(60).operations)
        LedgerWatchd.drained.append(time.perf_counter() - started)


class QueuedWatchd(LedgerWatchd):
    """The same, every file's jobs queued, with no ledger: what the ledger costs is the
    difference."""

    ledger_on = False


class IdleLedgerWatchd(LedgerWatchd):
    """The intake benchmark's rule (it matches nothing, so only intake and matching are
    measured) with the ledger on: a daemon's ledger costs the event path nothing until a
    job is queued."""

    include = '    include: ["*.matches-nothing"]\n'


def runs_of(runs: int, run: Callable[[Path], Result]) -> list[Result]:
    results = []
    for _ in range(runs):
        with workspace() as base:
            tree = base / "tree"
            tree.mkdir()
            results.append(run(tree))
    return results


def lost_note(results: list[Result]) -> str:
    lost = [result.lost for result in results if result.lost > 0]
    return f"lost {max(lost)} in {len(lost)} run(s)" if lost else "0 lost"


def bench_intake(report: Report, sizes: list[int], runs: int) -> None:
    readers: dict[str, Callable[[Path, int], Result]] = {
        "raw": lambda t, n: burst(RawPyinotify, t, n),
        "mine": lambda t, n: burst(Watchd, t, n),
        "traced": lambda t, n: burst(TracedWatchd, t, n),
        "idle": lambda t, n: burst(IdleLedgerWatchd, t, n),
        "queued": lambda t, n: burst(QueuedWatchd, t, n),
        "kept": lambda t, n: burst(LedgerWatchd, t, n),
        "waits": burst_inotifywait,
    }
    for files in sizes:
        for store in (Watchd.recovered, LedgerWatchd.queued, LedgerWatchd.drained,
                      LedgerWatchd.unwritten):
            store.clear()
        # Round by round, each reader once, as for many rules and actions: run in blocks, a
        # drift of this VM's speed between two blocks landed on their ratio.
        results: dict[str, list[Result]] = {name: [] for name in readers}
        for _ in range(runs):
            for name, read in readers.items():
                results[name] += runs_of(1, lambda t, r=read, n=files: r(t, n))
        intake_rows(report, f"intake, {files:,} files", results)


def intake_rows(report: Report, label: str, results: dict[str, list[Result]]) -> None:
    rates = {name: [r.rate for r in measured] for name, measured in results.items()}

    def ratio(name: str, base: str = "raw") -> float:
        return paired_ratio(rates[name], rates[base])

    recovered = statistics.median(Watchd.recovered)
    report.add(Row(label, "raw pyinotify ThreadedNotifier", "ev/s", rates["raw"], 1.0,
                   note=lost_note(results["raw"])))
    report.add(Row(label, "watchd (match, no action)", "ev/s", rates["mine"], ratio("mine"),
                   "≥ 0.8x raw", ratio("mine") >= 0.8,
                   f"{lost_note(results['mine'])}, {recovered:,.0f} by rescan"))
    report.add(Row(label, "watchd, one `watchd trace` attached", "ev/s", rates["traced"],
                   ratio("traced"), note=f"{lost_note(results['traced'])}; "
                   f"{ratio('traced', 'mine'):.2f}x watchd untraced"))
    report.add(Row(label, "watchd, ledger on (match, no action)", "ev/s", rates["idle"],
                   ratio("idle"), "≥ 1.2x raw", ratio("idle") >= 1.2, lost_note(results["idle"])))
    report.add(Row(label, "watchd, every file queued, no ledger", "ev/s", rates["queued"],
                   ratio("queued"), note=lost_note(results["queued"])))
    report.add(Row(label, "watchd, every file queued, ledger on", "ev/s", rates["kept"],
                   ratio("kept"), "≥ 1.2x raw", ratio("kept") >= 1.2,
                   f"{lost_note(results['kept'])}, {statistics.median(LedgerWatchd.queued):,.0f} "
                   f"jobs queued, on disk {statistics.median(LedgerWatchd.drained) * 1000:,.0f} ms "
                   f"after the last event, {max(LedgerWatchd.unwritten)} unwritten; "
                   f"{ratio('kept', 'queued'):.2f}x the same without ledger; ledger on tmpfs"))
    report.add(Row(label, "inotifywait -m -r", "ev/s", rates["waits"], ratio("waits"),
                   note=lost_note(results["waits"])))


def rules_for(tree: Path, count: int, same_root: bool) -> str:
    """``count`` rules: on distinct directories of the tree, or all on it with distinct
    include patterns; none matches what the writer makes, so only matching is measured."""
    rules = ["rules:"]
    for index in range(count):
        path = tree if same_root else tree / f"d{index}"
        path.mkdir(exist_ok=True)
        include = f"*.x{index}" if same_root else "*.matches-nothing"
        rules.append(f"  - name: r{index}\n    paths: [{path}]\n    events: [create, "
                     f"close_write]\n    include: ['{include}']\n    actions: [{{command: "
                     "[/bin/true]}]")
    return "\n".join(rules) + "\n"


def bench_many_rules(report: Report, files: int, runs: int) -> None:
    def run(tree: Path, count: int, same_root: bool) -> Result:
        reader = Watchd(tree, rules_for(tree, count, same_root))
        reader.start()
        target = tree if same_root else tree / "d0"
        started = time.perf_counter()
        write_files(target, files)
        result = wait_count(lambda: reader.count, 2 * files, started)
        reader.stop()
        return result

    configurations = [(1, False), (100, False), (1000, False), (1000, True)]
    # Round by round, each configuration once: this VM's speed drifts between two levels from
    # one minute to the next, and a drift must weigh on every configuration alike.
    results: dict[tuple[int, bool], list[Result]] = {c: [] for c in configurations}
    for _ in range(runs):
        for count, same_root in configurations:
            results[count, same_root] += runs_of(1, lambda t, c=count, s=same_root: run(t, c, s))
    base = [r.rate for r in results[1, False]]
    for (count, same_root), measured in results.items():
        ratio = paired_ratio([r.rate for r in measured], base)
        where = "on one root, 1,000 includes" if same_root else "on distinct directories"
        ok = ratio >= 0.9 if count == 1000 else None
        report.add(Row(f"many rules, {files:,} files", f"{count:,} rules {where}", "ev/s",
                       [r.rate for r in measured], ratio, "≥ 0.9x 1 rule" if ok is not None
                       else "", ok, lost_note(measured)))


def paired_ratio(measured: list[float], base: list[float]) -> float:
    """The median of the rounds' ratios: each round ran both sides one after the other, so a
    drift of the machine's speed between rounds cancels out, which a ratio of medians lets in."""
    return statistics.median(m / b for m, b in zip(measured, base, strict=True))


# -- 2. actions --------------------------------------------------------------------------

def bench_actions(report: Report, actions: int, runs: int) -> None:
    for workers in (1, 2, 4):
        bare: list[Spent] = []
        mine: list[Spent] = []
        for _ in range(runs):
            bare.append(popen_loop(actions, workers))
            with workspace() as work:
                mine.append(watchd_actions(work, actions, workers))
        ratio = paired_ratio([s.rate for s in mine], [s.rate for s in bare])
        label = f"actions, {actions:,} x /bin/true"
        report.add(Row(label, f"bare Popen loop, {workers} thread(s)", "actions/s",
                       [s.rate for s in bare], 1.0))
        report.add(Row(label, f"watchd, workers: {workers}", "actions/s", [s.rate for s in mine],
                       ratio, "≥ 0.8x bare", ratio >= 0.8))
        if workers == 1:
            cpu_budget(report, label, bare, mine)


def bench_program_trust(report: Report, checks: int, runs: int,
                        program: str = "/usr/bin/true") -> None:
    """The trust check a command's program gets before every run: the whole walk, and the
    remembered verdict that spares it while nothing it looked at has changed."""
    def per_check(check: Callable[[str], None]) -> float:
        started = time.perf_counter()
        for _ in range(checks):
            check(program)
        return (time.perf_counter() - started) / checks * 1e6

    trust = ProgramTrust()
    walks = [per_check(check_program) for _ in range(runs)]
    kept = [per_check(trust.check) for _ in range(runs)]
    label = f"program trust, {program}"
    report.add(Row(label, "the whole check (walk to /)", "µs", walks, 1.0))
    report.add(Row(label, "before each run (kept verdict)", "µs", kept,
                   statistics.median(kept) / statistics.median(walks)))


def cpu_budget(report: Report, label: str, bare: list[Spent], mine: list[Spent]) -> None:
    """CPU per action, which bounds the ratio: on one worker the steps run one after the
    other, and with more the two cores are full, so (bare + child) / (watchd + child)."""
    def per_action(values: Iterable[float]) -> list[float]:
        return [value * 1e6 for value in values]

    bare_own = statistics.median(s.own for s in bare)
    own = statistics.median(s.own for s in mine)
    child = statistics.median(s.children for s in bare + mine)
    report.add(Row(label, "CPU: bare loop's own, per action", "µs",
                   per_action(s.own for s in bare)))
    report.add(Row(label, "CPU: watchd's own, per action", "µs", per_action(s.own for s in mine)))
    report.add(Row(label, "CPU: a /bin/true child (both sides)", "µs",
                   per_action(s.children for s in bare + mine),
                   note=f"ratio bound: {(bare_own + child) / (own + child):.2f}x"))


@dataclass
class Spent:
    rate: float  # actions/s
    own: float  # CPU seconds per action: the loop's or the daemon's own threads
    children: float  # CPU seconds per action of the commands


def popen_loop(actions: int, threads: int) -> Spent:
    def work(count: int) -> None:
        for _ in range(count):
            subprocess.Popen(["/bin/true"]).wait()

    own, children = resource.getrusage(resource.RUSAGE_SELF), os.times()
    started = time.perf_counter()
    pool = [threading.Thread(target=work, args=(actions // threads,)) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    own_after, children_after = resource.getrusage(resource.RUSAGE_SELF), os.times()
    return Spent(actions / elapsed,
                 (own_after.ru_utime + own_after.ru_stime - own.ru_utime - own.ru_stime) / actions,
                 (children_after.children_user + children_after.children_system
                  - children.children_user - children.children_system) / actions)


def watchd_actions(work: Path, actions: int, workers: int) -> Spent:
    watched = work / "in"
    watched.mkdir()
    daemon = Daemon(work, f"rules:\n  - name: act\n    paths: [{watched}]\n    actions: "
                    "[{command: [/bin/true]}]\n", f", workers: {workers}, queue_size: 1000000")
    try:
        before = process_cpu(daemon.process.pid)
        # The files are made here, not by a writer process whose start-up (~30 ms) the bare
        # loop would not pay; the end is when the last action's log line was made.
        started = time.time()
        for i in range(actions):
            os.close(os.open(watched / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
        elapsed = daemon.last_of(b" action ok ", actions) - started
        own, children = (after - start for after, start in
                         zip(process_cpu(daemon.process.pid), before, strict=True))
        return Spent(actions / elapsed, own / actions, children / actions)
    finally:
        daemon.stop()


def process_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of ``pid``'s own threads, and of its children it has reaped."""
    ticks = os.sysconf("SC_CLK_TCK")
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / ticks, (int(stat[13]) + int(stat[14])) / ticks


# -- 3. latency --------------------------------------------------------------------------

def build_probe(work: Path) -> Path:
    probe = work / "probe"
    subprocess.run(["cc", "-O2", "-o", str(probe), str(BENCH / "probe.c")], check=True)
    return probe


WRITER = textwrap.dedent("""\
    import os, sys, time
    directory, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    closed = []
    for index in range(count):
        fd = os.open(f"{directory}/f{index}", os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
        closed.append(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
        time.sleep(0.002)
    with open(out, "w") as stream:
        stream.write("\\n".join(map(str, closed)) + "\\n")
""")


def spaced_writes(directory: Path, count: int, closes: Path, probed: Path) -> list[float]:
    subprocess.run([sys.executable, "-c", WRITER, str(directory), str(count), str(closes)],
                   check=True)
    deadline = time.monotonic() + 60
    while (len(probed.read_text().split()) if probed.exists() else 0) < count:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    closed = sorted(int(x) for x in closes.read_text().split())
    started = sorted(int(x) for x in probed.read_text().split())
    return [(start - close) / 1000 for close, start in zip(closed, started, strict=False)]


def bench_latency(report: Report, count: int, runs: int) -> None:
    # Round by round, both sides: one stall of this VM lands on a single round's p99, and the
    # median of the rounds leaves it out.
    percentiles: dict[str, list[tuple[float, float]]] = {"raw pyinotify + Popen": [],
                                                          "watchd": []}
    for _ in range(runs):
        percentiles["watchd"].append(p50_p99(watchd_latencies(count)))
        percentiles["raw pyinotify + Popen"].append(p50_p99(raw_latencies(count)))
    raw_p99 = statistics.median(p99 for _, p99 in percentiles["raw pyinotify + Popen"])
    for name, measured in percentiles.items():
        p99s = [p99 for _, p99 in measured]
        ratio = statistics.median(p99s) / raw_p99
        mine = name == "watchd"
        report.add(Row(f"latency, {count:,} spaced", f"{name}: p50", "µs",
                       [p50 for p50, _ in measured]))
        report.add(Row(f"latency, {count:,} spaced", f"{name}: p99", "µs", p99s, ratio,
                       "p99 ≤ 1.5x raw" if mine else "", ratio <= 1.5 if mine else None))


def p50_p99(latencies: list[float]) -> tuple[float, float]:
    return statistics.median(latencies), statistics.quantiles(latencies, n=100)[98]


def watchd_latencies(count: int) -> list[float]:
    with workspace() as work:
        probe = build_probe(work)
        watched = work / "in"
        watched.mkdir()
        daemon = Daemon(work, f"rules:\n  - name: probe\n    paths: [{watched}]\n    actions: "
                        f"[{{command: [{probe}, {work / 'probed'}]}}]\n")
        try:
            return spaced_writes(watched, count, work / "closes", work / "probed")
        finally:
            daemon.stop()


def raw_latencies(count: int) -> list[float]:
    with workspace() as work:
        probe = build_probe(work)
        watched = work / "in"
        watched.mkdir()
        return raw_pyinotify_popen(watched, probe, work, count)


def raw_pyinotify_popen(watched: Path, probe: Path, work: Path, count: int) -> list[float]:
    probed = work / "probed"

    class Run(pyinotify.ProcessEvent):
        def process_IN_CLOSE_WRITE(self, event: pyinotify.Event) -> None:
            subprocess.Popen([str(probe), str(probed)]).wait()

    manager = pyinotify.WatchManager()
    manager.add_watch(str(watched), pyinotify.IN_CLOSE_WRITE)
    notifier = pyinotify.ThreadedNotifier(manager, Run())
    notifier.start()
    try:
        return spaced_writes(watched, count, work / "closes", probed)
    finally:
        notifier.stop()


# -- 5. setup and memory -----------------------------------------------------------------

RAW_SETUP = textwrap.dedent("""\
    import sys, time, warnings
    warnings.simplefilter("ignore")
    import pyinotify
    started = time.perf_counter()
    manager = pyinotify.WatchManager()
    manager.add_watch(sys.argv[1], pyinotify.ALL_EVENTS, rec=True, auto_add=True, quiet=False)
    print(time.perf_counter() - started, flush=True)
    sys.stdin.read()
""")


def bench_setup(report: Report, sizes: list[int], runs: int) -> None:
    for directories in sizes:
        with workspace() as work:
            tree = work / "tree"
            make_tree(tree, directories)
            raw = [raw_setup(tree) for _ in range(runs)]
            waits = [inotifywait_setup(tree) for _ in range(runs)]
            mine = [watchd_setup(work, tree) for _ in range(runs)]
            empty = watchd_setup(work, work / "empty-tree", empty=True)
        label = f"setup, {directories:,} dirs"
        raw_time = statistics.median(seconds for seconds, _ in raw)
        report.add(Row(label, "raw pyinotify add_watch(rec=True)", "s", [s for s, _ in raw], 1.0,
                       note=f"RSS {statistics.median(k for _, k in raw) / 1024:.0f} MiB"))
        report.add(Row(label, "inotifywait -r", "s", [s for s, _ in waits],
                       statistics.median(s for s, _ in waits) / raw_time,
                       note=f"RSS {statistics.median(k for _, k in waits) / 1024:.0f} MiB"))
        ratio = statistics.median(s for s, _ in mine) / raw_time
        per_watch = (statistics.median(k for _, k in mine) - empty[1]) * 1024 / (directories + 1)
        report.add(Row(label, "watchd: walk to READY=1", "s", [s for s, _ in mine], ratio,
                       "≤ 1.1x raw", ratio <= 1.1,
                       f"RSS {statistics.median(k for _, k in mine) / 1024:.0f} MiB"))
        report.add(Row(label, "watchd: memory per watch", "bytes", [per_watch], None,
                       "≤ 400 bytes", per_watch <= 400))


def raw_setup(tree: Path) -> tuple[float, int]:
    process = subprocess.Popen([sys.executable, "-c", RAW_SETUP, str(tree)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    seconds = float(process.stdout.readline())
    kib = rss_kib(process.pid)
    process.kill()
    process.wait()
    return seconds, kib


def inotifywait_setup(tree: Path) -> tuple[float, int]:
    started = time.perf_counter()
    process = subprocess.Popen(["inotifywait", "-m", "-r", str(tree)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    while "Watches established" not in process.stderr.readline():
        pass
    seconds = time.perf_counter() - started
    kib = rss_kib(process.pid)
    process.kill()
    process.wait()
    return seconds, kib


def watchd_setup(work: Path, tree: Path, empty: bool = False) -> tuple[float, int]:
    """Seconds from the daemon's start to READY=1, less its start with nothing to watch."""
    tree.mkdir(exist_ok=True)
    daemon = Daemon(work, f"rules:\n  - name: tree\n    paths: [{tree}]\n    recursive: true\n"
                    "    actions: [{command: [/bin/true]}]\n")
    seconds, kib = daemon.ready_after, daemon.rss_kib()
    daemon.stop()
    if empty:
        return seconds, kib
    return seconds - watchd_setup(work, work / "empty-tree", empty=True)[0], kib


# -- 6. reload under load ----------------------------------------------------------------

def bench_reload(report: Report, directories: int, files: int) -> None:
    with workspace() as work:
        tree = work / "tree"
        make_tree(tree, directories)
        daemon = Daemon(work, f"rules:\n  - name: tree\n    paths: [{tree}]\n    recursive: true\n"
                        "    events: [create]\n    actions: [{command: [/bin/sleep, '600']}]\n",
                        ", workers: 1, queue_size: 10000000, stop_grace: 0s")
        try:
            writer = threading.Thread(target=write_files, args=(tree, files))
            writer.start()
            time.sleep(0.2)
            daemon.process.send_signal(signal.SIGHUP)
            writer.join()
            deadline = time.monotonic() + 30
            while daemon.counters()["matched"] < files and time.monotonic() < deadline:
                time.sleep(0.1)
            matched = daemon.counters()["matched"]
            reloaded = [line for line in daemon.log.read_text().splitlines()
                        if " reloaded " in line]
            duration = float(reloaded[-1].split("duration_ms=")[1].split()[0]) if reloaded else -1
        finally:
            daemon.stop()
    label = f"reload, {directories:,} watches"
    report.add(Row(label, f"SIGHUP, rules unchanged, {files:,} files", "ms", [duration]))
    report.add(Row(label, "files whose events were missed", "files", [files - matched], None,
                   "0", files == matched))


# -- 7. idle -----------------------------------------------------------------------------

RAW_IDLE = textwrap.dedent("""\
    import sys, warnings
    warnings.simplefilter("ignore")
    import pyinotify
    manager = pyinotify.WatchManager()
    manager.add_watch(sys.argv[1], pyinotify.ALL_EVENTS, rec=True, auto_add=True)
    notifier = pyinotify.ThreadedNotifier(manager, pyinotify.ProcessEvent())
    notifier.start()
    print("ready", flush=True)
    sys.stdin.read()
    notifier.stop()
""")


def bench_idle(report: Report, directories: int, seconds: float) -> None:
    with workspace() as work:
        tree = work / "tree"
        make_tree(tree, directories)
        raw = subprocess.Popen([sys.executable, "-c", RAW_IDLE, str(tree)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
        assert raw.stdout is not None
        raw.stdout.readline()
        daemon = Daemon(work, f"rules:\n  - name: tree\n    paths: [{tree}]\n    recursive: true\n"
                        "    actions: [{command: [/bin/true]}]\n")
        time.sleep(1.0)  # let both settle after their first walk
        before = {"raw": cpu_and_switches(raw.pid), "watchd": cpu_and_switches(daemon.process.pid)}
        time.sleep(seconds)  # the idle period itself is what is measured
        after = {"raw": cpu_and_switches(raw.pid), "watchd": cpu_and_switches(daemon.process.pid)}
        daemon.stop()
        raw.kill()
        raw.wait()
    label = f"idle {seconds:g} s, {directories:,} dirs"
    for name in ("raw", "watchd"):
        cpu = after[name][0] - before[name][0]
        switches = after[name][1] - before[name][1]
        subject = "raw pyinotify" if name == "raw" else "watchd (no watchdog)"
        report.add(Row(label, f"{subject}: CPU", "s", [cpu]))
        report.add(Row(label, f"{subject}: context switches", "", [switches], None,
                       "~0" if name == "watchd" else "", switches <= 2 if name == "watchd"
                       else None))


# -- 8. webhooks -------------------------------------------------------------------------

def bench_webhooks(report: Report, count: int, runs: int) -> None:
    bare, sent = webhooks.measure(count, runs)
    label = f"webhooks, {count:,} deliveries"
    report.add(Row(label, "bare urllib3 loop, one connection", "/s", bare, 1.0))
    ratio = statistics.median(sent) / statistics.median(bare)
    report.add(Row(label, "watchd: match, sign, spool, send", "/s", sent, ratio,
                   "≥ 0.8x bare", ratio >= 0.8))


# -- the run -----------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller and fewer, for development")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/performance.md")
    args = parser.parse_args()
    quick = args.quick
    runs = 1 if quick else 3
    report = Report()
    started = time.monotonic()
    print(HEADER)
    bench_intake(report, [20_000] if quick else [20_000, 100_000, 400_000], runs)
    bench_many_rules(report, 5_000 if quick else 20_000, runs + 2)
    # A burst of actions lasts about a second: more and longer ones, so that one slow spell of
    # the machine does not decide a median.
    bench_actions(report, 200 if quick else 2_000, runs + 2)
    bench_program_trust(report, 2_000 if quick else 20_000, runs + 2)
    bench_latency(report, 200 if quick else 2_000, runs)
    bench_setup(report, [10_000] if quick else [10_000, 100_000], runs)
    bench_reload(report, 10_000 if quick else 50_000, 5_000 if quick else 20_000)
    bench_idle(report, 10_000, 5.0 if quick else 60.0)
    bench_webhooks(report, 300 if quick else 2_000, 2 if quick else 5)
    sys.modules.setdefault("suite", sys.modules[__name__])  # catchup imports it by that name
    import catchup
    import shapes

    catchup.run(report, quick)
    shapes.run(report, quick)
    elapsed = time.monotonic() - started
    print(f"({elapsed:.0f} s)")
    if not args.no_write:
        write_performance(report, quick, elapsed)


def write_performance(report: Report, quick: bool, elapsed: float) -> None:
    command = "make bench" + (" QUICK=1" if quick else "")
    machine = (f"{os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, "
               f"Python {platform.python_version()}, trees on "
               f"{'tmpfs' if FAST_BASE else 'the temporary directory'}")
    table = "\n".join([HEADER, *map(format_row, report.rows)])
    section = (f"{BEGIN}\nMeasured {time.strftime('%Y-%m-%d')} by `{command}` "
               f"(`bench/suite.py`, {elapsed:.0f} s) on: {machine}.\n\n```\n{table}\n```\n{END}")
    text = PERFORMANCE.read_text()
    if BEGIN in text:
        text = text.split(BEGIN)[0] + section + text.split(END, 1)[1]
    else:
        text += "\n" + section + "\n"
    PERFORMANCE.write_text(text)


if __name__ == "__main__":
    main()
