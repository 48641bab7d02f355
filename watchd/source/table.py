"""The watch table: which directories are watched, for which roots, indexed both ways.

pyinotify keeps watches by descriptor only (finding one by path scans them all)
and adds them by ``str`` path (a name that is not UTF-8 cannot be watched). This
table keeps its own path → watch index, adds watches by ``bytes`` path on the
``WatchManager``'s inotify fd, never follows a symlink, and knows why each
directory is watched: the roots whose rules apply there (its ``Scope``) and the
roots that do not exist yet and wait for a name to appear in it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import signal
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

from watchd.core._pyinotify import pyinotify
from watchd.core.events import (
    IN_ACCESS,
    IN_CLOSE_NOWRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_DONT_FOLLOW,
    IN_EXCL_UNLINK,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_OPEN,
)
from watchd.core.journal import MessageId
from watchd.core.logs import log
from watchd.core.rules import EMPTY_SCOPE, Root, RuleSet, Scope
from watchd.security.trust import resolve_watched
from watchd.source.mounts import at_or_below
from watchd.source.snapshot import NO_FILES, DirState, FileState, listed
from watchd.source.tablelock import TableLock

_LEASE_BROKEN = signal.SIGURG  # ignored by default: a broken lease must not end the daemon

# What every watch needs to keep the table and its snapshot true, whatever its rules ask for.
STRUCTURE_MASK = (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF
                  | IN_MOVE_SELF)
WAITING_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
# What a directory holding a symlink that a root's path crosses is watched for: its change.
LINK_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF
FLAGS = IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK
# What watchd's own reads of a path make the kernel report: never told as events.
READ_MASK = IN_OPEN | IN_ACCESS | IN_CLOSE_NOWRITE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


class WatchManager(pyinotify.WatchManager):  # type: ignore[misc]  # pyinotify has no types
    """pyinotify's WatchManager, for its inotify fd, with watches added by bytes path."""

    def __init__(self) -> None:
        try:
            super().__init__()
        except OSError as error:
            # pyinotify words inotify_init's errno into the message only.
            if "EMFILE" not in str(error):
                raise
            raise OSError(errno.EMFILE, "no inotify instance left: fs.inotify.max_user_instances="
                          f"{_read_limit('max_user_instances')} is used up; raise it (sysctl -w "
                          "fs.inotify.max_user_instances=N, or a file in /etc/sysctl.d/)") from None
        flags = fcntl.fcntl(self.get_fd(), fcntl.F_GETFD)
        fcntl.fcntl(self.get_fd(), fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)

    def add(self, path: bytes, mask: int) -> int:
        wd: int = _libc.inotify_add_watch(self.get_fd(), path, mask | FLAGS)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return wd

    def remove(self, wd: int) -> None:
        # EINVAL: the kernel already dropped it (directory deleted); nothing to do.
        _libc.inotify_rm_watch(self.get_fd(), wd)


@dataclass(slots=True, eq=False)
class WatchedDir:
    path: bytes
    wd: int
    scope: Scope
    waiting: tuple[Root, ...] = ()
    # The snapshot: every name in the directory and what is known of it (its DirState, see
    # snapshot.py); None past the limit.
    files: DirState | None = None


