"""Degraded, never deaf: directories the inotify watch limit refused are polled, and watched
once watches are to be had.

The watch table notes each directory the kernel refused a watch for (ENOSPC: the limit,
``fs.inotify.max_user_watches``), with the scope it would have had; below it nothing is
watched either. Soon after a refusal its tree is listed, to know what is there: what was
changed since the refusal (by its ctime, less a margin for coarse timestamps) is told; for
a directory that appeared while the daemon ran, all it holds is, as a watched new
directory's would be; a directory still refused below a tree watched again is compared with
what that tree's last listing held of it. Then every ``settings.degraded_poll`` seconds each
such tree is first offered a watch again (the limit may have been raised, or watches freed
by a tree that went), then listed and compared with what was there
(``watchd.source.snapshot.compare``): each difference is told as the event inotify would
have told (``create``, and ``close_write`` for a regular file; ``close_write`` for a changed
one; ``delete``), marked found by scan. A file someone still has open for writing is told
closed by the first poll after its writer closed it. A tree watched again is compared one
last time, after its watches are in place, and left to inotify.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

from watchd.core.events import EVENT_BITS, FileEvent
from watchd.core.journal import MessageId
from watchd.core.logs import log
from watchd.core.rules import EMPTY_SCOPE, EventSink, RuleSet, Scope
from watchd.core.stats import Count, Counters
from watchd.source.mounts import at_or_below
from watchd.source.notifier import TIMESTAMP_MARGIN_NS
from watchd.source.snapshot import (
    DIRECTORY,
    UNSEEN,
    Changed,
    Created,
    Deleted,
    DirState,
    FileState,
    compare,
    looked_at,
    looking_in,
)
from watchd.source.table import WatchTable

LOOK_SOON = 1.0  # seconds: how soon a tree refused a watch is listed, to know what it holds
Tree = dict[bytes, DirState]  # each directory of a refused tree, with what it held


class DegradedPoll:
    def __init__(self, table: WatchTable, sink: EventSink, counters: Counters,
                 on_change: Callable[[], None]) -> None:
        self.table = table
        self.sink = sink
        self.counters = counters
        self.on_change = on_change  # what is watched changed: STATUS= says it
        self.interval = 60.0
        self._trees: dict[bytes, Tree] = {}  # each refused tree, as last listed
        self._next_poll = 0.0
        self._told = 0  # events told by the poll under way
        self._stopping = threading.Event()
        # Set at each refusal: with nothing refused the thread sleeps until one (an idle
        # daemon wakes for nothing).
        self._refusal = threading.Event()
        table.on_refused = self._refusal.set
        self._thread = threading.Thread(target=self._run, name="watchd-degraded-poll",
                                        daemon=True)

    def prepare(self, ruleset: RuleSet) -> Callable[[], None]:
        def commit() -> None:
            self.interval = ruleset.settings.degraded_poll
            self._next_poll = min(self._next_poll, time.monotonic() + self.interval)
        return commit

    def start(self) -> None:
        self._next_poll = time.monotonic() + self.interval
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stopping.set()
        self._refusal.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def stats(self) -> dict[str, int]:
        return {"degraded_polled": len(self._trees)}

    def _run(self) -> None:
        while True:
            if not self.table.refused and not self._trees:
                self._refusal.wait()
                self._refusal.clear()
            if self._stopping.wait(min(LOOK_SOON, self.interval)):
                return
            try:
                self._turn()
            except Exception:  # a bug must not end the polling: the trees would go deaf
                log(logging.ERROR, "degraded poll failed; trying again", exc_info=True)

    def _turn(self) -> None:
        with self.table.lock:
            refused = dict(self.table.refused)
            since, self.table.refused_since = self.table.refused_since, {}
        last, self._trees = self._trees, {}
        for path, scope in refused.items():
            self._trees[path] = (last[path] if path in last else
                                 self._first_listing(path, scope, last, since.get(path, 0)))
        if time.monotonic() < self._next_poll:
            return
        self._next_poll = time.monotonic() + self.interval
        watched_again = self._watch_again(refused)
        self._told = 0
        for path, scope in refused.items():
            before = self._trees[path]
            after = dict(self._listed(path, scope, before))
            self._tell_gone(before, after, scope)
            self._trees[path] = after
        if self._told:
            log(logging.INFO, "degraded poll: changes in directories the inotify watch limit "
                "left unwatched", message_id=MessageId.POLLED, events=self._told,
                unwatched=len(refused))
        for path in watched_again:
            del self._trees[path]
        if watched_again:
            self.on_change()

    def _watch_again(self, refused: dict[bytes, Scope]) -> list[bytes]:
        """Offer each refused tree a watch again; those watched now (their last comparison
        is still to be made)."""
        again = []
        with self.table.lock:
            for path, scope in refused.items():
                if self.table.refused.get(path) is not scope:
                    continue  # a reload, or the tree went
                del self.table.refused[path]
                for _ in self.table.walk(path, scope):
                    pass
                if path in self.table.by_path and not self._refused_below(path):
                    again.append(path)
            self.table.refusals_walked()
        if again:
            log(logging.INFO, f"watched again: {len(again)} director(y|ies) the inotify watch "
                "limit had refused", message_id=MessageId.WATCHED_AGAIN,
                unwatched=self.table.refused_for_limit)
        return again

    def _first_listing(self, top: bytes, scope: Scope, last: dict[bytes, Tree],
                       since_ns: int) -> Tree:
        """A tree newly refused, as listed now. Below a tree watched again in part, what its
        last listing held of it is compared with (the tree's records pass to it); else
        what changed since ``since_ns`` (its refusal, less a margin for coarse timestamps; 0
        for a directory that appeared while running) is told: what was there before is not
        news (the catch-up's to tell)."""
        handed = _records_below(last, top)
        if handed:
            return dict(self._listed(top, scope, handed))
        return dict(self._listed(top, scope, {}, max(since_ns - TIMESTAMP_MARGIN_NS, 0)))

    def _refused_below(self, path: bytes) -> bool:
        prefix = path + b"/"
        return any(other.startswith(prefix) for other in self.table.refused)

    def _listed(self, top: bytes, scope: Scope, before: Tree,
                since_ns: int = 0) -> Iterator[tuple[bytes, DirState]]:
        """Each directory of the tree at ``top`` with what it holds now, each difference from
        ``before`` told as an event; with ``since_ns``, a name new to it only if it is not a
        directory and its ctime is ``since_ns`` or later (else it is only recorded)."""
        stack = [(top, scope)]
        while stack:
            directory, here = stack.pop()
            try:
                with looking_in(directory) as descriptor, os.scandir(directory) as listing:
                    entries = list(listing)
                    changes = list(compare(before.get(directory, {}),
                                           looked_at(entries, descriptor)))
            except OSError:
                continue  # gone: the comparison of the tree tells what it held
            state: dict[bytes, tuple[int, int, int]] = dict(before.get(directory, {}))
            below = self.table.ruleset.scope(here.recursive) if here.recursive else EMPTY_SCOPE
            for change, found in changes:
                path = directory + b"/" + change.name
                if isinstance(change, Deleted):
                    state.pop(change.name, None)
                    self._tell(path, "delete", change.is_dir, here)
                    continue
                state[change.name] = found
                if since_ns and not _changed_since(path, found, since_ns):
                    continue
                if isinstance(change, Created):
                    self._tell(path, "create", found == DIRECTORY, here)
                if (found != DIRECTORY and isinstance(change, Created | Changed)
                        and not self._tell(path, "close_write", False, here)):
                    state[change.name] = UNSEEN  # still being written: looked at next time
            for entry in entries:
                if below is not EMPTY_SCOPE and entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, below))
            yield directory, state

    def _tell_gone(self, before: Tree, after: Tree, scope: Scope) -> None:
        """What a directory that went held: its names are deleted too (inotify would say)."""
        below = self.table.ruleset.scope(scope.recursive) if scope.recursive else EMPTY_SCOPE
        for directory in before.keys() - after.keys():
            for name, state in before[directory].items():
                self._tell(directory + b"/" + name, "delete", state == DIRECTORY, below)

    def _tell(self, path: bytes, event: str, is_dir: bool, scope: Scope) -> bool:
        """Tell the event; False for a close_write of a file someone still has open for
        writing (inotify would tell it at the close, which the next poll finds)."""
        if scope is EMPTY_SCOPE:
            return True
        with self.table.lock:  # matching runs one thread at a time
            if event == "close_write" and self.table.open_for_writing(path):
                return False
            self._told += 1
            self.counters.add(Count.POLLED)
            self.counters.events += 1
            self.counters.found_by_scan += 1
            self.sink.submit(FileEvent(path, event, EVENT_BITS[event], is_dir, synthetic=True),
                             scope)
        return True


def _records_below(trees: dict[bytes, Tree], top: bytes) -> Tree:
    """What the tree holding ``top`` last listed of it and below it (none: empty)."""
    for path, tree in trees.items():
        if top in tree and top.startswith(path + b"/"):
            return {directory: held for directory, held in tree.items()
                    if at_or_below(directory, top)}
    return {}


def _changed_since(path: bytes, found: FileState, since_ns: int) -> bool:
    """Whether an entry listed first is news: not a directory (its ctime is that of its
    names), and changed at ``since_ns`` or later."""
    if found == DIRECTORY:
        return False
    try:
        return os.lstat(path).st_ctime_ns >= since_ns
    except OSError:
        return False  # gone since the listing: what removed it is the next poll's to tell
