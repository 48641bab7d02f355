"""Catch-up: what changed in a rule's trees while the daemon was not running, acted on once.

At start (and when a reload adds a path) each rule with ``catch_up`` has its trees listed and
compared, directory by directory (``watchd.source.snapshot``), with what the ledger says the
rule last saw; each difference becomes the events inotify would have told: ``create`` and
``close_write`` for a new file, ``close_write`` for a changed one, ``delete`` for a gone one,
``moved_from`` and ``moved_to`` for a file found under another name (the same inode, size and
mtime: a reused inode with other content is a delete and a create). They go through the
rule's matching like any event, marked ``caught_up``, and the ledger then holds the tree as
found. A rule's first start only records what is there, unless it says ``existing: process``.

It runs on a thread of its own: the main loop and the event path never wait for a walk. It
waits for room in the queue rather than have events dropped. A rule's ``poll`` walks its
trees the same way, again and again (``watchd.run.poll``).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator

from watchd.core.events import DIR, EVENT_BITS, FILE, FileEvent, kind_of
from watchd.core.journal import MessageId
from watchd.core.logs import log
from watchd.core.rules import Root, Rule, RuleSet, Scope
from watchd.core.stats import Count, Counters
from watchd.ledger import store
from watchd.ledger.writer import Ledger
from watchd.run.dispatch import Dispatcher
from watchd.run.overlap import GONE, Overlap, state_now
from watchd.run.poll import Poller
from watchd.run.queue import JobQueue
from watchd.source.mounts import at_or_below
from watchd.source.notifier import Notifier
from watchd.source.snapshot import (
    DIRECTORY,
    Changed,
    Created,
    Deleted,
    DirState,
    FileState,
    Looked,
    compare,
    looked_at,
    looking_in,
)
from watchd.source.table import WatchTable

HELD_OPERATIONS = 50_000  # a catch-up waits while the ledger holds more than this to write
QUEUE_ROOM = 0.8  # … and while the queue is fuller than this share of its size
READ_RETRY = 1.0  # seconds between a catch-up's attempts to read a ledger that cannot be read
OVERLAP_GRACE = 2.0  # seconds the end of a catch-up waits at most for live events read late

Pair = tuple[Rule, Root]  # a rule, and one of its roots: what one catch-up walks


class CatchUp:
    def __init__(self, ledger: Ledger, sink: Dispatcher, jobs: JobQueue, counters: Counters,
                 notifier: Notifier) -> None:
        self.ledger = ledger
        self.sink = sink
        self.jobs = jobs
        self.counters = counters
        self.notifier = notifier
        # Its lock: matching runs one thread at a time; its note of watchd's own reads: a
        # listing here is never told as an event.
        self.table = notifier.table
        self.stopping = threading.Event()
        self.overlap = Overlap()
        self._threads: list[threading.Thread] = []
        self._done: set[tuple[str, bytes]] = set()  # (rule, root) caught up with since start
        # (rule, root) of a rule without catch_up polled since start: its first poll is the
        # one that records what is there, whatever changed while the daemon was down.
        self.polled: set[tuple[str, bytes]] = set()
        # (rule, root) whose root was a mount point at its last walk, and those a poll found
        # unmounted since, not walked (watchd.run.catchup.Walk._share_unmounted).
        self.mount_points: set[tuple[str, bytes]] = set()
        self.unmounted: set[tuple[str, bytes]] = set()
        # (rule, directory) the last walk of the rule's tree could not read: said once.
        self.unreadable: set[tuple[str, bytes]] = set()
        self._due: list[Pair] = []
        self._walking = 0
        self._overlapping = 0  # walks (catch-ups and polls) whose live events are noted
        # Each directory (by its id in the ledger) of a rule that polls which a walk found as
        # the ledger records it: a hash of the records' version and of what the walk found. A
        # poll that finds the same again, with the records unchanged, has nothing to tell and
        # does not read them.
        self.unchanged: dict[int, int] = {}
        self.poller = Poller(self._poll, self.stopping)

    def prepare(self, ruleset: RuleSet) -> Callable[[], None]:
        """The commit makes ready to catch up with each rule's roots not caught up with yet
        (all at start, those a reload added after): from then on live events are noted, so
        that the catch-up ``begin`` starts, once they are watched, does not act on them too."""
        pairs = [(rule, root) for root in ruleset.roots if root.untrusted is None
                 for rule in root.rules if rule.enabled and rule.catch_up
                 and (rule.name, root.path) not in self._done]
        # A root a reload removes from its rule is caught up with again when one adds it back.
        kept = {(rule.name, root.path) for root in ruleset.roots for rule in root.rules}

        polls = self.poller.prepare(ruleset)

        def commit() -> None:
            self.unchanged = {}  # held for directories of this rule set's rules only
            self._done &= kept
            self._done.update((rule.name, root.path) for rule, root in pairs)
            if pairs:
                if not self._due:  # the one walk ``begin`` starts for them all ends it
                    self._note_live_events()
                self._due.extend(pairs)
            polls()
        return commit

    def _note_live_events(self) -> None:
        """From now on, until the walk that calls this ends, live events are noted."""
        with self.table.lock:
            self._overlapping += 1
            if self.sink.overlap is None:
                self.overlap = self.sink.overlap = Overlap()

    def begin(self) -> None:
        """Start the catch-up made ready by the last commit, in the background."""
        pairs, self._due = self._due, []
        self.start(pairs)

    def stats(self) -> dict[str, int]:
        return {"catching_up": self.walking(), "polls": self.poller.polls}

    def start(self, pairs: list[Pair]) -> None:
        """Catch up with these pairs, in the background (once live events are noted)."""
        if not pairs:
            return
        thread = threading.Thread(target=self._run, args=(pairs,), name="watchd-catch-up",
                                  daemon=True)
        with self.table.lock:
            self._walking += 1
        self._threads.append(thread)
        thread.start()

    def running(self) -> int:
        """Catch-ups whose thread has not ended (one may still wait for late live events)."""
        return sum(thread.is_alive() for thread in self._threads)

    def walking(self) -> int:
        """Catch-ups still walking a tree."""
        return self._walking

    def stop(self, timeout: float) -> None:
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.poller.stop(max(0.0, deadline - time.monotonic()))

    def _run(self, pairs: list[Pair], polling: bool = False) -> None:
        try:
            self._walk_all(pairs, polling)
        finally:
            with self.table.lock:
                self._walking -= 1
            self._end_overlap()

    def _poll(self, pair: Pair) -> None:
        """One poll of one tree, on the poller's thread."""
        self._note_live_events()
        with self.table.lock:
            self._walking += 1
        self._run([pair], polling=True)

    def _walk_all(self, pairs: list[Pair], polling: bool) -> None:
        self.ledger.flush()  # what the rules saw is read from the disk: all of it there first
        reader = self._reader(pairs, polling)
        if reader is None:
            return
        try:
            for rule, root in pairs:
                if self.stopping.is_set():
                    return
                try:
                    Walk(self, reader, rule, root, polling).run()
                except (OSError, sqlite3.Error) as error:
                    log(logging.ERROR, f"catch-up failed: {error}", rule=rule.name,
                        path=root.path)
        finally:
            reader.close()

    def _reader(self, pairs: list[Pair], polling: bool) -> sqlite3.Connection | None:
        """A connection that only reads the ledger: beside another process that holds it, or
        where it cannot be written. A catch-up waits for one until the daemon stops (what
        changed while it was down is acted on once the ledger can be read); a poll that
        cannot have one is skipped (the next comes)."""
        rules = ",".join(rule.name for rule, _ in pairs)
        waiting = False
        while True:
            try:
                return store.read_only(self.ledger.file)
            except (OSError, sqlite3.Error) as error:
                if polling:
                    log(logging.ERROR, f"poll skipped: the ledger cannot be read: {error}",
                        message_id=MessageId.LEDGER_DEGRADED, rule=rules)
                    return None
                if not waiting:
                    log(logging.ERROR, f"catch-up waits: the ledger cannot be read: {error}; "
                        f"it is tried every {READ_RETRY:g}s, and what changed while the daemon "
                        "was down is acted on once it can be read",
                        message_id=MessageId.LEDGER_DEGRADED, rule=rules)
                    waiting = True
            if self.stopping.wait(READ_RETRY):
                return None

    def _end_overlap(self) -> None:
        """Once the last catch-up running ends, and the events the kernel queued before are
        handled (a live event read late must still find what the catch-up told), or after
        ``OVERLAP_GRACE`` if none come: live events are alone again."""
        turn = self.notifier.turns
        deadline = time.monotonic() + OVERLAP_GRACE
        while not self.notifier.drained(turn) and time.monotonic() < deadline:
            if self.stopping.wait(0.01):
                break
        with self.table.lock:
            self._overlapping -= 1
            if not self._overlapping:
                self.sink.overlap = None


