"""What watchd runs on must be as trustworthy as watchd itself (sshd's StrictModes, for a root
command runner).

A rules file, a drop-in, a webhook's secret file and a command's program are accepted only if
nobody but root (or, for a daemon not running as root, its own user) could have written them:
the file is owned by a trusted user and not writable by group or others, and so is every
directory above it, up to ``/``. A directory that others may write is accepted only with the
sticky bit and a trusted owner (``/tmp``): others can add names there but not replace ours.
Rules files and secrets are opened without following a symlink; a program may be reached
through symlinks (``/usr/bin/python3``), each of which is checked the same way, and so is
where it leads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MAX_LINKS = 40
Lstat = Callable[[str], os.stat_result]


def trusted_owners() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


class Untrusted(ValueError):
    """A file watchd will not use; the message says which and why."""


def _owner_problem(path: str, info: os.stat_result, what: str) -> str | None:
    if info.st_uid not in trusted_owners():
        return f"{what} {path} is owned by uid {info.st_uid}, not by root"
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        return None  # a symlink's own mode means nothing; its directory's does
    if mode & 0o022 and not (stat.S_ISDIR(info.st_mode) and mode & stat.S_ISVTX):
        return (f"{what} {path} is writable by group or others (mode {mode:04o}): "
                f"chmod go-w {path}")
    return None


def check_directories(path: str, lstat: Lstat = os.lstat) -> None:
    """Every directory above ``path``, up to /, trusted; Untrusted if not.

    A directory reached through a symlink (``/bin`` on a merged-/usr system) is checked as a
    symlink where it is, and again, with everything above it, where it leads.
    """
    directory = os.path.dirname(path)
    while True:
        try:
            info = lstat(directory)
        except OSError as error:
            raise Untrusted(f"cannot check directory {directory}: {error.strerror}") from None
        if stat.S_ISLNK(info.st_mode):
            problem = _owner_problem(directory, info, "symlink")
            # One hop at a time, so that each symlink of a chain is checked where it is.
            target = os.path.normpath(os.path.join(
                os.path.realpath(os.path.dirname(directory)), os.readlink(directory)))
            if problem is None and not os.path.isdir(target):
                problem = f"{directory} does not lead to a directory"
            if problem is None:
                check_directories(os.path.join(target, "."), lstat)
        elif not stat.S_ISDIR(info.st_mode):
            problem = f"{directory} is not a directory"
        else:
            problem = _owner_problem(directory, info, "directory")
        if problem:
            raise Untrusted(problem)
        if directory == "/":
            return
        directory = os.path.dirname(directory)


def open_trusted(path: str, what: str = "file", secret: bool = False) -> int:
    """Open ``path`` for reading, not following a symlink, once it is shown trustworthy.

    The checks are made on the open file itself (fstat), so the file read is the file checked.
    """
    path = os.path.abspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise Untrusted(f"{what} {path} is a symlink; name the file itself") from None
        raise Untrusted(f"cannot read {what} {path}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Untrusted(f"{what} {path} is not a regular file")
        problem = _owner_problem(path, info, what) or _links_problem(path, info, what)
        if problem is None and secret and stat.S_IMODE(info.st_mode) & 0o077:
            problem = (f"{what} {path} is open to group or others (mode "
                       f"{stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}")
        if problem:
            raise Untrusted(problem)
        check_directories(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _links_problem(path: str, info: os.stat_result, what: str) -> str | None:
    # A second name for the file means someone else may have chosen what it holds: a hard
    # link to another file is that file, whoever owns the link's directory (sshd refuses them).
    if info.st_nlink > 1:
        return (f"{what} {path} has {info.st_nlink} hard links: it may be another file under a "
                f"second name; give it a file of its own (cp, not ln)")
    return None


def read_trusted(path: str, limit: int, what: str = "file", secret: bool = False) -> bytes:
    """Up to ``limit + 1`` bytes of a trusted file (one more than allowed tells it is too big)."""
    fd = open_trusted(path, what, secret)
    with contextlib.closing(os.fdopen(fd, "rb")) as stream:
        return stream.read(limit + 1)


def check_program(path: str, lstat: Lstat = os.lstat) -> None:
    """A command's program: every link on the way, and the file it leads to, trusted."""
    for step in _resolve(path, lstat):
        info = lstat(step)
        if stat.S_ISLNK(info.st_mode):
            problem = _owner_problem(step, info, "symlink")
        elif not stat.S_ISREG(info.st_mode):
            raise Untrusted(f"program {step} is not a regular file")
        else:
            problem = _owner_problem(step, info, "program")
            if problem is None and not info.st_mode & 0o111:
                problem = f"program {step} is not executable"
        if problem:
            raise Untrusted(problem)
        check_directories(step, lstat)