class WatchTable:
    """All watches of the daemon. Every method must be called with ``lock`` held."""

    def __init__(self, manager: WatchManager, ruleset: RuleSet,
                 on_link_change: Callable[[], None] = lambda: None,
                 report: Callable[[WatchedDir, os.DirEntry[bytes]], None] = (
                     lambda parent, entry: None),
                 unmounted: Callable[[WatchedDir], None] = lambda entry: None) -> None:
        self.manager = manager
        self.ruleset = ruleset
        # Asked for when a symlink a root's path crosses may lead elsewhere now: the daemon
        # then resolves every root again (``RuleSet.reresolved``) and applies what changed.
        self.on_link_change = on_link_change
        # Names on roots' paths whose change can change where they lead (the symlinks they
        # cross, names others may replace; see trust.resolve_watched), with those roots.
        self.links: dict[bytes, tuple[Root, ...]] = {}
        self.link_dirs: set[bytes] = set()  # the directories those names are in
        self.lock = TableLock()
        self.by_wd: dict[int, WatchedDir] = {}
        self.by_path: dict[bytes, WatchedDir] = {}
        # Watches removed here, until the kernel's IN_IGNORED for them is read: records it
        # queued before (an IN_UNMOUNT, when a mount change made us drop the watch) still count.
        self.retired: dict[int, WatchedDir] = {}
        # Paths watchd itself opens for reading, with how many of its opens are still to be
        # read back: their open, access and close_nowrite are its own, not news.
        self.own_reads: dict[bytes, int] = {}
        self.attached: dict[bytes, tuple[Root, ...]] = {}  # parent dir -> roots that are files
        self._warned: set[bytes] = set()
        # Directories not watched for want of inotify watches, with the scope each would have
        # had: polled meanwhile, and watched once watches are to be had (watchd.source.degraded).
        self.refused: dict[bytes, Scope] = {}
        # Each refused since the degraded poll last took them, with the time (time_ns) from
        # which what it holds is news to its first listing: that of the refusal; 0 for one
        # that appeared while the daemon ran (all it holds is news, as a new directory's).
        self.refused_since: dict[bytes, int] = {}
        self.on_refused: Callable[[], None] = lambda: None  # told of each (never waits)
        # Whether the watch limit's ERROR was said since nothing was last refused: it is said
        # once while the limit lasts, not at each poll that offers a watch again.
        self._limit_told = False
        self.snapshot_size = 0  # names held by every directory's snapshot
        self._walked: set[int] | None = None  # during a rewatch: the descriptors its walk got
        self.snapshot_full = False
        # Called for each entry found in a directory that appeared while running.
        self.report = report
        # Called for a watched directory whose file system the mount table says went away.
        self.unmounted = unmounted

    def __len__(self) -> int:
        return len(self.by_wd)

    # -- what a directory is watched for ------------------------------------------------

    def scope_for(self, path: bytes) -> Scope:
        """The roots whose rules apply to events in directory ``path``, the deepest first."""
        roots_by_path = self.ruleset.roots_by_path
        found: list[Root] = []
        here = roots_by_path.get(path)
        if here is not None:
            found.append(here)
        found.extend(self.attached.get(path, ()))
        parent = path
        while parent != b"/":
            parent = os.path.dirname(parent)
            ancestor = roots_by_path.get(parent)
            if ancestor is not None and ancestor.recursive:
                found.append(ancestor)
        return self.ruleset.scope(tuple(found))

    def child_scope(self, parent: WatchedDir, path: bytes) -> Scope:
        """The scope of a new subdirectory: its parent's recursive roots and any rooted here."""
        here = self.ruleset.roots_by_path.get(path)
        # Roots that are files in it: a walk that reaches it after them must keep them.
        files = self.attached.get(path, ())
        if not parent.scope.recursive and here is None and not files:
            return EMPTY_SCOPE
        roots = ((here,) if here is not None else ()) + files + parent.scope.recursive
        return self.ruleset.scope(roots)

    # -- adding and removing ---------------------------------------------------------------

    def watch(self, path: bytes, scope: Scope, waiting: tuple[Root, ...] = ()) -> WatchedDir | None:
        """Watch directory ``path`` (or update its watch); None if it cannot be watched.

        The kernel is asked even for a path already in the table: its answer (the same
        watch descriptor, or a new one) says whether the directory there is still the
        one that was watched.
        """
        entry = self.by_path.get(path)
        mask = _mask(scope, waiting or (entry.waiting if entry else ()), path in self.link_dirs)
        try:
            wd = self.manager.add(path, mask)
        except OSError as error:
            self._refused(path, scope, error)
            return None
        if entry is None:
            entry = WatchedDir(path, wd, scope)
        elif entry.wd != wd and self.by_wd.get(entry.wd) is entry:
            # A new directory at a watched path. The old one is deleted (the kernel drops its
            # watch) or covered by a mount (nothing can reach it): its watch goes either way.
            del self.by_wd[entry.wd]
            self.manager.remove(entry.wd)
            self._retire(entry)
        stale = self.by_wd.get(wd)
        if stale is not None and stale is not entry:
            # Same inode under another path: the old path was renamed without our seeing it.
            self.by_path.pop(stale.path, None)
        entry.wd, entry.scope = wd, scope
        entry.waiting = waiting or entry.waiting
        if self._walked is not None:
            self._walked.add(wd)
        self.by_wd[wd] = entry
        self.by_path[path] = entry
        return entry

    def unwatch(self, entry: WatchedDir, in_kernel: bool = True, retire: bool = True,
                ) -> list[Root]:
        """Stop watching one directory; the roots that must be looked for again.

        ``in_kernel``: remove the watch (else the kernel ends it); ``retire``: its records
        still queued are read (not when the kernel's last one, IN_IGNORED, was)."""
        if self.by_wd.get(entry.wd) is entry:
            del self.by_wd[entry.wd]
            if in_kernel:
                self.manager.remove(entry.wd)
            if retire:
                self._retire(entry)
        if self.by_path.get(entry.path) is entry:
            del self.by_path[entry.path]
        if entry.files is not None:
            self.snapshot_size -= len(entry.files)
            entry.files = None
        lost = [root for root in entry.scope.roots if root.path == entry.path]
        lost.extend(self.attached.pop(entry.path, ()))
        lost.extend(entry.waiting)
        return lost

    def _retire(self, entry: WatchedDir) -> None:
        # A copy, as it was: the entry itself may be watched again under a new descriptor.
        self.retired[entry.wd] = WatchedDir(entry.path, entry.wd, entry.scope)

    def forget(self, wd: int, report: bool = True) -> None:
        """The kernel dropped watch ``wd`` (its directory is gone): look for its roots again."""
        entry = self.by_wd.get(wd)
        if entry is not None:
            for root in self.unwatch(entry, in_kernel=False, retire=False):
                self.establish(root, report)
            self._keep_link_dirs()

    def rewatch(self, root: Root, unmounted: frozenset[bytes] = frozenset()) -> None:
        """Walk a root afresh: a mount came or went under it, or a name on its path changed.

        The directories the walk finds as they were watched keep their watches (the kernel
        gives their descriptors back), and with them what they were told and have still to
        tell; the rest are dropped. Dropped and watched again, a directory would lose its
        events in between, and the close_write still owed for a file a listing found.
        A directory on a file system that was ``unmounted`` is told as unmounted here: the
        kernel may not have queued its IN_UNMOUNT yet, and once its watch is removed it never
        will.
        """
        before = self.subtree(root.path)
        for entry in before:
            if any(at_or_below(entry.path, point) for point in unmounted):
                self.unmounted(entry)
        self._walked = set()
        try:
            self.establish(root, report=False)
            self._watch_link_dirs_below(root.path)
        finally:
            walked, self._walked = self._walked, None
        lost: set[Root] = set()
        for entry in before:
            if entry.wd not in walked:
                lost.update(self.unwatch(entry))
        for each in lost - {root}:
            self.establish(each, report=False)

    def _watch_link_dirs_below(self, path: bytes) -> None:
        """Ask again for the watches of the directories of such names below ``path``: a walk
        of it does not reach them when it is not recursive, and they must not go with what
        the walk left over (a swap of the name would go unheard)."""
        for parent in self.link_dirs:
            known = self.by_path.get(parent)
            if known is not None and at_or_below(parent, path):
                self.watch(parent, known.scope)

    def subtree(self, path: bytes) -> list[WatchedDir]:
        prefix = path + b"/"
        return [e for p, e in self.by_path.items() if p == path or p.startswith(prefix)]

    def unwatch_tree(self, path: bytes) -> None:
        """Stop watching ``path`` and everything below it (it left the watched tree)."""
        self.unwatch_entries({entry.wd: entry for entry in self.subtree(path)})

    def unwatch_entries(self, watches: dict[int, WatchedDir],
                        ended: frozenset[int] = frozenset()) -> None:
        """Stop these watches, by descriptor (a directory made since at one of their paths
        has a watch of its own, which stays); ``ended``: those whose IN_IGNORED, their last
        record, was already read."""
        lost: list[Root] = []
        for wd, entry in watches.items():
            if entry.wd == wd and self.by_wd.get(wd) is entry:
                gone = wd in ended
                lost.extend(self.unwatch(entry, in_kernel=not gone, retire=not gone))
        for root in lost:
            self.establish(root)
        self._keep_link_dirs()

    def rename_tree(self, old: bytes, new: bytes) -> bool:
        """A watched directory was renamed within watched space; False if it was not watched."""
        moved = self.subtree(old)
        if not moved:
            return False
        lost: list[Root] = []
        for entry in sorted(moved, key=lambda e: len(e.path)):
            del self.by_path[entry.path]
            lost.extend(r for r in entry.scope.roots if r.path == entry.path)
            lost.extend(entry.waiting)
            entry.waiting = ()
            entry.path = new + entry.path[len(old) :]
        for entry in moved:
            self.by_path[entry.path] = entry
        for entry in moved:
            scope = self.scope_for(entry.path)
            if scope is EMPTY_SCOPE and entry.path not in self.link_dirs:
                self.unwatch(entry)
            else:
                self.watch(entry.path, scope)
        for root in lost:
            self.establish(root)
        return True

    # -- roots -------------------------------------------------------------------------

    def establish(self, root: Root, report: bool = True) -> None:
        """Watch a root as it is now: a directory tree, a file (via its directory), or missing.

        With ``report``, what is found in a root directory is reported: it appeared
        while the daemon ran, so its contents are new. A root behind an untrusted symlink
        is not followed: only the symlink's directory is watched, for the day it changes.
        """
        for link in root.links:
            self._watch_link(link, root)
        if root.untrusted is not None or self._leads_elsewhere(root):
            return
        try:
            mode = os.lstat(root.path).st_mode
        except OSError:
            self._wait_for(root)
            return
        if stat.S_ISDIR(mode):
            for directory, found in self.walk(root.path, self.scope_for(root.path), report,
                                              new=report):
                if report:
                    self.report(directory, found)
            return
        parent = os.path.dirname(root.path)
        if root not in self.attached.get(parent, ()):
            self.attached[parent] = (*self.attached.get(parent, ()), root)
        if self.watch(parent, self.scope_for(parent)) is None:
            self._wait_for(root)

    def _leads_elsewhere(self, root: Root) -> bool:
        """Whether a symlink appeared on the root's path since it was resolved (where a name
        was missing, or in place of a directory): then nothing is followed, and the daemon
        is asked to resolve the roots again."""
        now = resolve_watched(os.fsdecode(root.path))
        for link in now.links:
            self._watch_link(os.fsencode(link), root)
        if os.fsencode(now.path) == root.path and now.untrusted is None:
            return False
        self.on_link_change()
        return True

    def _watch_link(self, link: bytes, root: Root) -> None:
        """Watch the directory ``link`` is in, for that name's changes."""
        parent = os.path.dirname(link)
        roots = self.links.get(link, ())
        if root not in roots:
            self.links[link] = (*roots, root)
        known = self.by_path.get(parent)
        if parent not in self.link_dirs or known is None:
            self.link_dirs.add(parent)
            self.watch(parent, known.scope if known else self.scope_for(parent))

    def link_changed(self, path: bytes) -> None:
        """A name changed in a directory holding such names; if it is one, the roots it
        leads to are watched afresh, and the daemon resolves every root again."""
        roots = self.links.get(path)
        if roots is None:
            return
        for root in roots:
            self.rewatch(root)
        self.on_link_change()

    def _keep_link_dirs(self) -> None:
        """Watch again the directories of such names that an unwatch took away."""
        for link, roots in list(self.links.items()):
            if os.path.dirname(link) not in self.by_path:
                self._watch_link(link, roots[0])

    def _wait_for(self, root: Root) -> None:
        """Watch the nearest existing ancestor of a missing root for the next name to appear."""
        ancestor = root.path
        while ancestor != b"/":
            ancestor = os.path.dirname(ancestor)
            if not _is_dir(ancestor):
                continue
            known = self.by_path.get(ancestor)
            waiting = (*(known.waiting if known else ()), root)
            scope = known.scope if known else self.scope_for(ancestor)
            entry = self.watch(ancestor, scope, waiting)
            if entry is not None:
                # The next name may have appeared before the watch did: look once more.
                name = root.path[len(ancestor.rstrip(b"/")) + 1 :].split(b"/", 1)[0]
                child = ancestor.rstrip(b"/") + b"/" + name
                if (child == root.path and os.path.lexists(child)) or _is_dir(child):
                    self.appeared(entry, name)
                return
        log(logging.ERROR, "cannot watch for a missing path", path=root.path)

    def appeared(self, entry: WatchedDir, name: bytes) -> None:
        """A name appeared in a directory that missing roots wait in: are they here now?"""
        path = entry.path.rstrip(b"/") + b"/" + name
        arrived = [r for r in entry.waiting if r.path == path or r.path.startswith(path + b"/")]
        if not arrived:
            return
        entry.waiting = tuple(r for r in entry.waiting if r not in arrived)
        if not entry.waiting and entry.scope is EMPTY_SCOPE and entry.path not in self.link_dirs:
            self.unwatch(entry)
        elif not entry.waiting:
            self.watch(entry.path, entry.scope)
        for root in arrived:
            self.establish(root)

    def apply(self, ruleset: RuleSet, arrived: frozenset[bytes] = frozenset()) -> None:
        """Switch to a new rule set: keep the watches both share, add and drop the rest.

        If the watch limit left directories unwatched, every root is walked again: the
        limit may have been raised since. What is in the roots at ``arrived`` came while
        the daemon ran, and is reported.
        """
        degraded = bool(self.refused)
        self.refused.clear()
        in_place = set() if degraded else {
            root.path
            for root in self.ruleset.roots
            if root.path in self.by_path and _same_reach(root, ruleset.roots_by_path.get(root.path))
        }
        self.ruleset = ruleset
        self.links = {}
        for root in ruleset.roots:
            for link in root.links:
                self.links[link] = (*self.links.get(link, ()), root)
        self.link_dirs = {os.path.dirname(link) for link in self.links}
        new_paths = set(ruleset.roots_by_path)
        self.attached = {
            parent: kept
            for parent, roots in self.attached.items()
            if (kept := tuple(ruleset.roots_by_path[r.path] for r in roots if r.path in new_paths))
        }
        for entry in list(self.by_wd.values()):
            entry.waiting = ()
            scope = self.scope_for(entry.path)
            if scope is EMPTY_SCOPE and entry.path not in self.link_dirs:
                self.unwatch(entry)
            else:
                self.watch(entry.path, scope)
        for root in ruleset.roots:
            if root.path not in in_place:
                self.establish(root, report=root.path in arrived)
        self._keep_link_dirs()  # of roots kept in place, whose links may be new
        self.refusals_walked()

    def refusals_walked(self) -> None:
        """Every refused directory was offered a watch again: if none is refused now, the
        watch limit's ERROR is said again at the next refusal."""
        if not self.refused:
            self._limit_told = False

    # -- walking ---------------------------------------------------------------------------

    def walk(
        self, top: bytes, scope: Scope, every_entry: bool = False, new: bool = False
    ) -> Iterator[tuple[WatchedDir, os.DirEntry[bytes]]]:
        """Watch ``top`` and, where its scope is recursive, every directory below it.

        Each directory is watched before it is listed, so nothing created in it is
        missed; each entry found is yielded with the watched directory it is in
        (with ``every_entry``, also the entries of directories not recursed into).
        Symlinks are never followed. ``new``: the tree appeared while the daemon ran.
        """
        first = self._watch_walked(top, scope, new)
        pending = [first] if first is not None else []
        while pending:
            parent = pending.pop()
            listing = self.listing(parent.path) or []
            self._take_snapshot(parent, listing)
            if not (every_entry or parent.scope.recursive):
                continue
            for entry in listing:
                if entry.is_dir(follow_symlinks=False):
                    child_scope = self.child_scope(parent, entry.path)
                    if child_scope is not EMPTY_SCOPE:
                        child = self._watch_walked(entry.path, child_scope, new)
                        if child is not None:
                            pending.append(child)
                yield parent, entry

    def _watch_walked(self, path: bytes, scope: Scope, new: bool) -> WatchedDir | None:
        watched = self.watch(path, scope)
        if watched is None and new and path in self.refused:
            self.refused_since[path] = 0  # what it holds appeared while running: it is news
        return watched

    def reading(self, path: bytes) -> None:
        """watchd is about to open ``path`` (a directory to list, a file to look at): what
        the kernel reports of that open is its own. Only noted where a rule asks for such
        events, so that nothing is expected that will not come."""
        parent = self.by_path.get(os.path.dirname(path))
        teller = parent if parent is not None else self.by_path.get(path)
        if teller is not None and teller.scope.mask & READ_MASK:
            self.own_reads[path] = self.own_reads.get(path, 0) + 1

    def open_for_writing(self, path: bytes) -> bool:
        """Whether someone still has the regular file at ``path`` open for writing.

        A read lease is granted only while nobody does (fcntl(2), F_SETLEASE): asked for on
        a read-only, non-blocking descriptor and released at once; nothing is read. The file
        is first reached with O_PATH, which opens nothing, and opened only once that shows a
        regular file: a directory above it swapped for a symlink to /dev cannot make root
        open a device. A writer that breaks the lease meanwhile makes the kernel signal the
        holder, with SIGIO by default, whose default ends the process: the lease asks for
        ``_LEASE_BROKEN`` instead, which is ignored unless handled. Where a lease cannot be had
        (another's file for a daemon that is not root, a file system without leases) the
        answer is no.
        """
        try:
            handle = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                return False
            self.reading(path)
            try:
                fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                self.read_back(path)  # not opened: no events of it will come
                return False
        finally:
            os.close(handle)
        try:
            fcntl.fcntl(fd, fcntl.F_SETSIG, _LEASE_BROKEN)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as error:
            return error.errno == errno.EAGAIN
        else:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            return False
        finally:
            os.close(fd)

    def read_back(self, path: bytes) -> None:
        """One of watchd's own opens of ``path`` is over (its close was read, or it failed)."""
        left = self.own_reads.get(path, 0) - 1
        if left > 0:
            self.own_reads[path] = left
        else:
            self.own_reads.pop(path, None)

    def listing(self, path: bytes) -> list[os.DirEntry[bytes]] | None:
        """The entries of a directory; None if it cannot be listed (gone, or refused)."""
        self.reading(path)
        try:
            with os.scandir(path) as entries:
                return list(entries)
        except OSError as error:
            self.read_back(path)  # not opened: none of its events will come
            self._refused(path, None, error)
            return None

    # -- the snapshot, for recovering from an overflow ---------------------------------------

    def _take_snapshot(self, entry: WatchedDir, listing: list[os.DirEntry[bytes]]) -> None:
        if entry.files is not None:
            return
        if self.snapshot_size + len(listing) > self.ruleset.settings.snapshot_limit:
            self._snapshot_full(entry.path)
            return
        entry.files = listed(listing)
        self.snapshot_size += len(listing)

    def remember(self, entry: WatchedDir, name: bytes, state: FileState | None) -> None:
        """Note a name's state in its directory's snapshot (None: the name is gone)."""
        if entry.files is None:
            return
        if entry.files is NO_FILES:
            if state is None:
                return
            entry.files = {}
        files = cast(dict[bytes, FileState], entry.files)
        if state is None:
            self.snapshot_size -= files.pop(name, None) is not None
            return
        if name not in files:
            if self.snapshot_size >= self.ruleset.settings.snapshot_limit:
                self.snapshot_size -= len(files)
                entry.files = None
                self._snapshot_full(entry.path)
                return
            self.snapshot_size += 1
        files[name] = state

    def _snapshot_full(self, path: bytes) -> None:
        if not self.snapshot_full:
            self.snapshot_full = True
            log(logging.WARNING, "snapshot limit reached: after an inotify queue overflow, files "
                "deleted meanwhile in directories past the limit are not reported (raise "
                "settings.snapshot_limit)", path=path, limit=self.ruleset.settings.snapshot_limit)

    @property
    def refused_for_limit(self) -> int:
        return len(self.refused)

    def _refused(self, path: bytes, scope: Scope | None, error: OSError) -> None:
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return  # gone already: its parent's events tell the rest
        if error.errno == errno.ENOSPC and scope is not None:
            self.refused[path] = scope
            self.refused_since.setdefault(path, time.time_ns())
            self.on_refused()
            if not self._limit_told:
                self._limit_told = True
                log(logging.ERROR, "inotify watch limit reached: raise fs.inotify.max_user_watches "
                    "(sysctl -w fs.inotify.max_user_watches=N); some directories are not watched",
                    message_id=MessageId.WATCH_LIMIT, path=path,
                    limit=_read_limit("max_user_watches"))
        elif path not in self._warned:
            self._warned.add(path)
            log(logging.WARNING, f"cannot watch: {error.strerror}", path=path)


def _is_dir(path: bytes) -> bool:
    """Whether ``path`` is a directory itself, not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _mask(scope: Scope, waiting: tuple[Root, ...], holds_links: bool) -> int:
    mask = scope.mask | STRUCTURE_MASK if scope is not EMPTY_SCOPE else 0
    if mask & READ_MASK:
        # Where a rule asks for any of them, watchd's own reads must be seen whole (open to
        # close) to be told apart from others'.
        mask |= IN_OPEN | IN_CLOSE_NOWRITE
    return mask | (WAITING_MASK if waiting else 0) | (LINK_MASK if holds_links else 0)


def _same_reach(old: Root, new: Root | None) -> bool:
    """Whether a root watched under the old rules needs the same watches under the new.

    A root holds only enabled rules, each with at least one event, so only its reach
    (the directory alone, or the whole tree) decides which directories it needs.
    """
    return new is not None and new.recursive == old.recursive


def _read_limit(name: str) -> str:
    try:
        with open(f"/proc/sys/fs/inotify/{name}") as limit:
            return limit.read().strip()
    except OSError:
        return "?"
