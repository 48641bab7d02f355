"""A directory's state, and the difference between two of its states, as values.

The snapshot of a watched directory is its state: every name in it and what is known of
the entry behind that name. Listing the directory again gives what is there now; ``diff``
compares the two and says, as change values, what was created, changed, deleted (and, if
asked, moved) in between. That is how a rescan after an inotify queue overflow finds the
events the kernel dropped, and how a directory can be caught up with after downtime or
polled where inotify cannot watch it.

Nothing here watches, logs or reports: the only input or output is ``lstat`` of the
entries of a listing (``found_in``, ``looked_at``); the rest is values in, values out.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, NamedTuple

# What the snapshot knows of an entry: (inode, size, mtime) of a regular file as of the last
# time it was looked at (its last close_write, for the notifier); UNSEEN for one not looked
# at since it was listed or created; DIRECTORY; OTHER. The markers' negative sizes keep them
# apart from any state lstat can show. Plain tuples, shared: a snapshot may hold 500,000.
FileState = tuple[int, int, int]
UNSEEN: FileState = (0, -1, 0)
DIRECTORY: FileState = (0, -2, 0)
OTHER: FileState = (0, -3, 0)

# A directory's state: each name in it, and what is known of its entry.
DirState = Mapping[bytes, FileState]

# The state of an empty directory, shared until a name is noted in it: most directories of
# a deep tree are leaves, and an empty dict of each one's own would cost 64 bytes a watch.
NO_FILES: DirState = MappingProxyType({})


class Found(NamedTuple):
    """An entry as a listing found it now: its state and, for a regular file looked at, its
    ctime (which tells whether a file never looked at before changed since a given time).

    A regular file that could not be looked at (gone between the listing and its lstat) is
    found ``UNSEEN``: nothing can be told of it, and nothing is.
    """

    state: FileState
    ctime_ns: int = 0


# Found markers, shared: a listing of many names not looked at makes no object per name.
_FOUND_AS = {marker: Found(marker) for marker in (UNSEEN, DIRECTORY, OTHER)}


# A directory as found now: each name in it, and its entry as found.
Listing = Mapping[bytes, Found]


# -- making states -------------------------------------------------------------------------


def state_of(entry: os.DirEntry[bytes]) -> FileState:
    """What a listing alone tells of an entry (its type, nothing is looked at): a regular
    file is ``UNSEEN``."""
    if entry.is_dir(follow_symlinks=False):
        return DIRECTORY
    if entry.is_file(follow_symlinks=False):
        return UNSEEN
    return OTHER


def file_state(info: os.stat_result) -> FileState:
    """A regular file's state as ``lstat`` shows it."""
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def listed(entries: Iterable[os.DirEntry[bytes]]) -> DirState:
    """A directory's state from its listing, no file looked at: the snapshot of a directory
    as it is first watched (``NO_FILES`` if it is empty)."""
    return {entry.name: state_of(entry) for entry in entries} or NO_FILES


def found_in(entries: Iterable[os.DirEntry[bytes]], directory: int,
             known: DirState | None = None) -> dict[bytes, Found]:
    """A directory as found now, from its listing: each regular file is looked at (``lstat``
    of its name in ``directory``, a descriptor from ``looking_in``; never following a
    symlink), the type of anything else is the listing's. With ``known``, the state it is to
    be compared with, a name that state does not hold is not looked at: it is ``Created``
    whatever it holds, and after an overflow most names are new."""
    return {entry.name: _found(entry, directory, known is None or entry.name in known)
            for entry in entries}


def _found(entry: os.DirEntry[bytes], directory: int, look: bool) -> Found:
    # state_of, inline: this runs for every name of every directory an overflow rescans.
    if entry.is_dir(follow_symlinks=False):
        return _FOUND_AS[DIRECTORY]
    if not entry.is_file(follow_symlinks=False):
        return _FOUND_AS[OTHER]
    if not look:
        return _FOUND_AS[UNSEEN]
    try:
        info = os.lstat(entry.name, dir_fd=directory)
    except OSError:
        return _FOUND_AS[UNSEEN]  # gone since the listing: whatever removed it is told otherwise
    return Found((info.st_ino, info.st_size, info.st_mtime_ns), info.st_ctime_ns)


