"""inotify → event: pyinotify's ThreadedNotifier, subclassed so that its thread cannot die or lie.

What pyinotify 0.9.6 gets wrong, and what this subclass does instead:

- names are decoded strictly as UTF-8 (a name like ``b"bad\\xff"`` kills the
  thread): records are parsed here and names stay bytes;
- an exception in a handler kills the thread: each record is handled under its
  own guard, and the thread's loop is restarted if anything else escapes;
- its own per-event processing (``_SysProcessEvent``, ``Watch`` lookups by
  path) is bypassed: records go straight to the watch table and the dispatcher;
- a directory created and filled before its watch exists loses events: every
  new directory is watched, then listed, and what is found in it is reported
  as ``create`` (and ``close_write`` for a regular file, which was written
  before anyone could see it), without reporting it twice when the kernel's own
  events for it arrive after all;
- a directory moved out of the watched tree keeps its watches: an unpaired
  ``moved_from`` of a directory removes them;
- symlinks are followed: watches are added with IN_DONT_FOLLOW | IN_ONLYDIR
  and directory listings never follow links;
- ``Event.isSet()`` warns on every turn of its loop: that one warning is
  filtered, by module;
- a rename made by ``link()`` and ``unlink()`` (sftp-server's, a maildir delivery's) is
  a create and a delete to inotify: the create of a link to a complete file is told as
  ``moved_to`` (``watchd.source.arrivals``).
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
import select
import stat
import struct
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from watchd.core._pyinotify import pyinotify
from watchd.core.events import (
    ALL_EVENTS,
    IN_CLOSE_NOWRITE,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_OPEN,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    FileEvent,
    event_name,
)
from watchd.core.journal import MessageId
from watchd.core.logs import log
from watchd.core.rules import EMPTY_SCOPE, EventSink, RuleSet
from watchd.core.stats import Counters
from watchd.core.wakeup import Wakeup
from watchd.source.arrivals import Arrivals
from watchd.source.snapshot import (
    DIRECTORY,
    UNSEEN,
    Change,
    Changed,
    Created,
    Deleted,
    DirState,
    FileState,
    Found,
    diff,
    file_state,
    found_in,
    looking_in,
    state_of,
)
from watchd.source.table import LINK_MASK, READ_MASK, WatchedDir, WatchManager, WatchTable

_HEADER = struct.Struct("iIII")
_SELF_EVENTS = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT
_MOVE_SETTLE_MS = 5
# After an overflow, a file changed this long before the last complete read counts as changed
# during it (and one changed this long before its directory was refused a watch, as changed
# after: watchd.source.degraded): the margin covers file-system timestamp granularity.
TIMESTAMP_MARGIN_NS = 1_000_000_000
# An overflow's rescan waits while the kernel's queue keeps filling: made at once under a
# burst, it holds the reader back long enough for the queue to overflow again, and every
# directory is listed again (a 400,000-file burst overflowed five times). It waits until a
# turn finds the queue read to the end, or this long under a stream that never stops, or
# until this many names were told meanwhile (each is kept until the rescan: see ``_told``).
_RESCAN_WAIT_NS = 10_000_000_000
_RESCAN_WAIT_NAMES = 100_000
_MOVES = IN_MOVED_FROM | IN_MOVED_TO
_SNAPSHOT_EVENTS = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE


@dataclass(slots=True)
class _Scanned:
    """Names reported by listing a new directory, until the kernel's backlog for it is read."""

    generation: int  # the round of the last listing that found names here
    names: set[bytes] = field(default_factory=set)
    # Regular files found, whose close_write is told when the backlog is read, and whether a
    # read lease must first show that nobody still writes them (a new directory's files).
    unclosed: dict[bytes, bool] = field(default_factory=dict)


@dataclass(slots=True)
class _MoveOut:
    generation: int
    path: bytes
    watches: dict[int, WatchedDir] = field(default_factory=dict)  # the moved tree's, by wd
    held: list[tuple[int, int, int, bytes]] = field(default_factory=list)


def _seen_by_scan(scanned: _Scanned, mask: int, name: bytes) -> bool:
    """Whether a kernel event is one the listing of a new directory already reported."""
    if mask & (IN_CREATE | IN_CLOSE_WRITE) and name in scanned.unclosed:
        # The writer's own close_write is still to come (or just came): do not fake one.
        del scanned.unclosed[name]
    return bool(mask & IN_CREATE)


