"""Just before a rule's actions run: is the path still what the event said, and whose is it?

Between the event and the action, anyone who can write in the directory can replace the
file: with a symlink to /etc/shadow, or a hard link to someone else's file. watchd never
opens, chowns or chmods a triggering file itself; what it does is look once more, with
``lstat`` (which does not follow a symlink), and skip the actions when the path vanished,
turned into a symlink, or is of a kind the rule does not take (a symlink or a FIFO moved
into a drop box, unless the rule names them). For ``user: '@owner'`` the owner comes from
that same ``lstat``.
"""

from __future__ import annotations

import errno
import itertools
import os
import pwd
import stat
from collections.abc import Iterator

from watchd.core.events import KINDS, SYMLINK, FileEvent, describe_mode, kind_of
from watchd.core.job import Job
from watchd.core.rules import RunAs
from watchd.run.lstats import Lstats

# Events about a path that is gone by design: nothing to look at.
_GONE_EVENTS = frozenset({"delete", "moved_from", "delete_self", "move_self", "unmount"})
# Events the kernel reports only for files and directories, never for a symlink itself.
_NOT_A_SYMLINK = frozenset({"close_write", "close_nowrite", "open", "access", "modify"})


class Refused(Exception):
    """The job's actions are not run; the message says why."""


class WrongKind(Refused):
    """The path is of a kind the rule does not take: not a failure, and said once per path."""


def recheck(job: Job) -> os.stat_result | None:
    """The path's lstat now (None for an event about a path that is gone); Refused if the
    path vanished, was swapped for a symlink, or is of a kind the rule does not take.

    A path an event says is gone is looked at too: if something is there again, it is
    what the action would be handed, and it must be of a kind the rule takes.
    """
    refusal = _symlink_on_the_way(job.root.path, os.path.dirname(job.event.path))
    if refusal is not None:
        raise refusal
    return _verdict(job.event, job.rule.kinds)


def recheck_batch(job: Job, lstats: Lstats) -> Iterator[tuple[FileEvent, Refused | None]]:
    """Each event of a batch with why the re-check refuses it (None: it is let through), as
    ``recheck`` says. A batch's paths are mostly in one directory: those of each directory
    are looked at together, by their names there (``lstats``)."""
    kinds = job.rule.kinds
    for directory, events in itertools.groupby(job.events,
                                               key=lambda event: os.path.dirname(event.path)):
        together = list(events)
        refusal = _symlink_on_the_way(job.root.path, directory)
        if refusal is not None:
            yield from ((event, refusal) for event in together)
            continue
        looked = lstats.lstat_names(directory, [os.path.basename(e.path) for e in together])
        for event, (error, mode) in zip(together, looked, strict=True):
            yield event, _refusal(event, kinds, error, mode)


def _symlink_on_the_way(root: bytes, directory: bytes) -> Refused | None:
    """Refused if a directory between the rule's root and ``directory`` (itself included) is
    a symlink now: ``lstat`` of the path follows those, and a user who swapped one for a link
    to /etc would hand the action what is there. The root is the administrator's (it may be a
    symlink); each directory below it is opened from its parent without following one."""
    top = root.rstrip(b"/") + b"/"
    if not directory.startswith(top):
        return None  # the root itself, or what holds it
    try:
        handle = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None  # the path's own lstat says why
    try:
        for name in directory[len(top):].split(b"/"):
            try:
                below = os.open(name, _BELOW, dir_fd=handle)
            except OSError:
                return _swapped(name, handle)
            os.close(handle)
            handle = below
    finally:
        os.close(handle)
    return None


_BELOW = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _swapped(name: bytes, directory: int) -> Refused | None:
    """Why a directory on the way could not be opened: Refused for a symlink; None for one
    gone, or anything else (the path's own lstat says what it finds)."""
    try:
        mode = os.lstat(name, dir_fd=directory).st_mode
    except OSError:
        return None
    if not stat.S_ISLNK(mode):
        return None
    return Refused("a directory on the path turned into a symlink before its action ran")


def _verdict(event: FileEvent, kinds: frozenset[str]) -> os.stat_result | None:
    """``recheck``'s answer for ``event``."""
    try:
        info = os.lstat(event.path)
    except OSError as error:
        refusal = _refusal(event, kinds, error.errno or errno.EIO, 0)
        if refusal is not None:
            raise refusal from None
        return None
    refusal = _refusal(event, kinds, 0, info.st_mode)
    if refusal is not None:
        raise refusal
    return None if event.event in _GONE_EVENTS else info


def _refusal(event: FileEvent, kinds: frozenset[str], error: int, mode: int) -> Refused | None:
    """Why the re-check refuses ``event``, its path's ``lstat`` having failed with ``error``
    or found ``mode``; None: it is let through."""
    if error in (errno.ENOENT, errno.ENOTDIR):
        return None if event.event in _GONE_EVENTS else Refused(
            "the path vanished before its action ran")
    if error:
        return Refused(f"the path cannot be checked: {os.strerror(error)}")
    kind = kind_of(mode)
    if kind == SYMLINK and (event.is_dir or event.event in _NOT_A_SYMLINK):
        return Refused("the path turned into a symlink before its action ran")
    if kind not in kinds:
        taken = ", ".join(k for k in KINDS if k in kinds)
        return WrongKind(f"the path is {describe_mode(mode)} and the rule takes only "
                         f"kind: {taken} (name {kind} in kind to act on it)")
    return None


def owner(job: Job, allow_root_owner: bool, info: os.stat_result | None) -> RunAs:
    """The user a ``user: '@owner'`` command runs as; Refused if it must not run."""
    if info is None:
        raise Refused(f"user: '@owner' needs a file, and {job.event.event} leaves none")
    if info.st_uid == 0 and not allow_root_owner:
        raise Refused("the file is owned by root; user: '@owner' runs as root only with "
                      "allow_root_owner: true")
    if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
        directory = os.lstat(os.path.dirname(job.event.path))
        if directory.st_uid != info.st_uid:
            raise Refused(f"the file has {info.st_nlink} hard links and its owner (uid "
                          f"{info.st_uid}) does not own its directory: perhaps a link to "
                          "someone else's file")
    try:
        entry = pwd.getpwuid(info.st_uid)
    except KeyError:
        raise Refused(f"the file's owner, uid {info.st_uid}, has no account") from None
    return RunAs.lookup(entry.pw_name)