def found_from(stats: Iterable[tuple[bytes, os.stat_result]]) -> dict[bytes, Found]:
    """A directory as found now, from each name's ``lstat``."""
    return {name: _found_from(info) for name, info in stats}


def _found_from(info: os.stat_result) -> Found:
    if stat.S_ISDIR(info.st_mode):
        return Found(DIRECTORY)
    if stat.S_ISREG(info.st_mode):
        return Found(file_state(info), info.st_ctime_ns)
    return Found(OTHER)


def state_found(listing: Listing) -> DirState:
    """The state a directory was found in: the one to compare the next listing with."""
    return {name: found.state for name, found in listing.items()} or NO_FILES


# -- the difference between two states -----------------------------------------------------
# Values, never changed once made, and hashed as such; not frozen, though: a rescan makes one
# for every name it finds new, and a frozen dataclass takes two and a half times as long to make.


@dataclass(slots=True, unsafe_hash=True)
class Created:
    """A name that was not there before."""

    name: bytes
    is_dir: bool


@dataclass(slots=True, unsafe_hash=True)
class Changed:
    """A regular file whose content (may have) changed: ``state`` is its state now."""

    name: bytes
    state: FileState
    is_dir: ClassVar[bool] = False


@dataclass(slots=True, unsafe_hash=True)
class Deleted:
    """A name that is no longer there (``replaced``: it holds another kind of entry now, which
    a ``Created`` of the name follows)."""

    name: bytes
    is_dir: bool
    replaced: bool = False


@dataclass(slots=True, unsafe_hash=True)
class Moved:
    """A regular file renamed within the directory, from ``src`` to ``name``: the inode that
    ``src`` had is at ``name`` now, and ``src`` is gone. ``state`` is its state now."""

    name: bytes
    src: bytes
    state: FileState
    is_dir: ClassVar[bool] = False


Change = Created | Changed | Deleted | Moved


def diff(before: DirState | None, after: Listing, since_ns: int, *,
         moves: bool = False) -> tuple[Change, ...]:
    """What changed in a directory from state ``before`` to what ``after`` found there.

    A name new in ``after`` is ``Created``; one gone from it is ``Deleted``. A regular file
    found in both is ``Changed`` if its state differs from the one known, or, where none is
    known (``UNSEEN``), if its ctime is ``since_ns`` or later. A name found as anything but a
    regular file looked at is never told changed: a directory's content is its own state.
    ``before`` None means nothing is known (a directory past the snapshot's limit): every
    name counts as ``UNSEEN``, and nothing is told created or deleted.

    With ``moves``, a gone regular file whose inode was known and is found at another name
    (new, or replacing another file) is told ``Moved`` there instead of being deleted and
    the other created or changed; ``Changed`` follows if its state differs. A directory's
    inode is not kept, so a renamed directory is still told deleted and created.

    The changes come in ``after``'s order (a listing's), then the deletions in ``before``'s.
    """
    found = _found_changes(before, after, since_ns)
    gone = tuple(_deletions(before, after))
    if moves and gone:
        return _with_moves(found, gone, before or NO_FILES, after)
    return found + gone


@contextlib.contextmanager
def looking_in(directory: bytes) -> Iterator[int]:
    """A descriptor of ``directory`` to look at its entries by name with (``found_in``,
    ``looked_at``): an ``lstat`` relative to it resolves one name, not every component of the
    path again, and costs a fifth less CPU. It is opened ``O_PATH``, which opens nothing:
    inotify tells no open or close of it. Raises ``OSError`` if the directory cannot be
    reached."""
    descriptor = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield descriptor
    finally:
        os.close(descriptor)


# A directory's entries as looked at now, in the listing's order: each name and its state
# (a regular file gone between the listing and its lstat is ``UNSEEN``).
Looked = list[tuple[bytes, FileState]]


