"""A new name that is a hard link to a complete file is an arrival, as a rename would be.

OpenSSH's sftp-server renames with ``link()`` then ``unlink()`` (the SFTP ``rename``), so
inotify reports ``create`` of the new name and ``delete`` of the old one, never
``moved_to``: a rule waiting for uploads to be renamed into place would never fire. The
kernel does not say whether a create was a link; the inode and the records around it do.
A new name is a link when its inode has another name still (more than one link), or was
made here under another name (each file made in a directory whose rules take ``moved_to``
is remembered by inode until that name goes), or its metadata changed after its last write
(a link and an unlink change the ctime, not the mtime; the kernel's clock may be too coarse
to show it), or the records after it delete a name just closed after writing (when the
daemon reads late, the old name may be gone before it could be looked at). Such a name is
told as ``moved_to`` unless the records read show it written under this name, or someone
holds it open for writing. Its ``src_path`` is the old name: the one it was made
under, or else a delete that follows close behind in the same directory (sftp-server
unlinks right after linking; when the records read so far do not hold one, what the kernel
queues next is read once, as the halves of a rename are waited for).
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable

from watchd.core.events import IN_CLOSE_WRITE, IN_DELETE, IN_ISDIR, IN_MODIFY

Record = tuple[int, int, int, bytes]  # wd, mask, cookie, name, as read
Inode = tuple[int, int]  # st_dev, st_ino
# How many of the records read after the create are looked at for the old name's delete,
# and for a write under the new name.
LOOK_AHEAD = 8
# Files made here (by inode) and names closed after writing: past these the oldest are
# forgotten (an upload renamed long after it began is then told by its inode's times alone).
MADE_REMEMBERED = 16384
CLOSED_REMEMBERED = 4096


class Arrivals:
    def __init__(self, open_for_writing: Callable[[bytes], bool],
                 read_more: Callable[[], object]) -> None:
        self.open_for_writing = open_for_writing
        self.read_more = read_more  # waits a moment for more records, and queues them
        self._made: dict[Inode, bytes] = {}  # each file made here, under the name it was made
        self._inodes: dict[bytes, Inode] = {}
        self._closed: dict[bytes, None] = {}  # names closed after writing, not gone since

    def created(self, path: bytes, wd: int, name: bytes, queued: deque[Record]) -> bytes | None:
        """For the create of a file's ``name`` in watch ``wd``: None if it is a file made
        here (remembered); else, a link to a complete file, the old name's path (``b""`` when
        it is not known)."""
        # The records read after it first: in a burst a file's write is right behind its
        # create, and such a file needs no look at all (this runs for every file made).
        old = _old_name(path, wd, name, queued)
        if old is None:
            return None
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        inode = (info.st_dev, info.st_ino)
        made_as = self._made.get(inode)
        relinked = (info.st_nlink > 1 or (made_as is not None and made_as != path)
                    or (info.st_ctime_ns > info.st_mtime_ns and info.st_size > 0)
                    or old in self._closed)
        if relinked and old == b"" and made_as is None and len(queued) < LOOK_AHEAD:
            self.read_more()
            old = _old_name(path, wd, name, queued)
        if not relinked or old is None or self.open_for_writing(path):
            self._remember(inode, path)
            return None
        return made_as or old

    def closed(self, path: bytes) -> None:
        """A name was closed after writing: complete, for now."""
        if len(self._closed) >= CLOSED_REMEMBERED:
            del self._closed[next(iter(self._closed))]
        self._closed[path] = None

    def gone(self, path: bytes) -> None:
        """A name was deleted or moved away: its inode may be given to another file."""
        self._closed.pop(path, None)
        inode = self._inodes.pop(path, None)
        if inode is not None and self._made.get(inode) == path:
            del self._made[inode]

    def clear(self) -> None:
        """After an overflow: what was deleted meanwhile is not known."""
        self._made.clear()
        self._inodes.clear()
        self._closed.clear()

    def _remember(self, inode: Inode, path: bytes) -> None:
        if len(self._made) >= MADE_REMEMBERED:
            oldest = next(iter(self._made))
            self._inodes.pop(self._made.pop(oldest), None)
        self._made[inode] = path
        self._inodes[path] = inode


def _old_name(path: bytes, wd: int, name: bytes, queued: deque[Record]) -> bytes | None:
    """The old name's path, as the records after the create show it (``b""``: not among
    them); None if they show the file written under its new name."""
    old = b""
    for index, (other_wd, mask, _, other) in enumerate(queued):
        if index >= LOOK_AHEAD:
            break
        if other_wd != wd:
            continue
        if other == name and mask & (IN_CLOSE_WRITE | IN_MODIFY):
            return None  # written under this name: a file made, not a link
        if not old and other != name and mask & IN_DELETE and not mask & IN_ISDIR:
            old = os.path.dirname(path) + b"/" + other
    return old
