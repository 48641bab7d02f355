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

import contextlib
import os
import pwd
import stat
from collections.abc import Iterator

from watchd.core.events import KINDS, SYMLINK, FileEvent, describe_mode, kind_of
from watchd.core.job import Job
from watchd.core.rules import RunAs

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
    return _verdict(job.event, job.rule.kinds, job.event.path, None)


def recheck_batch(job: Job) -> Iterator[tuple[FileEvent, Refused | None]]:
    """Each event of a batch with why the re-check refuses it (None: it is let through), as
    ``recheck`` says. A batch's paths are mostly in one directory: each is looked at by its
    name there (``lstat`` relative to the directory's ``O_PATH`` descriptor, which resolves
    one name, not the whole path again), as by the whole path."""
    kinds = job.rule.kinds
    with contextlib.ExitStack() as stack:
        directory, descriptor = None, None
        for event in job.events:
            parent, name = os.path.split(event.path)
            if parent != directory:
                stack.close()
                directory, descriptor = parent, _opened(parent, stack)
            try:
                _verdict(event, kinds, event.path if descriptor is None else name, descriptor)
            except Refused as refusal:
                yield event, refusal
            else:
                yield event, None


def _opened(directory: bytes, stack: contextlib.ExitStack) -> int | None:
    """A descriptor of ``directory`` to look at its names with, closed with ``stack``; None if
    it cannot be had (then each path is looked at whole, and says why itself)."""
    try:
        descriptor = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    stack.callback(os.close, descriptor)
    return descriptor


def _verdict(event: FileEvent, kinds: frozenset[str], path: bytes,
             directory: int | None) -> os.stat_result | None:
    """``recheck``'s answer for ``event``, its path looked at as ``path`` in ``directory`` (a
    descriptor; None: ``path`` is the whole path)."""
    gone = event.event in _GONE_EVENTS
    try:
        info = os.lstat(path, dir_fd=directory)
    except (FileNotFoundError, NotADirectoryError):
        if gone:
            return None
        raise Refused("the path vanished before its action ran") from None
    except OSError as error:
        raise Refused(f"the path cannot be checked: {error.strerror}") from None
    kind = kind_of(info.st_mode)
    if kind == SYMLINK and (event.is_dir or event.event in _NOT_A_SYMLINK):
        raise Refused("the path turned into a symlink before its action ran")
    if kind not in kinds:
        taken = ", ".join(k for k in KINDS if k in kinds)
        raise WrongKind(f"the path is {describe_mode(info.st_mode)} and the rule takes only "
                        f"kind: {taken} (name {kind} in kind to act on it)")
    return None if gone else info


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