def looked_at(entries: Iterable[os.DirEntry[bytes]], directory: int) -> Looked:
    """Each entry's name and state: a regular file looked at by its name in ``directory``, a
    descriptor from ``looking_in`` (never following a symlink); anything else as listed."""
    lstat = os.lstat
    looked = []
    for entry in entries:
        name = entry.name
        # state_of and file_state, inline: this runs for every name of every walk.
        if entry.is_dir(follow_symlinks=False):
            state = DIRECTORY
        elif entry.is_file(follow_symlinks=False):
            try:
                info = lstat(name, dir_fd=directory)
            except OSError:
                state = UNSEEN
            else:
                state = (info.st_ino, info.st_size, info.st_mtime_ns)
        else:
            state = OTHER
        looked.append((name, state))
    return looked


def compare(before: DirState, looked: Looked) -> Iterator[tuple[Change, FileState]]:
    """``diff(before, found_in(…), 0)`` for what ``looked_at`` found, each change with the
    entry's state (a deletion's: the state it had): a tree's walk against a record of it,
    where most names are unchanged and nothing is made for them. A regular file gone between
    the listing and its lstat is left out (whatever removed it is told otherwise). A name that
    holds another kind of entry than before (a file, a directory, anything else) is the old
    entry deleted, then the new one created, as inotify tells it."""
    left = dict(before)
    for name, state in looked:
        known = left.pop(name, None)
        if state is UNSEEN:
            continue
        if known is None:
            yield Created(name, state == DIRECTORY), state
        elif state == known:  # most names of a walk: nothing more to look at
            continue
        elif _kind(state) != _kind(known):
            yield Deleted(name, known == DIRECTORY, replaced=True), known
            yield Created(name, state == DIRECTORY), state
        elif state[1] >= 0:
            yield Changed(name, state), state
    for name, known in left.items():
        yield Deleted(name, known == DIRECTORY), known


def _kind(state: FileState) -> int:
    """The kind of entry a state is of: its marker's size for a directory or anything else,
    0 for a regular file (looked at or not)."""
    return state[1] if state[1] in (DIRECTORY[1], OTHER[1]) else 0


def _found_changes(before: DirState | None, after: Listing, since_ns: int,
                   ) -> tuple[Created | Changed, ...]:
    changes: list[Created | Changed] = []
    for name, found in after.items():
        known = before.get(name) if before is not None else UNSEEN
        if known is None:
            changes.append(Created(name, found.state == DIRECTORY))
        elif _changed(known, found, since_ns):
            changes.append(Changed(name, found.state))
    return tuple(changes)


def _changed(known: FileState, found: Found, since_ns: int) -> bool:
    """Whether a name found now as it was known changed: only a regular file looked at can
    tell (one that was a directory or other before and is a file now did)."""
    state = found.state
    if state[1] < 0:  # a marker (only they have a negative size): not looked at
        return False
    if known == UNSEEN:
        return found.ctime_ns >= since_ns
    return state != known


def _deletions(before: DirState | None, after: Listing) -> Iterable[Deleted]:
    for name, known in (before or NO_FILES).items():
        if name not in after:
            yield Deleted(name, known == DIRECTORY)


def _with_moves(found: tuple[Created | Changed, ...], gone: tuple[Deleted, ...], before: DirState,
                after: Listing) -> tuple[Change, ...]:
    """The changes with each gone file that reappears under another name as a move."""
    sources: dict[int, bytes] = {}  # the inode of each gone file whose inode was known
    for deleted in gone:
        known = before[deleted.name]
        if known[1] >= 0:  # not a marker
            sources.setdefault(known[0], deleted.name)
    changes: list[Change] = []
    moved: set[bytes] = set()
    for change in found:
        state = after[change.name].state
        src = sources.pop(state[0], None) if state[1] >= 0 else None
        if src is None:
            changes.append(change)
            continue
        moved.add(src)
        changes.append(Moved(change.name, src, state))
        if state != before[src]:
            changes.append(Changed(change.name, state))
    changes.extend(deleted for deleted in gone if deleted.name not in moved)
    return tuple(changes)
