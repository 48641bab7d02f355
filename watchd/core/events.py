"""watchd's own event objects and the vocabulary of event names.

The notifier turns each raw inotify record into a ``FileEvent``; everything
downstream (matching, actions, logs) sees only these.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from watchd.core._pyinotify import pyinotify

IN_ACCESS: int = pyinotify.IN_ACCESS
IN_MODIFY: int = pyinotify.IN_MODIFY
IN_ATTRIB: int = pyinotify.IN_ATTRIB
IN_CLOSE_WRITE: int = pyinotify.IN_CLOSE_WRITE
IN_CLOSE_NOWRITE: int = pyinotify.IN_CLOSE_NOWRITE
IN_OPEN: int = pyinotify.IN_OPEN
IN_MOVED_FROM: int = pyinotify.IN_MOVED_FROM
IN_MOVED_TO: int = pyinotify.IN_MOVED_TO
IN_CREATE: int = pyinotify.IN_CREATE
IN_DELETE: int = pyinotify.IN_DELETE
IN_DELETE_SELF: int = pyinotify.IN_DELETE_SELF
IN_MOVE_SELF: int = pyinotify.IN_MOVE_SELF
IN_UNMOUNT: int = pyinotify.IN_UNMOUNT
IN_Q_OVERFLOW: int = pyinotify.IN_Q_OVERFLOW
IN_IGNORED: int = pyinotify.IN_IGNORED
IN_ISDIR: int = pyinotify.IN_ISDIR
IN_ONLYDIR: int = pyinotify.IN_ONLYDIR
IN_DONT_FOLLOW: int = pyinotify.IN_DONT_FOLLOW
IN_EXCL_UNLINK: int = pyinotify.IN_EXCL_UNLINK

# One name per inotify bit: what a rule's ``events`` says and what an action receives.
EVENT_BITS: dict[str, int] = {
    "access": IN_ACCESS,
    "modify": IN_MODIFY,
    "attrib": IN_ATTRIB,
    "close_write": IN_CLOSE_WRITE,
    "close_nowrite": IN_CLOSE_NOWRITE,
    "open": IN_OPEN,
    "moved_from": IN_MOVED_FROM,
    "moved_to": IN_MOVED_TO,
    "create": IN_CREATE,
    "delete": IN_DELETE,
    "delete_self": IN_DELETE_SELF,
    "move_self": IN_MOVE_SELF,
    "unmount": IN_UNMOUNT,
}
ALL_EVENTS: int = 0
for _bit in EVENT_BITS.values():
    ALL_EVENTS |= _bit

# Names a rule may use that stand for several bits.
EVENT_GROUPS: dict[str, int] = {
    "close": IN_CLOSE_WRITE | IN_CLOSE_NOWRITE,
    "move": IN_MOVED_FROM | IN_MOVED_TO,
    "all": ALL_EVENTS,
    "all_events": ALL_EVENTS,
}

EVENT_NAMES_BY_BIT: dict[int, str] = {bit: name for name, bit in EVENT_BITS.items()}
EVENT_NAMES: tuple[str, ...] = (*EVENT_BITS, "close", "move", "all")


# What a rule's ``kind`` may name: what the path an event is about is, as ``lstat`` sees it.
FILE, DIR, SYMLINK, SPECIAL = "file", "dir", "symlink", "special"
KINDS: tuple[str, ...] = (FILE, DIR, SYMLINK, SPECIAL)
_SPECIAL_NAMES = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                  (stat.S_ISBLK, "block device"), (stat.S_ISCHR, "character device"))


def kind_of(mode: int) -> str:
    """The kind of a file by its ``st_mode``: file (regular only), dir, symlink or special."""
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    return SPECIAL


def describe_mode(mode: int) -> str:
    """What a file is, in words an admin reads in a log line: ``a FIFO``, ``a symlink``."""
    for test, name in _SPECIAL_NAMES:
        if test(mode):
            return f"a {name}"
    return {FILE: "a regular file", DIR: "a directory", SYMLINK: "a symlink"}[kind_of(mode)]


def event_mask(name: str) -> int:
    """The mask for an event name as a rule writes it: ``close_write`` or ``IN_CLOSE_WRITE``.

    Raises ``KeyError`` for a name that is neither.
    """
    key = name.strip().lower()
    key = key.removeprefix("in_")
    if key in EVENT_BITS:
        return EVENT_BITS[key]
    return EVENT_GROUPS[key]


def event_name(mask: int) -> str:
    """The name of the one event bit of a raw inotify mask (IN_ISDIR and flags aside)."""
    low_bit = mask & ALL_EVENTS & -(mask & ALL_EVENTS)
    return EVENT_NAMES_BY_BIT.get(low_bit, "unknown")


@dataclass(frozen=True, slots=True)
class FileEvent:
    """One change on the file system, as watchd reports it.

    ``path`` is the full path in bytes, exactly as the kernel gave the name.
    ``src_path`` is the old path of a move when both halves were seen, else ``b""``.
    ``synthetic`` marks an event watchd made up for an entry it found by scanning
    a directory that appeared before its watch was in place; ``caught_up`` one a catch-up
    found: a change made while the daemon was not running. ``state`` is a written file's
    (inode, size, mtime) as ``lstat`` showed it when its close_write was read, where the
    notifier looked: the ledger keeps it as what the rule saw without looking again.
    """

    path: bytes
    event: str
    bit: int
    is_dir: bool
    src_path: bytes = b""
    synthetic: bool = False
    caught_up: bool = False
    state: tuple[int, int, int] | None = field(default=None, compare=False)