class Walk:
    """One catch-up of one rule's tree."""

    def __init__(self, catch_up: CatchUp, reader: sqlite3.Connection, rule: Rule,
                 root: Root, polling: bool = False) -> None:
        self.up = catch_up
        self.polling = polling
        self.reader = reader
        self.rule = rule
        self.root = root
        # The rule alone, at this root: a catch-up acts for its own rule, never another's.
        alone = dataclasses.replace(root, rules=(rule,), index=None)
        self.scope = Scope.of((alone,))
        # A tree the rule never walked (at its first start, or a path a reload added) is
        # recorded, not acted on, unless ``existing: process``. One it walked is in ``roots``,
        # or, in a ledger of before that table, has records.
        self.new_rule = reader.execute("SELECT 1 FROM rules WHERE name=?",
                                       (rule.name,)).fetchone() is None
        self.recorded = store.root_recorded(reader, rule.name, root.path)
        self.first = self.new_rule or not (
            self.recorded or store.has_records_under(reader, rule.name, root.path))
        self.acting = not self.first or rule.existing == "process"
        if polling and not rule.catch_up and not self._polled_before():
            self.acting = self.first and rule.existing == "process"
        self.told: Counter[str] = Counter()
        # Regular files found new, and gone, anywhere in the tree, by state: paired into
        # moves at the end. Their records are written once their events are queued (a crash
        # between the two must not leave a change recorded and never acted on).
        self.created: defaultdict[FileState, list[bytes]] = defaultdict(list)
        self.gone: defaultdict[FileState, list[bytes]] = defaultdict(list)
        self.replaced: defaultdict[FileState, list[bytes]] = defaultdict(list)  # new inodes
        self.overwritten: defaultdict[FileState, list[bytes]] = defaultdict(list)  # their old
        self.vanished: list[bytes] = []
        self.known: dict[bytes, int] = {}  # the directories recorded, until the walk finds them

    def run(self) -> None:
        started = time.monotonic()
        if self._share_unmounted():
            return
        self.known = self._known_dirs()
        unreadable: dict[bytes, OSError] = {}
        for directory, entries, descriptor in _walk(self.root.path, self.rule.recursive,
                                                    self.up.table, unreadable):
            if self.up.stopping.is_set():
                return
            self._directory(directory, entries, descriptor, self.known.pop(directory, None))
        self._keep_unreadable(unreadable)
        for directory, dir_id in self.known.items():
            self._vanished(directory, dir_id)
        self._moves_and_the_rest()
        for directory in self.vanished:
            self.up.ledger.forget_dir(self.rule.name, directory)
        if not self.recorded:
            self.up.ledger.caught_up(self.rule.name, self.root.path)
        duration_ms = round((time.monotonic() - started) * 1000)
        if self.polling:
            self._polled(duration_ms)
        elif self.acting:
            self.up.counters.add(Count.CAUGHT_UP, self.rule.name, sum(self.told.values()))
            log(logging.INFO, "caught up" + ("" if self.told else ": nothing changed"),
                message_id=MessageId.CAUGHT_UP, rule=self.rule.name, path=self.root.path,
                duration_ms=duration_ms,
                fields={name: self.told[name] for name in sorted(self.told)})
        else:
            log(logging.INFO, ("first start" if self.new_rule else "a path new to the rule")
                + ": what is there is recorded, not acted on (existing: ignore)",
                message_id=MessageId.CAUGHT_UP, rule=self.rule.name, path=self.root.path,
                duration_ms=duration_ms)

    def _share_unmounted(self) -> bool:
        """For a poll: whether the tree's root was a mount point at the walk before and is not
        now (a share unmounted: what is left is the mount point's own directory); it is then
        not walked, which would tell every file deleted, and every one new once the share is
        back. Said when that begins and ends. (A share mounted again has a new device number:
        what is compared is whether the root is on another file system than its parent.)"""
        key = (self.rule.name, self.root.path)
        try:
            mounted = (os.stat(self.root.path).st_dev
                       != os.stat(os.path.dirname(self.root.path.rstrip(b"/")) or b"/").st_dev)
        except OSError:
            return False  # the walk says what it finds
        unmounted = self.up.unmounted
        if mounted or not self.polling or key not in self.up.mount_points:
            if mounted:
                self.up.mount_points.add(key)
            else:
                self.up.mount_points.discard(key)
            if key in unmounted:
                unmounted.discard(key)
                log(logging.INFO, "polled again: a file system is mounted at the tree's root "
                    "again", message_id=MessageId.POLLED, rule=self.rule.name,
                    path=self.root.path)
            return False
        if key not in unmounted:
            unmounted.add(key)
            log(logging.WARNING, "not polled: the tree's root was a mount point and is not now "
                "(a share unmounted); nothing is told deleted or new, and it is polled again "
                "once a file system is mounted there (or after a restart, which walks what is "
                "there)", message_id=MessageId.POLLED, rule=self.rule.name, path=self.root.path)
        return True

    def _keep_unreadable(self, unreadable: dict[bytes, OSError]) -> None:
        """Keep the records of the directories that could not be read, and of all below them,
        as they are: a share that does not answer for a while is not every file deleted,
        and when it answers again, not every file new. Said when that begins and ends."""
        for top in unreadable:
            for directory in [d for d in self.known if at_or_below(d, top)]:
                del self.known[directory]
        noted = self.up.unreadable
        mine = {(self.rule.name, directory) for directory in unreadable}
        before = {key for key in noted
                  if key[0] == self.rule.name and at_or_below(key[1], self.root.path)}
        began, ended = mine - before, before - mine
        if began:
            directory = min(directory for _, directory in began)
            log(logging.WARNING, f"{_directories(len(began))} of the tree cannot be read: "
                f"{unreadable[directory].strerror}; what "
                f"{'it holds' if len(began) == 1 else 'they hold'} is kept as recorded, not "
                "told deleted, and looked at again at the next walk",
                message_id=MessageId.POLLED if self.polling else MessageId.CAUGHT_UP,
                rule=self.rule.name, path=directory)
        if ended:
            log(logging.INFO, f"{_directories(len(ended))} of the tree can be read again",
                rule=self.rule.name, path=min(directory for _, directory in ended))
        noted.difference_update(ended)
        noted.update(began)

    def _polled_before(self) -> bool:
        """Whether this rule's tree was polled since the daemon's start (noting it is)."""
        key = (self.rule.name, self.root.path)
        polled = key in self.up.polled
        self.up.polled.add(key)
        return polled

    def _polled(self, duration_ms: int) -> None:
        """A poll says what it found, only when it found something (it comes again)."""
        self.up.counters.add(Count.POLLED, self.rule.name, sum(self.told.values()))
        if self.told:
            log(logging.INFO, "polled: changes inotify did not tell", message_id=MessageId.POLLED,
                rule=self.rule.name, path=self.root.path, duration_ms=duration_ms,
                fields={name: self.told[name] for name in sorted(self.told)})
        elif self.first:
            log(logging.INFO, "first poll: what is there is recorded, not acted on "
                "(existing: ignore)", message_id=MessageId.POLLED, rule=self.rule.name,
                path=self.root.path, duration_ms=duration_ms)

    def _known_dirs(self) -> dict[bytes, int]:
        top = self.root.path
        prefix = top.rstrip(b"/") + b"/"
        rows = self.reader.execute("SELECT path, id FROM dirs WHERE rule=?", (self.rule.name,))
        return {path: dir_id for path, dir_id in rows
                if path == top or (self.rule.recursive and path.startswith(prefix))}

    def _records(self, dir_id: int) -> dict[bytes, FileState]:
        return store.records(self.reader.execute(
            "SELECT name, ino, size, mtime FROM seen WHERE dir=?", (dir_id,)))

    def _directory(self, directory: bytes, entries: list[os.DirEntry[bytes]], descriptor: int,
                   dir_id: int | None) -> None:
        looked = looked_at(entries, descriptor)
        if dir_id is None or not self.rule.poll:  # only a poll walks the directory again
            self._compare(directory, {} if dir_id is None else self._records(dir_id), looked)
            return
        # The version first: records changed after it was read change it too.
        found_as = hash((self.up.ledger.records_version(dir_id), tuple(looked)))
        if self.up.unchanged.get(dir_id) == found_as:
            return
        if self._compare(directory, self._records(dir_id), looked):
            self.up.unchanged.pop(dir_id, None)
        else:
            self.up.unchanged[dir_id] = found_as

    def _compare(self, directory: bytes, before: DirState, looked: Looked) -> bool:
        """Tell what changed from ``before``; whether anything did."""
        found: list[tuple[bytes, FileState]] = []
        gone: list[bytes] = []
        changed = False
        for change, state in compare(before, looked):
            changed = True
            path = os.path.join(directory, change.name)
            if isinstance(change, Deleted):
                if change.replaced:  # told now, before the new entry's create; the record
                    if change.is_dir:  # is then the new one's
                        self._gone_below(path)
                    self._tell("delete", path, change.is_dir, GONE)
                    continue
                if self._defer(self.gone, state, path):
                    continue
                if self._tell("delete", path, change.is_dir, GONE):
                    gone.append(change.name)
                continue
            if isinstance(change, Created) and self._defer(self.created, state, path):
                continue
            # Another inode under a known name: perhaps a file renamed over it, and what it
            # held renamed elsewhere (a rotation: mv log log.1).
            if (isinstance(change, Changed) and before[change.name][0] != state[0]
                    and self._defer(self.replaced, state, path)):
                self.overwritten[before[change.name]].append(path)
                continue
            told = (self._tell("close_write", path, False, state) if isinstance(change, Changed)
                    else self._tell("create", path, state == DIRECTORY, state))
            if told:
                found.append((change.name, state))
        self._record(directory, found, gone)
        return changed

    def _defer(self, by_state: defaultdict[FileState, list[bytes]], state: FileState,
               path: bytes) -> bool:
        """Keep a regular file found new or gone for the end, when acting (it may be one half
        of a move); whether it was."""
        if not self.acting or state[1] < 0:
            return False
        by_state[state].append(path)
        return True

    def _record(self, directory: bytes, found: list[tuple[bytes, FileState]],
                gone: list[bytes]) -> None:
        if found or gone:
            self.up.ledger.record_dir(self.rule.name, directory, found, gone)
            self.up.ledger.backlog(HELD_OPERATIONS)

    def _gone_below(self, top: bytes) -> None:
        """A directory replaced by another kind of entry: what it held, as recorded, told
        deleted at once, each directory's after what was in it, as inotify tells it."""
        below = [directory for directory in self.known if at_or_below(directory, top)]
        for directory in sorted(below, key=len, reverse=True):  # a child's path is longer
            dir_id = self.known.pop(directory)
            self.up.unchanged.pop(dir_id, None)
            for name, state in self._records(dir_id).items():
                self._tell("delete", os.path.join(directory, name), state == DIRECTORY, GONE)
            self.vanished.append(directory)

    def _vanished(self, directory: bytes, dir_id: int) -> None:
        """A directory the ledger knew that the walk did not find: what it held is gone (if
        the directory is; one a rule no longer walks is only forgotten), at the end."""
        self.up.unchanged.pop(dir_id, None)
        if not os.path.isdir(directory) or os.path.islink(directory):
            for name, state in self._records(dir_id).items():
                path = os.path.join(directory, name)
                if not self._defer(self.gone, state, path):
                    self._tell("delete", path, state == DIRECTORY, GONE)
        self.vanished.append(directory)

    def _moves_and_the_rest(self) -> None:
        """Tell the regular files found new, under a known name with another inode, or gone:
        one with the state another name had is that one renamed, told first (a new file at
        a name one left comes after it). Then record them."""
        found: defaultdict[bytes, list[tuple[bytes, FileState]]] = defaultdict(list)
        gone: defaultdict[bytes, list[bytes]] = defaultdict(list)
        arrivals = [(path, state, new) for arrived, new in ((self.created, True),
                                                            (self.replaced, False))
                    for state, paths in arrived.items() for path in paths]
        written, recorded = [], []
        for path, state, new in arrivals:
            src, vanished = self._source(state)
            if src is None:
                written.append((path, state, new))
            elif self._moved(src, vanished, path, state, gone):
                recorded.append((path, state))
        for path, state, new in written:
            told = self._tell("create", path, False, state) if new else True
            if self._tell("close_write", path, False, state) and told:
                recorded.append((path, state))
        for path, state in recorded:
            directory, name = os.path.split(path)
            found[directory].append((name, state))
        for paths in self.gone.values():
            for path in paths:
                if self._tell("delete", path, False, GONE):
                    directory, name = os.path.split(path)
                    gone[directory].append(name)
        for directory in found.keys() | gone.keys():
            self._record(directory, found.get(directory, []), gone.get(directory, []))

    def _moved(self, src: bytes, vanished: bool, path: bytes, state: FileState,
               gone: defaultdict[bytes, list[bytes]]) -> bool:
        """Tell ``src`` renamed to ``path`` (``gone`` gets ``src`` if nothing is there now);
        whether ``path`` is the catch-up's to record."""
        if self._tell("moved_from", src, False, GONE) and vanished:
            directory, name = os.path.split(src)
            gone[directory].append(name)
        return self._tell("moved_to", path, False, state, src)

    def _source(self, state: FileState) -> tuple[bytes | None, bool]:
        """The name a file in ``state`` was renamed from: a gone file's, else one that holds
        another file now; and whether that name is gone."""
        for pool, vanished in ((self.gone, True), (self.overwritten, False)):
            names = pool.get(state)
            if names:
                return names.pop(), vanished
        return None, False

    def _tell(self, name: str, path: bytes, is_dir: bool, state: FileState,
              src_path: bytes = b"") -> bool:
        """Act on a change as ``name`` (when acting); whether it is the catch-up's to record:
        not if a live event came for the path, nor if it is a file someone still writes."""
        if self.acting:
            self._wait_for_room()
        table = self.up.table
        with table.lock:
            if name == "close_write" and self.acting and (
                    table.open_for_writing(path) or state_now(path) != state):
                # Not written yet, or written since the walk looked: its writer's own
                # close_write comes live, and acts on the file as it is then.
                return False
            if self.acting and self.up.sink.holding(self.rule.name, self.root.path, path):
                return False  # a live event for it waits on debounce, settle or a batch
            if not self.up.overlap.claim((self.rule.name, path), state, self.acting):
                return False
            if self.acting:
                event = FileEvent(path, name, EVENT_BITS[name], is_dir, src_path,
                                  caught_up=True)
                # Counted if the rule acts on it: not a create it does not ask for, a file its
                # patterns leave out, nor an entry of a kind it does not take (the run is
                # refused, as a live event's is).
                if self.up.sink.submit(event, self.scope) and self._takes(state, path):
                    self.told[name] += 1
                if self.up.sink.holding(self.rule.name, self.root.path, path):
                    # Held by debounce, settle or a batch: no job yet, nothing on disk. Its
                    # job's record is written when it is queued; recorded now, a crash before
                    # then would leave the change recorded and never acted on.
                    return False
        return True

    def _takes(self, state: FileState, path: bytes) -> bool:
        """Whether the rule takes the kind of what the change hands its actions, as the
        re-check before the run judges it: for a delete, what is at the path again, if
        anything (a name that holds another kind of entry now)."""
        if state == DIRECTORY:
            return DIR in self.rule.kinds
        if state[1] >= 0:
            return FILE in self.rule.kinds
        try:  # anything else (a symlink, a FIFO) is looked at: the walk only listed it
            return kind_of(os.lstat(path).st_mode) in self.rule.kinds
        except OSError:
            return state == GONE

    def _wait_for_room(self) -> None:
        jobs = self.up.jobs
        while len(jobs) > jobs.maxsize * QUEUE_ROOM and not self.up.stopping.wait(0.05):
            pass


def _directories(count: int) -> str:
    return f"{count} director{'y' if count == 1 else 'ies'}"


Listed = tuple[bytes, list[os.DirEntry[bytes]], int]  # a directory, its entries, a descriptor


def _walk(top: bytes, recursive: bool, table: WatchTable,
          unreadable: dict[bytes, OSError]) -> Iterator[Listed]:
    """Each directory of the tree (never through a symlink) with its entries, and a descriptor
    to look at them by name with (``looking_in``), open until the next one comes. One that is
    there but cannot be read goes to ``unreadable``, with why."""
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            with looking_in(directory) as descriptor:
                entries = _listing(directory, table)
                yield directory, entries, descriptor
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.ENOTDIR):
                unreadable[directory] = error  # a share gone away, EIO, EACCES: not gone
            continue  # gone, or not a directory: its records tell what it held
        if recursive:
            stack.extend(entry.path for entry in entries if entry.is_dir(follow_symlinks=False))


def _listing(directory: bytes, table: WatchTable) -> list[os.DirEntry[bytes]]:
    with table.lock:
        table.reading(directory)
    try:
        with os.scandir(directory) as listing:
            return list(listing)
    except OSError:
        with table.lock:
            table.read_back(directory)  # not opened: none of its events will come
        raise
