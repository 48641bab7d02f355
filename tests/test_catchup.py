"""Catch-up: what changed while the daemon was down (stopped or killed) is acted on once, as the
events inotify would have told, with WATCHD_CAUGHT_UP=1; what did not change is not."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import Daemon, Receiver, counters, env_of, recorder, records, wait_for

from watchd.ledger import store

SENTINEL = "zz-sentinel-"
CHANGE_EVENTS = "[close_write, moved_to, delete]"


class Run(NamedTuple):
    """One run of the recorder: what it was told."""

    event: str
    path: str  # relative to the test's directory
    src_path: str
    caught_up: str
    is_dir: str
    job: str
    daemon: int  # the pid of the daemon that ran it; another once that one was gone


class Watched:
    """A watched directory, its rules file, the daemon on it (one at a time) and what the
    recorder command was run for."""

    def __init__(self, tmp_path: Path, write_rules, daemon) -> None:
        self.base = tmp_path
        self.dir = tmp_path / "in"
        self.dir.mkdir()
        self.out = tmp_path / "out.jsonl"
        self.ledger_file = tmp_path / "state" / "ledger.db"
        self._write_rules = write_rules
        self._daemon = daemon
        self.process: Daemon | None = None
        self._sentinels = 0

    def configure(self, paths: list[Path] | None = None, workers: int = 1, more: str = "",
                  **keys: str) -> Path:
        """One rule, ``catch``, running the recorder; one worker by default, so that jobs run
        in the order they were queued (a sentinel's run comes after all queued before it)."""
        lines = "".join(f"\n    {key}: {value}" for key, value in keys.items())
        return self._write_rules(f"""\
settings: {{workers: {workers}}}
rules:
  - name: catch
    paths: {[str(path) for path in paths or [self.dir]]}
    actions: [{{command: {recorder(self.out)}}}]{lines}
{more}""")

    def start(self) -> Daemon:
        self.process = self._daemon(self.base / "etc" / "rules.yaml")
        return self.process

    def stop(self) -> None:
        assert self.process is not None
        code = self.process.stop()
        assert code == 0, f"daemon exited {code}:\n{self.process.log()}"

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def caught_up(self, root: Path | None = None) -> dict[str, str]:
        """The fields of the running daemon's "caught up" line (of ``root``, if given), once
        it is logged; {} for "caught up: nothing changed"."""
        assert self.process is not None

        def line_of_root() -> str | None:
            return next((line for line in self.process.log().splitlines()
                         if " caught up" in line and (root is None or f"path={root} " in line)),
                        None)

        line = wait_for(line_of_root, what=f"the caught up line of {root or 'the rule'}")
        if "caught up: nothing changed" in line:
            return {}
        fields = line.split(" caught up ", 1)[1].split()
        return {key: value for key, _, value in (field.partition("=") for field in fields)
                if key not in ("rule", "path", "duration_ms")}

    def settle(self) -> None:
        """Write a new file live and wait for its run: every job queued before it has run."""
        self._sentinels += 1
        sentinel = self.dir / f"{SENTINEL}{self._sentinels}"
        sentinel.write_bytes(b"s")
        wait_for(lambda: any(run.path == f"in/{sentinel.name}" and run.event == "close_write"
                             for run in self.all_runs()), what=f"the run for {sentinel.name}")

    def all_runs(self) -> list[Run]:
        def relative(value: bytes) -> str:
            return os.path.relpath(os.fsdecode(value), self.base) if value else ""

        return [Run(env["WATCHD_EVENT"].decode(), relative(env["WATCHD_PATH"]),
                    relative(env["WATCHD_SRC_PATH"]), env["WATCHD_CAUGHT_UP"].decode(),
                    env["WATCHD_IS_DIR"].decode(), env["WATCHD_JOB"].decode(),
                    record["ppid"])
                for record in records(self.out) for env in (env_of(record),)]

    def runs(self) -> list[Run]:
        """The runs for anything but the sentinels."""
        return [run for run in self.all_runs() if SENTINEL not in run.path]

    def told(self, after: int = 0) -> set[tuple[str, str, str, str]]:
        """(event, path, src_path, caught_up) of the runs from the ``after``-th on."""
        return {(run.event, run.path, run.src_path, run.caught_up)
                for run in self.runs()[after:]}

    def jobs(self) -> int:
        """How many jobs the ledger holds (queued, retrying, dead)."""
        if not self.ledger_file.exists():
            return 0
        uri = f"file:{self.ledger_file}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
            try:
                return len(store.jobs(connection))
            except sqlite3.OperationalError:  # not made yet
                return 0

    def ledger(self, query: str) -> list[tuple]:
        if not self.ledger_file.exists():
            return []
        uri = f"file:{self.ledger_file}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
            try:
                return connection.execute(query).fetchall()
            except sqlite3.OperationalError:  # not made yet
                return []

    def wait_committed(self, records: int, rules: tuple[str, ...] = ("catch",)) -> None:
        """Until the ledger holds no job, the rules' first start, and ``records`` records:
        what a kill -9 would leave is what a clean stop leaves."""
        wait_for(lambda: self.jobs() == 0
                 and self.ledger("SELECT name FROM rules ORDER BY name") == [
                     (name,) for name in sorted(rules)]
                 and self.ledger("SELECT count(*) FROM seen") == [(records,)],
                 what=f"no job, the rule and {records} records in the ledger")


@pytest.fixture
def watched(tmp_path, write_rules, daemon) -> Watched:
    return Watched(tmp_path, write_rules, daemon)


def write(path: Path, data: bytes = b"data") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def append(path: Path) -> None:
    with path.open("ab") as file:
        file.write(b" more")


# -- downtime: a clean stop, and kill -9 --------------------------------------------------------

LIVE_FILES = ("keep", "grow", "old", "gone")


def files_made_live(w: Watched) -> None:
    """A first start on an empty directory, then files written while it runs; their runs."""
    w.configure(events=CHANGE_EVENTS)
    w.start()
    w.process.wait_log("first start: what is there is recorded, not acted on")
    for name in LIVE_FILES:
        write(w.dir / name)
    wait_for(lambda: len(w.runs()) == len(LIVE_FILES), what="the live runs")
    assert w.told() == {("close_write", f"in/{name}", "", "0") for name in LIVE_FILES}


def change_while_down(w: Watched) -> None:
    write(w.dir / "new")
    append(w.dir / "grow")
    (w.dir / "old").rename(w.dir / "renamed")
    (w.dir / "gone").unlink()


def assert_caught_up_once(w: Watched, starting: Callable[[], ContextManager[object]]
                          = contextlib.nullcontext) -> None:
    """After the changes of ``change_while_down``: each acted on once, as its events (the
    daemon started within ``starting``)."""
    before = len(w.runs())
    with starting():
        w.start()
        # What the rule acts on: it counted a create and a moved_from the rule does not ask
        # for.
        assert w.caught_up() == {"close_write": "2", "delete": "1", "moved_to": "1"}
    w.settle()
    assert w.told(before) == {
        ("close_write", "in/new", "", "1"),
        ("close_write", "in/grow", "", "1"),
        ("moved_to", "in/renamed", "in/old", "1"),
        ("delete", "in/gone", "", "1"),
    }
    assert len(w.runs()) == before + 4, w.runs()[before:]  # once each, "keep" not at all
    w.process.wait_log(f"caught_up=1 job={w.runs()[-1].job}")  # said after its run
    sentinel = w.all_runs()[-1]
    assert sentinel.caught_up == "0"  # a live event after the catch-up
    # Nothing changed since: nothing to act on.
    w.stop()
    runs = len(w.all_runs())
    w.start()
    assert w.caught_up() == {}
    w.settle()
    assert len(w.all_runs()) == runs + 1  # the sentinel's run alone


def test_changes_made_while_stopped_are_acted_on_once(watched):
    files_made_live(watched)
    watched.stop()
    change_while_down(watched)
    assert_caught_up_once(watched)


def test_changes_made_after_a_kill_are_acted_on_once(watched):
    files_made_live(watched)
    watched.wait_committed(len(LIVE_FILES))
    watched.kill()
    assert watched.process.process.returncode == -signal.SIGKILL
    change_while_down(watched)
    assert_caught_up_once(watched)


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_changes_made_while_down_are_caught_up_with_while_the_ledger_is_locked(watched):
    # The catch-up opened the ledger to write, waited on the lock and was skipped: "catch-up
    # skipped: ... database is locked"; what changed was acted on only after another restart.
    files_made_live(watched)
    watched.stop()
    change_while_down(watched)

    @contextlib.contextmanager
    def locked() -> Iterator[None]:
        with contextlib.closing(sqlite3.connect(watched.ledger_file,
                                                isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            try:
                yield
            finally:
                other.execute("ROLLBACK")
        watched.process.wait_log("the ledger can be written again")

    assert_caught_up_once(watched, locked)


@pytest.mark.slow  # seconds: make test runs it, make check does not
@pytest.mark.parametrize("shape", [{"debounce": "3s"}, {"settle": "3s"},
                                   {"batch": "{window: 3s}"}], ids=["debounce", "settle", "batch"])
def test_a_change_the_catch_up_found_held_by_a_stage_outlives_a_kill(watched, shape):
    # The catch-up recorded the file as found while its event waited on the stage: after a
    # kill -9 then, the next start found it as recorded ("caught up: nothing changed"), and
    # it was never acted on.
    watched.configure(**shape)
    watched.start()
    watched.process.wait_log("first start: what is there is recorded, not acted on")
    watched.stop()
    write(watched.dir / "f")
    watched.start()
    assert watched.caught_up() == {"close_write": "1"}

    def recorded() -> bool:
        return bool(watched.ledger("SELECT 1 FROM seen WHERE name = CAST('f' AS BLOB)"))

    deadline = time.monotonic() + 1.0  # a record written at once is on disk well within it
    while not recorded() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not records(watched.out)
    watched.kill()
    watched.start()
    # The only file: any run is its (a batch's run names no single path in its environment).
    wait_for(lambda: records(watched.out), what="the run for the file the killed daemon held")


def test_a_file_renamed_over_another_while_down_is_a_move(watched):
    """``mv b c`` with c there: inotify tells moved_from b and moved_to c (c's old content is
    gone with it), not a write of c; a rule that asks for close_write only acts on neither."""
    for name in ("b", "c", "edited"):
        write(watched.dir / name, name.encode())
    watched.configure(events="[close_write, moved_from, moved_to]")
    watched.start()
    watched.process.wait_log("first start: what is there is recorded")
    watched.stop()
    (watched.dir / "b").rename(watched.dir / "c")
    append(watched.dir / "edited")  # written in place: the same inode, told as a write
    watched.start()
    assert watched.caught_up() == {"close_write": "1", "moved_from": "1", "moved_to": "1"}
    watched.settle()
    assert watched.told() == {("moved_from", "in/b", "", "1"), ("moved_to", "in/c", "in/b", "1"),
                              ("close_write", "in/edited", "", "1")}
    watched.stop()
    watched.start()
    assert watched.caught_up() == {}


def test_a_rotation_made_while_down_is_told_as_its_renames(watched):
    """``mv log.1 log.2; mv log log.1`` and a new log: each file renamed is a move, though a
    name it left holds another file now; the new log is a write of its name."""
    write(watched.dir / "log", b"current")
    write(watched.dir / "log.1", b"older")
    watched.configure(events="[close_write, moved_from, moved_to]")
    watched.start()
    watched.process.wait_log("first start: what is there is recorded")
    watched.stop()
    (watched.dir / "log.1").rename(watched.dir / "log.2")
    (watched.dir / "log").rename(watched.dir / "log.1")
    write(watched.dir / "log", b"new")
    watched.start()
    assert watched.caught_up() == {"close_write": "1", "moved_from": "2", "moved_to": "2"}
    watched.settle()
    told = [(run.event, run.path, run.src_path) for run in watched.runs()]
    assert told == [("moved_from", "in/log.1", ""), ("moved_to", "in/log.2", "in/log.1"),
                    ("moved_from", "in/log", ""), ("moved_to", "in/log.1", "in/log"),
                    ("close_write", "in/log", "")], told
    watched.stop()
    watched.start()
    assert watched.caught_up() == {}


# -- a rule's first start ----------------------------------------------------------------------

def test_first_start_ignores_what_is_there_and_acts_on_later_changes(watched):
    for name in ("a", "b"):
        write(watched.dir / name)
    watched.configure()
    watched.start()
    watched.process.wait_log("first start: what is there is recorded, not acted on "
                             "(existing: ignore)")
    watched.settle()
    assert watched.runs() == []
    assert " caught up" not in watched.process.log()
    watched.stop()
    append(watched.dir / "a")
    watched.start()
    assert watched.caught_up() == {"close_write": "1"}
    watched.settle()
    assert watched.told() == {("close_write", "in/a", "", "1")}
    assert len(watched.runs()) == 1


def test_first_start_with_existing_process_acts_on_each_file_once(watched):
    names = ("a", "b", "c")
    for name in names:
        write(watched.dir / name)
    watched.configure(existing="process")
    watched.start()
    assert watched.caught_up() == {"close_write": "3"}  # the rule asks for no create
    watched.settle()
    assert watched.told() == {("close_write", f"in/{name}", "", "1") for name in names}
    assert len(watched.runs()) == len(names)
    assert "first start" not in watched.process.log()
    watched.stop()
    watched.start()
    assert watched.caught_up() == {}
    watched.settle()
    assert len(watched.runs()) == len(names)


def test_the_caught_up_count_leaves_out_entries_of_a_kind_the_rule_does_not_take(watched):
    for name in ("a", "m"):
        write(watched.dir / name)
    (watched.dir / "lnk").symlink_to("a")
    os.mkfifo(watched.dir / "fifo")
    watched.configure(existing="process", events="[create, close_write, delete]")
    watched.start()
    # A symlink and a FIFO are refused by the rule's kind (file, dir), as live: not counted.
    assert watched.caught_up() == {"close_write": "2", "create": "2"}
    watched.settle()
    assert watched.told() == {(event, f"in/{name}", "", "1") for event in ("create", "close_write")
                              for name in ("a", "m")}
    # A file become a symlink while down: its delete hands the actions the symlink, and the
    # re-check refuses that too.
    watched.stop()
    (watched.dir / "m").unlink()
    (watched.dir / "m").symlink_to("a")
    runs = len(watched.runs())
    watched.start()
    assert watched.caught_up() == {}
    watched.settle()
    assert len(watched.runs()) == runs


# -- a recursive rule ----------------------------------------------------------------------------

def test_a_recursive_rule_catches_up_with_new_and_removed_directories(watched):
    for name in ("old/x", "old/y", "old/inner/z", "top"):
        write(watched.dir / name)
    watched.configure(recursive="true", events="[create, close_write, delete]")
    watched.start()
    watched.process.wait_log("first start: what is there is recorded")
    watched.stop()
    shutil.rmtree(watched.dir / "old")
    for name in ("sub/f1", "sub/deeper/f2"):
        write(watched.dir / name)
    watched.start()
    assert watched.caught_up() == {"close_write": "2", "create": "4", "delete": "5"}
    watched.settle()
    runs = watched.runs()
    assert sorted((run.event, run.path, run.is_dir, run.caught_up) for run in runs) == sorted([
        ("create", "in/sub", "1", "1"),
        ("create", "in/sub/deeper", "1", "1"),
        ("create", "in/sub/f1", "0", "1"),
        ("close_write", "in/sub/f1", "0", "1"),
        ("create", "in/sub/deeper/f2", "0", "1"),
        ("close_write", "in/sub/deeper/f2", "0", "1"),
        ("delete", "in/old", "1", "1"),
        ("delete", "in/old/inner", "1", "1"),
        ("delete", "in/old/x", "0", "1"),
        ("delete", "in/old/y", "0", "1"),
        ("delete", "in/old/inner/z", "0", "1"),
    ])


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_a_name_that_holds_another_kind_of_entry_is_told_deleted_then_created(watched):
    """A file replaced by a directory, a directory by a file, a file by a symlink while down:
    each old entry deleted and the new one created, in that order, as inotify tells them."""
    write(watched.dir / "f2d")
    write(watched.dir / "d2f" / "y")
    write(watched.dir / "f2s")
    watched.configure(recursive="true", events="[create, close_write, delete]",
                      kind="[file, dir, symlink]")
    watched.start()
    watched.process.wait_log("first start: what is there is recorded")
    watched.stop()
    (watched.dir / "f2d").unlink()
    write(watched.dir / "f2d" / "i")
    shutil.rmtree(watched.dir / "d2f")
    write(watched.dir / "d2f")
    (watched.dir / "f2s").unlink()
    (watched.dir / "f2s").symlink_to("/etc/hostname")
    watched.start()
    watched.caught_up()
    watched.settle()
    told = [(run.event, run.path, run.is_dir) for run in watched.runs()]
    assert sorted(told) == sorted([
        ("delete", "in/f2d", "0"), ("create", "in/f2d", "1"),
        ("create", "in/f2d/i", "0"), ("close_write", "in/f2d/i", "0"),
        ("delete", "in/d2f", "1"), ("delete", "in/d2f/y", "0"),
        ("create", "in/d2f", "0"), ("close_write", "in/d2f", "0"),
        ("delete", "in/f2s", "0"), ("create", "in/f2s", "0"),
    ]), told
    for path in ("in/f2d", "in/f2s"):
        assert told.index(("delete", path, "0")) < told.index(next(
            run for run in told if run[:2] == ("create", path)))
    # What the directory held first, then the directory, then what took its name.
    assert (told.index(("delete", "in/d2f/y", "0")) < told.index(("delete", "in/d2f", "1"))
            < told.index(("create", "in/d2f", "0")))
    watched.stop()  # and what is there now is recorded: nothing again
    watched.start()
    assert watched.caught_up() == {}


# -- catch_up: false ---------------------------------------------------------------------------

def test_without_catch_up_changes_made_while_down_are_not_acted_on(watched):
    write(watched.dir / "there")
    watched.configure(catch_up="false")
    watched.start()
    write(watched.dir / "live")
    wait_for(watched.runs, what="the live run")
    watched.stop()
    write(watched.dir / "new")
    append(watched.dir / "there")
    (watched.dir / "live").rename(watched.dir / "moved")
    watched.start()
    watched.settle()  # live events still work
    write(watched.dir / "live-again")
    wait_for(lambda: len(watched.runs()) == 2, what="the second live run")
    assert [(run.event, run.path, run.caught_up) for run in watched.runs()] == [
        ("close_write", "in/live", "0"), ("close_write", "in/live-again", "0")]
    assert " caught up" not in watched.process.log()
    assert "first start" not in watched.process.log()


@pytest.mark.slow  # several polls or retries: make test runs it, make check does not
def test_a_poll_without_catch_up_does_not_act_on_changes_made_while_down(watched):
    """``catch_up: false`` with ``poll``: the first poll after a start, made at once, records
    what is there (the poll needs a record), and does not act on what changed meanwhile;
    later ones do (what changed after the start is not lost to a first poll made a whole
    interval later)."""
    write(watched.dir / "a")
    write(watched.dir / "b")
    watched.configure(catch_up="false", poll="4s", events=CHANGE_EVENTS)
    watched.start()
    watched.process.wait_log("first poll: what is there is recorded")
    watched.stop()
    append(watched.dir / "a")
    (watched.dir / "b").unlink()
    write(watched.dir / "c")
    watched.start()
    # At once, not 4 s later: what changes from now on is the next poll's to act on.
    wait_for(lambda: counters(watched.process)["polls"] >= 1, timeout=3, what="the first poll")
    os.utime(watched.dir / "a", (1, 1))  # no write for inotify to tell: a poll's to find
    wait_for(lambda: len(watched.runs()) == 1, what="the change polled")
    watched.settle()
    assert [(run.event, run.path, run.caught_up) for run in watched.runs()] == [
        ("close_write", "in/a", "1")]
    watched.stop()  # the changes were recorded: a start with a catch-up would not act either
    watched.configure(poll="1s", events=CHANGE_EVENTS)
    watched.start()
    assert watched.caught_up() == {}


@pytest.mark.slow  # several polls or retries: make test runs it, make check does not
def test_a_poll_leaves_a_change_whose_live_event_a_debounce_holds_to_that_event(watched):
    """A file written again and again, live, under a debounce longer than the poll's interval:
    one run, by its live event; the polls did not tell it as a change inotify missed."""
    write(watched.dir / "a")
    watched.configure(poll="1s", debounce="2s")
    watched.start()
    watched.process.wait_log("first start: what is there is recorded")
    polls_before = counters(watched.process)["polls"]
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:  # more than two polls while it is written
        append(watched.dir / "a")
        time.sleep(0.3)
    wait_for(watched.runs, what="the debounced run")
    watched.settle()
    assert counters(watched.process)["polls"] >= polls_before + 2
    assert [(run.event, run.path, run.caught_up) for run in watched.runs()] == [
        ("close_write", "in/a", "0")]
    assert "polled: changes inotify did not tell" not in watched.process.log()


# -- a reload adding a path --------------------------------------------------------------------

def reload_with(w: Watched, paths: list[Path], **keys: str) -> None:
    w.configure(paths=paths, **keys)
    reloads = w.process.log().count(" reloaded")
    w.process.signal(signal.SIGHUP)
    wait_for(lambda: w.process.log().count(" reloaded") > reloads, what="the reload")


def test_a_path_a_reload_adds_to_a_rule_has_what_is_there_recorded_not_acted_on(watched):
    """A tree the rule never saw is new to it as at its first start (``existing: ignore``):
    what is there is recorded, and what changes in it while the daemon is down is caught up
    with at the next start."""
    added = watched.base / "added"
    for name in ("p", "sub/q"):
        write(added / name)
    watched.configure(recursive="true")
    watched.start()
    watched.process.wait_log("first start: what is there is recorded")
    reload_with(watched, [watched.dir, added], recursive="true")
    watched.process.wait_log(f"a path new to the rule: what is there is recorded, not acted on "
                             f"(existing: ignore) rule=catch path={added}")
    watched.settle()
    assert watched.runs() == []
    assert " caught up" not in watched.process.log()
    watched.stop()
    append(added / "p")
    watched.start()
    assert watched.caught_up(added) == {"close_write": "1"}
    watched.settle()
    assert watched.told() == {("close_write", "added/p", "", "1")}


def test_a_path_a_reload_adds_to_a_rule_with_existing_process_is_acted_on(watched):
    added = watched.base / "added"
    for name in ("p", "q"):
        write(added / name)
    watched.configure(existing="process")
    watched.start()
    watched.caught_up()
    reload_with(watched, [watched.dir, added], existing="process")
    wait_for(lambda: watched.told() == {("close_write", "added/p", "", "1"),
                                        ("close_write", "added/q", "", "1")},
             what="both files acted on")
    # Its line comes once the walk has ended, which may be after the runs.
    assert watched.caught_up(root=added) == {"close_write": "2"}
    watched.settle()
    assert len(watched.runs()) == 2


def test_a_path_a_reload_removed_and_adds_again_is_caught_up_with_at_that_reload(watched):
    added = watched.base / "added"
    for name in ("p", "q"):
        write(added / name)
    watched.configure(paths=[watched.dir, added], events=CHANGE_EVENTS)
    watched.start()
    watched.process.wait_log("first start: what is there is recorded")
    reload_with(watched, [watched.dir], events=CHANGE_EVENTS)
    append(added / "p")  # while the rule does not watch it
    (added / "q").unlink()
    reload_with(watched, [watched.dir, added], events=CHANGE_EVENTS)
    wait_for(lambda: watched.told() == {("close_write", "added/p", "", "1"),
                                        ("delete", "added/q", "", "1")},
             what="what changed while it was not watched acted on")
    watched.settle()
    assert len(watched.runs()) == 2
    watched.stop()
    watched.start()
    assert watched.caught_up() == {}


def test_a_rule_whose_first_start_an_older_ledger_kept_without_its_roots_catches_up(watched):
    """A ledger of before the roots were kept (0.2's first ones): a root its rules have records
    of is one they walked, and changes there are caught up with, in each of the rule's trees;
    a path added to the rule while the daemon was down is new to it."""
    other, added = watched.base / "other", watched.base / "added"
    write(watched.dir / "a")
    write(other / "b")
    write(added / "c")
    watched.configure(paths=[watched.dir, other])
    watched.start()
    watched.process.wait_log("first start: what is there is recorded", count=2)
    watched.stop()
    with contextlib.closing(sqlite3.connect(watched.ledger_file)) as connection:
        assert connection.execute("DELETE FROM roots").rowcount == 2
        connection.commit()
    append(watched.dir / "a")
    append(other / "b")
    watched.configure(paths=[watched.dir, other, added])
    watched.start()
    assert watched.caught_up(watched.dir) == {"close_write": "1"}
    assert watched.caught_up(other) == {"close_write": "1"}
    watched.process.wait_log(f"a path new to the rule: what is there is recorded, not acted on "
                             f"(existing: ignore) rule=catch path={added}")
    watched.settle()
    assert watched.told() == {("close_write", "in/a", "", "1"), ("close_write", "other/b", "", "1")}
    assert watched.ledger("SELECT count(*) FROM roots") == [(3,)]


# -- kill -9 at random moments -----------------------------------------------------------------

SEED = 20240613
KILLS = 20
WRITE_EVERY = 0.02  # seconds between two new files
DRAIN = 60.0


class Writer(threading.Thread):
    """New files, each with a name of its own, into a directory until told to stop."""

    def __init__(self, directory: Path) -> None:
        super().__init__(name="writer", daemon=True)
        self.directory = directory
        self.written: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            name = f"f{len(self.written):05d}"
            write(self.directory / name, name.encode())
            self.written.append(f"in/{name}")
            self.done.wait(WRITE_EVERY)


def delivered_by_path(receiver: Receiver) -> dict[str, list[str]]:
    """Each file's deliveries: their ids (what a signed one sends as webhook-id), in the order
    they came."""
    ids: dict[str, list[str]] = defaultdict(list)
    for request in list(receiver.requests):
        try:
            document = json.loads(request["body"])
        except ValueError:
            continue  # cut short by a kill -9: it never arrived whole, and is sent again
        ids[f"in/{document['name']}"].append(document["id"])
    return ids


def each_by_another_daemon(runs: list[Run], daemons: set[int]) -> bool:
    """Whether no daemon ran the job twice: each run again is a later daemon's, after a kill
    (a run whose daemon was gone before it looked counts as its own)."""
    ran_by = [run.daemon for run in runs if run.daemon in daemons]
    return len(ran_by) == len(set(ran_by))


@pytest.mark.slow  # tens of seconds: make test runs it, make check does not
def test_kill_9_at_random_moments_acts_on_every_file_once_or_reruns_its_job(watched, receiver):
    """A command rule and a webhook rule on the same files, 20 kill -9 at seeded moments while
    files keep coming: every file is acted on by each rule, again only as the same job run
    again (the same WATCHD_JOB, the same webhook-id) after a kill that came while it ran."""
    rng = random.Random(SEED)
    watched.configure(workers=2, more=f"""\
  - name: hook
    paths: [{watched.dir}]
    actions: [{{webhook: {{url: '{receiver.url}/hook', backoff: 50ms}}}}]
""")
    watched.start()
    watched.process.wait_log("first start: what is there is recorded")
    # The rules' first start is behind them, even after a kill -9.
    watched.wait_committed(0, ("catch", "hook"))
    writer = Writer(watched.dir)
    writer.start()
    assert watched.process is not None
    daemons = {watched.process.pid}
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.05, 0.5))  # the moment of the kill, not a wait for a result
            watched.kill()
            watched.start()
            daemons.add(watched.process.pid)
    finally:
        writer.done.set()
        writer.join()
    written = set(writer.written)

    def runs_by_path() -> dict[str, list[Run]]:
        by_path: dict[str, list[Run]] = defaultdict(list)
        for run in watched.runs():
            by_path[run.path].append(run)
        return by_path

    wait_for(lambda: written <= runs_by_path().keys()
             and written <= delivered_by_path(receiver).keys() and watched.jobs() == 0,
             timeout=DRAIN, what="a run and a delivery for every file written, and no job left")
    by_path = runs_by_path()
    assert by_path.keys() == written
    twice = {path: runs for path, runs in by_path.items() if len(runs) > 1}
    print(f"{len(written)} files, {len(twice)} acted on more than once, "
          f"{sum(run.caught_up == '1' for run in watched.runs())} runs caught up")
    # At least once allows a job to run again when a kill came while it ran (before its end
    # was kept): never a second job for the same file, nor a run again with no kill between.
    wrong = {path: [(run.job, run.caught_up) for run in runs] for path, runs in twice.items()
             if len({run.job for run in runs}) > 1 or not each_by_another_daemon(runs, daemons)}
    assert not wrong, (f"{len(wrong)} of {len(written)} files acted on by two jobs, or again "
                       f"with no kill since, as [(WATCHD_JOB, WATCHD_CAUGHT_UP)]: {wrong}")
    delivered = delivered_by_path(receiver)
    assert delivered.keys() == written
    resent = {path: ids for path, ids in delivered.items() if len(set(ids)) > 1}
    assert not resent, f"files delivered under two delivery ids: {resent}"
    print(f"{sum(len(ids) > 1 for ids in delivered.values())} delivered more than once")
