"""A new name that is a hard link to a complete file is an arrival, as a rename would be.

OpenSSH's sftp-server renames with ``link()`` then ``unlink()`` (the SFTP ``rename``), and so
does a maildir delivery (``tmp/`` to ``new/``): inotify reports ``create`` of the new name and
``delete`` of the old one, never ``moved_to``, and a rule waiting for files to be renamed into
place would never fire. The kernel does not say whether a create was a link; the inode and
the records around it do. A new name is a link when its inode was last closed after writing
under another watched name and is as it was then (each close_write notes the inode its name
holds, as the snapshot's lstat saw it), or has another name still (more than one link), or its
metadata changed after its last write (a link and an unlink change the ctime, not the mtime;
the kernel's clock may be too coarse to show it), or the records after it delete a name just
closed after writing (when the daemon reads late, the old name may be gone before it could be
looked at). Such a name is told as ``moved_to`` unless the records read show it written under
this name, or someone holds it open for writing. Its ``src_path`` is the old name: the one
its inode was closed under, or else a delete that follows close behind, in any watched
directory (the unlink comes right after the link; when the records read so far do not hold
one, what the kernel queues next is read once, as the halves of a rename are waited for).
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from watchd.core.events import IN_CLOSE_WRITE, IN_DELETE, IN_ISDIR, IN_MODIFY
from watchd.source.snapshot import FileState, file_state
from watchd.source.table import WatchedDir

Record = tuple[int, int, int, bytes]  # wd, mask, cookie, name, as read
# How many of the records read after the create are looked at for the old name's delete,
# and for a write under the new name.
LOOK_AHEAD = 8
# Names closed after writing, and the inodes they held then: past twice this many the oldest
# are forgotten (a file linked long after it was written is then told by its inode alone).
CLOSED_REMEMBERED = 4096

Key = TypeVar("Key")
Value = TypeVar("Value")


class Recent(Generic[Key, Value]):
    """What was noted lately: at most twice ``size`` entries, in two generations; when the
    newer is full it becomes the older, and the older is forgotten. O(1) a note: a dict that
    drops its oldest entry at each note scans the slots its deletions left, microseconds a
    note, and every file of a burst is closed."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._newer: dict[Key, Value] = {}
        self._older: dict[Key, Value] = {}

    def __contains__(self, key: Key) -> bool:
        return key in self._newer or key in self._older

    def get(self, key: Key) -> Value | None:
        return self._newer[key] if key in self._newer else self._older.get(key)

    def note(self, key: Key, value: Value) -> None:
        if len(self._newer) >= self._size:
            self._older, self._newer = self._newer, {}
        self._newer[key] = value

    def pop(self, key: Key) -> None:
        self._newer.pop(key, None)
        self._older.pop(key, None)

    def clear(self) -> None:
        self._newer.clear()
        self._older.clear()


class Arrivals:
    def __init__(self, open_for_writing: Callable[[bytes], bool],
                 read_more: Callable[[], object], watches: Mapping[int, WatchedDir]) -> None:
        self.open_for_writing = open_for_writing
        self.read_more = read_more  # waits a moment for more records, and queues them
        self.watches = watches  # by descriptor: where a delete read after a create was
        # Names closed after writing, not gone since, with the state lstat saw at the close
        # (UNSEEN: not looked at; None: gone already), and by inode the name last closed.
        self._closed: Recent[bytes, FileState | None] = Recent(CLOSED_REMEMBERED)
        self._closed_as: Recent[int, bytes] = Recent(CLOSED_REMEMBERED)
        # The last name found gone at its close whose delete is still to be read: a create
        # read before that delete may be its link, and the delete is waited for.
        self._vanished = b""

    def created(self, path: bytes, wd: int, name: bytes, queued: deque[Record]) -> bytes | None:
        """For the create of a file's ``name`` in watch ``wd``: None if it is a file made
        here; else, a link to a complete file, the old name's path (``b""`` when it is not
        known)."""
        # The records read after it first: in a burst a file's write is right behind its
        # create, and such a file needs no look at all (this runs for every file made).
        old = self._old_name(path, wd, name, queued)
        if old is None:
            return None
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        closed_as = self._closed_under_another_name(path, info)
        looks_linked = info.st_nlink > 1 or (info.st_ctime_ns > info.st_mtime_ns
                                             and info.st_size > 0)
        if (not old and closed_as is None and (looks_linked or self._vanished)
                and len(queued) < LOOK_AHEAD):
            self.read_more()
            self._vanished = b""  # waited for once: its delete may never come (a tree moved out)
            old = self._old_name(path, wd, name, queued)
        if old is None or not (closed_as is not None or looks_linked or old in self._closed):
            return None
        return None if self.open_for_writing(path) else closed_as or old

    def closed(self, path: bytes, state: FileState | None) -> None:
        """A name was closed after writing: complete, for now. ``state``: as lstat saw it
        then (``UNSEEN``: not looked at; None: the name was gone already)."""
        self._closed.note(path, state)
        if state is None:
            self._vanished = path
        elif state[1] >= 0:  # looked at (a marker's size is negative)
            self._closed_as.note(state[0], path)

    def gone(self, path: bytes) -> None:
        """A name was deleted, moved away or replaced: what it held is not there now."""
        self._closed.pop(path)
        if self._vanished == path:
            self._vanished = b""

    def clear(self) -> None:
        """After an overflow: what was deleted meanwhile is not known."""
        self._closed.clear()
        self._closed_as.clear()
        self._vanished = b""

    def _closed_under_another_name(self, path: bytes, info: os.stat_result) -> bytes | None:
        """The name the file at ``path`` was last closed under, if another and the file is
        as it was then (a reused inode holds another size or mtime, and its name is gone)."""
        other = self._closed_as.get(info.st_ino)
        if other is None or other == path or self._closed.get(other) != file_state(info):
            return None
        return other

    def _old_name(self, path: bytes, wd: int, name: bytes, queued: deque[Record]) -> bytes | None:
        """The old name's path, as the records after the create show it: the first delete of
        a name closed after writing, or else the first delete (``b""``: none among them);
        None if they show the file written under its new name."""
        old = b""
        for index, (other_wd, mask, _, other) in enumerate(queued):
            if index >= LOOK_AHEAD:
                break
            if other_wd == wd and other == name:
                if mask & (IN_CLOSE_WRITE | IN_MODIFY):
                    return None  # written under this name: a file made, not a link
                continue
            if not mask & IN_DELETE or mask & IN_ISDIR:
                continue
            directory = self.watches.get(other_wd)
            if directory is None:
                continue
            deleted = directory.path + b"/" + other
            if not old or (old not in self._closed and deleted in self._closed):
                old = deleted
        return old