def _resolve(path: str, lstat: Lstat) -> Iterator[str]:
    """``path``, then each symlink's target in turn, ending with the file itself."""
    for _ in range(MAX_LINKS):
        try:
            info = lstat(path)
        except OSError as error:
            raise Untrusted(f"program {path}: {error.strerror}") from None
        yield path
        if not stat.S_ISLNK(info.st_mode):
            return
        # Relative to where the link really is: ``..`` after a symlinked directory goes
        # where the kernel goes, not where the text of the path says.
        target = os.readlink(path)
        path = os.path.normpath(os.path.join(os.path.realpath(os.path.dirname(path)), target))
    raise Untrusted(f"program {path}: too many levels of symlinks")


# What identifies a file's state for trust: which file it is and when its inode last changed.
# A chown, a chmod, a rename over it or a write all change one of these; nothing else can
# change its owner or mode.
_Identity = tuple[int, int, int]


class ProgramTrust:
    """``check_program`` before every run, without walking the chain every time.

    A trusted verdict is kept with the identity and change time of everything the check
    looked at (the program, each symlink on the way, each directory up to /); it holds while
    an ``lstat`` of each still shows the same. A change to any of them (a chown of the
    program to a user, a chmod of a directory) makes the next run check it all again.
    """

    def __init__(self) -> None:
        # Workers share it; a verdict is replaced whole, and a stale one never matches.
        self._trusted: dict[str, tuple[tuple[str, _Identity], ...]] = {}

    def check(self, path: str) -> None:
        """Untrusted if ``path`` may not be run now."""
        seen = self._trusted.get(path)
        if seen is not None and all(_unchanged(place, identity) for place, identity in seen):
            return
        looked_at: dict[str, _Identity] = {}

        def lstat(place: str) -> os.stat_result:
            info = os.lstat(place)
            looked_at.setdefault(place, _identity(info))
            return info

        check_program(path, lstat)
        self._trusted[path] = tuple(looked_at.items())


def _identity(info: os.stat_result) -> _Identity:
    return info.st_dev, info.st_ino, info.st_ctime_ns


def _unchanged(place: str, identity: _Identity) -> bool:
    try:
        return _identity(os.lstat(place)) == identity
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where a watched path leads, crossing only trusted symlinks.

    ``path`` has no symlink in it (as of the look), or, when ``untrusted`` says why a link
    on the way is not followed, is that link's own path with the rest of the path after it.
    ``links`` are the names on the way whose change can change where it leads: each symlink
    crossed (the refused one last), and each name in a directory that someone other than root
    may rename or replace. Their directories are watched.
    """

    path: str
    links: tuple[str, ...] = ()
    untrusted: str | None = None


def resolve_watched(path: str) -> Resolution:
    """Resolve ``path`` component by component, as the kernel would, following a symlink
    only if it and every directory above it are trusted the way a rules file is.

    A user who owns the directory a watched path is in could otherwise point it at a
    directory only root may read, and have root's actions run on what is there.
    """
    done, parent = "/", os.lstat("/")
    links: dict[str, None] = {}
    hops = 0
    pending = list(reversed(path.split("/")))
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            done = os.path.dirname(done)
            parent = os.lstat(done)
            continue
        here = os.path.join(done, part)
        try:
            info = os.lstat(here)
        except OSError:
            return _resolved(here, pending, links)
        if stat.S_ISLNK(info.st_mode) or _replaceable(done, parent, info):
            links[here] = None
        if not stat.S_ISLNK(info.st_mode):
            done, parent = here, info
            continue
        hops += 1
        problem = _link_problem(here, info, hops)
        try:
            target = os.readlink(here)
        except OSError as error:
            problem = problem or f"cannot read symlink {here}: {error.strerror}"
        if problem:
            return _resolved(here, pending, links, problem)
        if target.startswith("/"):
            done, parent = "/", os.lstat("/")
        pending.extend(reversed(target.split("/")))
    return Resolution(done, tuple(links))


def _resolved(here: str, pending: list[str], links: dict[str, None],
              problem: str | None = None) -> Resolution:
    """Resolved up to ``here``; the rest of the path as written after it."""
    rest = os.path.normpath(os.path.join(here, *reversed(pending)))
    return Resolution(rest, tuple(links), problem)


def _replaceable(directory: str, info: os.stat_result, entry: os.stat_result) -> bool:
    """Whether someone other than root may rename or replace a name in ``directory``."""
    if _owner_problem(directory, info, "directory") is not None:
        return True
    # In a sticky directory (/tmp) the entry's owner may still rename it.
    return bool(info.st_mode & stat.S_ISVTX) and entry.st_uid not in trusted_owners()


def _link_problem(link: str, info: os.stat_result, hops: int) -> str | None:
    if hops > MAX_LINKS:
        return f"{link}: too many levels of symlinks"
    problem = _owner_problem(link, info, "symlink")
    if problem is None:
        try:
            check_directories(link)
        except Untrusted as untrusted:
            problem = f"symlink {link} is in an untrusted place: {untrusted}"
    return problem