class Notifier(pyinotify.ThreadedNotifier):  # type: ignore[misc]  # pyinotify has no types
    """Reads inotify records, keeps the watch table true, and hands events to the dispatcher."""

    def __init__(self, manager: WatchManager, ruleset: RuleSet, dispatcher: EventSink,
                 counters: Counters, on_link_change: Callable[[], None] = lambda: None) -> None:
        super().__init__(manager, default_proc_fun=pyinotify.ProcessEvent())
        self.name = "watchd-notifier"
        self.daemon = True
        self.table = WatchTable(manager, ruleset, on_link_change, report=self._report_found,
                                unmounted=self._tell_unmount)
        self.dispatcher = dispatcher
        self.counters = counters
        self._generation = 0
        self.turns = 0  # rounds of reading and handling what was read: see ``drained``
        self._reads = 0  # reads begun and ended: odd while one is under way
        self._scanned: dict[int, _Scanned] = {}
        self._moves: dict[int, _MoveOut] = {}
        self._read_at = self._previous_read_at = time.time_ns()
        # After an overflow: changes since then are owed a rescan (``_rescan_when_read``).
        self._rescan_since: int | None = None
        self._rescan_by = 0  # monotonic_ns after which the owed rescan waits no longer
        # The names kernel records told of since the last overflow, by watch: none of their
        # changes since is lost, and the rescan leaves them to the records (a name moved in,
        # or still being written, would else be told changed by its ctime or its size).
        self._told: set[tuple[int, bytes]] = set()
        self._unmounted: set[int] = set()
        self._opened: dict[bytes, int] = {}  # watchd's own opens whose open event was read
        self.arrivals = Arrivals(self.table.open_for_writing, self._read_more, self.table.by_wd)
        # What another thread lists (the main thread finding a root again) is settled by this
        # one's next read, and an idle notifier reads nothing: this wakes it (in pyinotify's
        # poll, beside the inotify descriptor and the stop pipe).
        self._wakeup = Wakeup()
        self._pollobj.register(self._wakeup.fd, select.POLLIN)

    @classmethod
    def watching(cls, ruleset: RuleSet, dispatcher: EventSink, counters: Counters,
                 on_link_change: Callable[[], None] = lambda: None) -> Notifier:
        """A notifier on an inotify instance of its own, every root of ``ruleset`` watched.

        Not started: events wait in the kernel's queue until ``start``.
        """
        notifier = cls(WatchManager(), ruleset, dispatcher, counters, on_link_change)
        with notifier.table.lock:
            notifier.table.apply(ruleset)
        return notifier

    def prepare(self, ruleset: RuleSet) -> Callable[[], None]:
        """Watching cannot fail (what cannot be watched is a logged degradation): the commit
        keeps the watches both rule sets share, and adds and drops the rest."""

        def commit() -> None:
            with self.table.lock:
                self.table.apply(ruleset)
        return commit

    def stats(self) -> dict[str, int]:
        return {"watches": len(self.table), "unwatched": self.table.refused_for_limit}

    # -- the thread ------------------------------------------------------------------------

    def drained(self, turn: int) -> bool:
        """Whether everything the kernel queued before ``turns`` was ``turn`` has been handled:
        a whole read, and its handling, began after it; or the notifier is at rest, nothing
        read waits to be handled and the kernel holds nothing (an idle notifier takes no
        turns: without this, a caller would wait for events that never come)."""
        if self.turns >= turn + 2 and self._rescan_since is None:
            return True
        with self.table.lock:  # no handling is under way meanwhile
            reads = self._reads
            if (reads % 2 or self._eventq or self._scanned or self._moves
                    or self._rescan_since is not None):
                return False
            return self._queued_bytes() == 0 and self._reads == reads  # none began meanwhile

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.loop()
            except Exception:
                self.counters.reader_errors += 1
                log(logging.ERROR, "event reader failed; carrying on", exc_info=True)
                self._stop_event.wait(0.1)

    def stop(self) -> None:
        super().stop()
        self._wakeup.close()

    def read_events(self) -> None:
        """Read every record queued now; names stay bytes."""
        if self._wakeup.pending:  # before the read: a wake after it makes another turn
            self._wakeup.drain()
        self._reads += 1
        try:
            self._read_queued()
        finally:
            self._reads += 1

    def _queued_bytes(self) -> int:
        size = array.array("i", [0])
        fcntl.ioctl(self._fd, termios.FIONREAD, size, True)
        return size[0]

    def _read_queued(self) -> None:
        size = self._queued_bytes()
        if size <= 0:
            return
        # Whatever an overflow loses happened after the previous read emptied the queue.
        self._previous_read_at, self._read_at = self._read_at, time.time_ns()
        data = os.read(self._fd, size)
        offset, end = 0, len(data)
        append = self._eventq.append
        unpack = _HEADER.unpack_from
        while offset < end:
            wd, mask, cookie, length = unpack(data, offset)
            offset += 16
            name = data[offset : offset + length].rstrip(b"\0") if length else b""
            offset += length
            append((wd, mask, cookie, name))

    def process_events(self) -> None:
        """Handle what was read; then settle new directories and moves against the backlog.

        The table's lock is taken for one round at a time: under a steady stream of renames
        there is always a move to settle, and a reload must still get its turn.
        """
        self.table.lock.let_waiting_first()
        with self.table.lock:
            self._translate_queued()
            self._rescan_when_read()
            self.turns += 1
        while (self._scanned or self._moves) and not self._stop_event.is_set():
            settled = self._generation
            self._generation += 1
            if self._moves:
                # The two halves of a rename are queued together, but a read can split them.
                select.select([self._fd], [], [], _MOVE_SETTLE_MS / 1000)
            self.table.lock.let_waiting_first()  # a reload, a catch-up, a poll
            with self.table.lock:
                self.read_events()
                self._translate_queued()
                self._rescan_when_read()
                self._settle(settled)

    def _read_more(self) -> None:
        """Wait a moment for what the kernel queues next, and read it (under the lock)."""
        select.select([self._fd], [], [], _MOVE_SETTLE_MS / 1000)
        self.read_events()

    def _translate_queued(self) -> None:
        queued = self._eventq
        while queued:
            record = queued.popleft()
            self.counters.inotify_records += 1
            try:
                self._translate(*record)
            except Exception:
                self.counters.reader_errors += 1
                log(logging.ERROR, "cannot handle an inotify event; skipped", exc_info=True,
                    wd=record[0], mask=hex(record[1]), name=record[3])

    # -- one record ------------------------------------------------------------------------

    def _translate(self, wd: int, mask: int, cookie: int, name: bytes) -> None:
        if mask & IN_Q_OVERFLOW:
            self._overflowed()
            return
        entry = self.table.by_wd.get(wd)
        if entry is None:
            self._after_unwatch(wd, mask)
            return
        if self._moves and self._held((wd, mask, cookie, name), entry):
            return
        if mask & (IN_IGNORED | IN_UNMOUNT):
            self._watch_ended(wd, mask, entry)
            return
        scanned = self._scanned.get(wd)
        if scanned is not None and name in scanned.names and _seen_by_scan(scanned, mask, name):
            return
        path = entry.path + b"/" + name if name else entry.path
        if name and self.table.links and mask & LINK_MASK:
            self.table.link_changed(path)
        # The kernel sends a watched directory's own delete_self and move_self without
        # IN_ISDIR; every watch is of a directory (IN_ONLYDIR), so they are about one.
        is_dir = bool(mask & IN_ISDIR) or (not name and bool(mask & _SELF_EVENTS))
        state = None
        if name and mask & _SNAPSHOT_EVENTS and entry.files is not None:
            if self._rescan_since is not None:
                self._told_while_owed(entry, entry.files, mask, name, is_dir)
            state = _state_after(mask, path, is_dir)
            self.table.remember(entry, name, state)
        if mask & (IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO) and not is_dir:
            self.arrivals.gone(path)
        elif mask & IN_CLOSE_WRITE and name and entry.scope.mask & IN_MOVED_TO:
            # The snapshot's lstat says which inode the name holds (past its limit, none is).
            self.arrivals.closed(path, state if entry.files is not None else UNSEEN)
        move = self._pair(mask, cookie, path, is_dir) if mask & _MOVES else None
        src_path = move.path if move is not None else b""
        if mask & IN_CREATE and name and not is_dir and entry.scope.mask & IN_MOVED_TO:
            old = self.arrivals.created(path, wd, name, self._eventq)
            if old is not None:  # a rename by link() and unlink(): an arrival
                mask, src_path = mask & ~IN_CREATE | IN_MOVED_TO, old
                if entry.files is not None:  # seen complete, as one moved in is
                    self.table.remember(entry, name, _state_after(mask, path, False))
        if self._news(mask, name, path) and mask & entry.scope.mask:
            event = FileEvent(path, event_name(mask), mask & ALL_EVENTS, is_dir, src_path,
                              state=state if mask & IN_CLOSE_WRITE else None)
            self._emit(entry, event)
        if name and mask & (IN_CREATE | IN_MOVED_TO):
            self._arrived(entry, name, path, is_dir, src_path)
            for record in move.held if move is not None else ():
                self._translate(*record)  # from inside it, now under its new path
        elif not name and mask & IN_MOVE_SELF and os.path.dirname(path) not in self.table.by_path:
            # A root directory itself was renamed away; its parent is not watched to say where.
            self.table.unwatch_tree(entry.path)

    def _watch_ended(self, wd: int, mask: int, entry: WatchedDir) -> None:
        """The kernel's word that a watch ended (IN_IGNORED) or that its file system went
        away (IN_UNMOUNT)."""
        if mask & IN_IGNORED:
            # After an unmount, what the mount covered is not new: it is watched, not reported.
            self.table.forget(wd, report=wd not in self._unmounted)
            self._unmounted.discard(wd)
            return
        log(logging.WARNING, "a watched file system was unmounted; watching what is there now",
            path=entry.path)
        self._tell_unmount(entry)

    def _pair(self, mask: int, cookie: int, path: bytes, is_dir: bool) -> _MoveOut | None:
        """Note a move's first half; for its second, the first (None if it was not seen).

        A directory's watches are noted with it, by descriptor: a new directory made at the
        old path meanwhile (rotation: ``mv d old; mkdir d``) is not the one that moved.
        """
        if mask & IN_MOVED_FROM:
            below = {e.wd: e for e in self.table.subtree(path)} if is_dir else {}
            self._moves[cookie] = _MoveOut(self._generation, path, below)
            return None
        return self._moves.pop(cookie, None)

    def _news(self, mask: int, name: bytes, path: bytes) -> bool:
        """Whether a record in a scope that asks for it is to be told: a directory's own
        events come twice (from it and from its parent), and the parent's is kept; watchd's
        own reads are never told."""
        if not (name or mask & _SELF_EVENTS or os.path.dirname(path) not in self.table.by_path):
            return False
        return not (mask & READ_MASK and self.table.own_reads and self._own_read(path, mask))

    def _own_read(self, path: bytes, mask: int) -> bool:
        """Whether an open, access or close_nowrite of ``path`` is one of watchd's own reads
        (listing a directory, looking at a file): from its open to its close."""
        expected = self.table.own_reads.get(path, 0)
        opened = self._opened.get(path, 0)
        if mask & IN_OPEN:
            if opened >= expected:
                return False
            self._opened[path] = opened + 1
            return True
        if not opened:
            return False
        if mask & IN_CLOSE_NOWRITE:
            if opened > 1:
                self._opened[path] = opened - 1
            else:
                del self._opened[path]
            self.table.read_back(path)
        return True

    def _held(self, record: tuple[int, int, int, bytes], entry: WatchedDir) -> bool:
        """Hold a record from inside a directory whose move out is not settled yet: it is
        told under the new path if the move stays in the tree, and never if it left."""
        for move in self._moves.values():
            if move.watches.get(record[0]) is entry:
                move.held.append(record)
                return True
        return False

    def _after_unwatch(self, wd: int, mask: int) -> None:
        """A record for a watch removed here: its unmount is still news (unless the mount
        table told it first); its end is the last."""
        entry = self.table.retired.get(wd)
        if entry is None:
            return
        if mask & IN_IGNORED:
            del self.table.retired[wd]
            self._unmounted.discard(wd)
        elif mask & IN_UNMOUNT:
            self._tell_unmount(entry)

    def _tell_unmount(self, entry: WatchedDir) -> None:
        """Tell a directory's unmount once, whether the kernel's IN_UNMOUNT (for a live
        watch or one removed here) or the mount table says it first."""
        if entry.wd in self._unmounted:
            return
        self._unmounted.add(entry.wd)
        if entry.scope.mask & IN_UNMOUNT:
            self._emit(entry, FileEvent(entry.path, "unmount", IN_UNMOUNT, True))

    def _arrived(self, entry: WatchedDir, name: bytes, path: bytes, is_dir: bool,
                 src_path: bytes) -> None:
        if entry.waiting:
            self.table.appeared(entry, name)
        if not is_dir:
            return
        if src_path and self.table.rename_tree(src_path, path):
            return
        scope = self.table.child_scope(entry, path)
        if scope is not EMPTY_SCOPE:
            for parent, found in self.table.walk(path, scope, new=True):
                self._report_found(parent, found)

    def _report_found(self, parent: WatchedDir, found: os.DirEntry[bytes],
                      by_rescan: bool = False) -> None:
        """An entry found by listing a directory that appeared, or by a rescan after an
        overflow: report it as new. A new directory's file may still be open for writing,
        and its writer's close_write is then the one to tell; after an overflow a later
        close_write is the file's next (docs/reliability.md), and no lease is asked for."""
        scanned = self._scanned.get(parent.wd)
        if scanned is None:
            scanned = self._scanned[parent.wd] = _Scanned(self._generation)
        # Found now, so its backlog is the next read's: an earlier listing's names wait too.
        scanned.generation = self._generation
        scanned.names.add(found.name)
        if threading.get_ident() != self.ident:
            self._wakeup.wake()
        if parent.files is not None and found.name not in parent.files:
            # Listed after its directory's snapshot was taken: the kernel's create for it is
            # this listing's to tell, and the next rescan would tell it again.
            self.table.remember(parent, found.name, state_of(found))
        is_dir = found.is_dir(follow_symlinks=False)
        self._emit(parent, FileEvent(found.path, "create", IN_CREATE, is_dir, synthetic=True))
        if found.is_file(follow_symlinks=False):
            scanned.unclosed[found.name] = not by_rescan

    def _settle(self, generation: int) -> None:
        """Everything up to ``generation`` has met the kernel's backlog: finish it."""
        for wd, scanned in list(self._scanned.items()):
            if scanned.generation > generation:
                continue
            del self._scanned[wd]
            entry = self.table.by_wd.get(wd)
            if entry is None:
                continue  # its watch ended meanwhile: what it held is the delete's to tell
            for name, leased in scanned.unclosed.items():
                path = entry.path + b"/" + name
                if leased and self.table.open_for_writing(path):
                    continue  # its writer's own close_write is still to come, and is told
                # Its state as reported: a later rescan reports it again only if it changed.
                state = _state_after(IN_CLOSE_WRITE, path, False)
                self.table.remember(entry, name, state)
                self._emit(entry, FileEvent(path, "close_write", IN_CLOSE_WRITE, False,
                                            synthetic=True, state=state))
        for cookie, move in list(self._moves.items()):
            if move.generation <= generation:
                del self._moves[cookie]
                if move.watches:
                    # Its held records are dropped; those that ended a watch still count.
                    ended = frozenset(wd for wd, mask, _, _ in move.held if mask & IN_IGNORED)
                    self.table.unwatch_entries(move.watches, ended)

    def _emit(self, entry: WatchedDir, event: FileEvent) -> None:
        self.counters.events += 1
        if event.synthetic:
            self.counters.found_by_scan += 1
        self.dispatcher.submit(event, entry.scope)

    # -- recovering from an overflow ----------------------------------------------------------

    def _overflowed(self) -> None:
        """The kernel dropped events: forget what they would have ended, and owe every watched
        directory a rescan (``_rescan_when_read``); overflows before it share it."""
        self.counters.overflows += 1
        self.table.retired.clear()  # their IN_IGNORED may be among what was lost
        self.table.own_reads.clear()  # and the closes of watchd's own reads
        self._opened.clear()
        self.arrivals.clear()
        log(logging.WARNING, "inotify queue overflowed: events were lost; rescanning every "
            "watched directory", message_id=MessageId.QUEUE_OVERFLOW,
            overflows=self.counters.overflows)
        self._told.clear()  # what was told before may have changed during the loss
        if self._rescan_since is None:
            self._rescan_since = self._previous_read_at - TIMESTAMP_MARGIN_NS
            self._rescan_by = time.monotonic_ns() + _RESCAN_WAIT_NS

    def _told_while_owed(self, entry: WatchedDir, files: DirState, mask: int, name: bytes,
                         is_dir: bool) -> None:
        """A record read while a rescan is owed, about a name it will leave to the records. A
        name the snapshot does not know, closed, deleted or moved away, had its create lost:
        it is told now, as the rescan would have told it had it not been left out."""
        self._told.add((entry.wd, name))
        if not mask & (IN_CREATE | IN_MOVED_TO) and name not in files:
            path = entry.path + b"/" + name
            self._emit(entry, FileEvent(path, "create", IN_CREATE, is_dir, synthetic=True))

    def _rescan_when_read(self) -> None:
        """Pay an owed rescan once the kernel's queue is read to the end (what is read before
        is told as read, and kept in the snapshot the rescan compares with), once it has
        waited ``_RESCAN_WAIT_NS``, or once ``_RESCAN_WAIT_NAMES`` were told meanwhile:
        compare every watched directory with its snapshot and report what changed, then
        watch again whatever is not watched."""
        since = self._rescan_since
        if since is None:
            return
        if (self._queued_bytes() and time.monotonic_ns() < self._rescan_by
                and len(self._told) < _RESCAN_WAIT_NAMES):
            return
        try:
            for entry in list(self.table.by_path.values()):
                if self.table.by_path.get(entry.path) is entry:
                    self._rescan(entry, since)
            for root in self.table.ruleset.roots:
                self.table.establish(root, report=False)
            if self.table.links:
                self.table.on_link_change()  # a swap of a symlink may be among the lost events
        finally:  # only now: ``drained`` is false until the rescan has told what it found
            self._rescan_since = None
            self._told.clear()

    def _rescan(self, entry: WatchedDir, since: int) -> None:
        """Compare one watched directory with its snapshot, and tell and note what changed."""
        found = self._found_now(entry)
        if found is None:
            self.table.unwatch_tree(entry.path)  # its own deletion may be among the lost events
            return
        listing, now = found
        # The differences first, all of them: telling one changes the snapshot they are from.
        # No moves are asked for: a rename among the lost events is told as delete and create.
        changes = diff(entry.files, now, since)
        by_name = {found.name: found for found in listing}
        told = self._told
        for change in changes:
            if (entry.wd, change.name) not in told:
                self._rescanned(entry, change, by_name)

    def _found_now(self, entry: WatchedDir,
                   ) -> tuple[list[os.DirEntry[bytes]], dict[bytes, Found]] | None:
        """A watched directory's listing, and what it holds now; None if it cannot be listed."""
        try:
            with looking_in(entry.path) as directory:
                listing = self.table.listing(entry.path)
                if listing is None:
                    return None
                return listing, found_in(listing, directory, entry.files)
        except OSError:
            return None  # not reached: gone, or no longer a directory

    def _rescanned(self, entry: WatchedDir, change: Change,
                   listing: dict[bytes, os.DirEntry[bytes]]) -> None:
        """One difference between a rescanned directory and its snapshot: tell it, note it."""
        if isinstance(change, Deleted):
            path = entry.path + b"/" + change.name
            self.table.remember(entry, change.name, None)
            self._emit(entry, FileEvent(path, "delete", IN_DELETE, change.is_dir, synthetic=True))
            if change.is_dir:
                self.table.unwatch_tree(path)
            return
        found = listing[change.name]
        if isinstance(change, Created):
            self._report_found(entry, found, by_rescan=True)  # which notes it in the snapshot
            if change.is_dir:
                self._arrived(entry, found.name, found.path, True, b"")
            return
        if isinstance(change, Changed):
            scanned = self._scanned.get(entry.wd)
            if scanned is not None and found.name in scanned.unclosed:
                return  # found by an earlier listing; its close_write is still to be reported
            self._emit(entry, FileEvent(found.path, "close_write", IN_CLOSE_WRITE, False,
                                        synthetic=True, state=change.state))
            self.table.remember(entry, found.name, change.state)


def _state_after(mask: int, path: bytes, is_dir: bool) -> FileState | None:
    """What an event says of its name, for the snapshot; None: the name is gone."""
    if mask & (IN_DELETE | IN_MOVED_FROM):
        return None
    if is_dir:
        return DIRECTORY
    if mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
        # The state the file was seen in (one moved in is complete): a later rescan reports
        # it only if it differs, not by its ctime, which the move made new.
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if mask & IN_MOVED_TO and not stat.S_ISREG(info.st_mode):
            return UNSEEN
        return file_state(info)
    return UNSEEN
