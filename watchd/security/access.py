"""Whether a rule's user could execute its program, checked as the kernel's execve would.

``os.access`` cannot answer this: it tests the calling process (root, for the daemon), not
the user a command will run as. So the lookup is redone here, one name at a time, for a given
uid, primary gid and supplementary groups:

- every directory the lookup passes through needs search (x) permission, including those it
  passes through while following a symlink; a symlink's own mode does not matter, and at most
  40 symlinks are followed (the kernel's limit);
- the program must be a regular file with the x bit of the one class that applies: the owner
  bits if the uid owns it (even when the group or other bits would allow more), else the group
  bits if the primary gid or a supplementary group is the file's group, else the other bits;
- uid 0 may search every directory, and execute a file if any of its three x bits is set.

POSIX ACLs are not read, and no capability is considered but root's: a file whose ACL grants or
denies more than its mode bits is judged by its mode bits alone.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from collections.abc import Sequence
from dataclasses import dataclass

MAX_LINKS = 40  # the kernel's MAXSYMLINKS: one more symlink in a lookup and execve fails ELOOP
ROOT_UID = 0
X_BIT = 0o1  # in a class's rwx bits: execute for a file, search for a directory
EXECUTE_BY_ANYONE = 0o111
# How far right to shift a mode to bring that class's rwx bits into the lowest three.
OWNER_CLASS = 6
GROUP_CLASS = 3
OTHER_CLASS = 0
FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


def execute_problem(
    program: str, uid: int, gid: int, groups: Sequence[int], *, user_name: str | None = None
) -> str | None:
    """None if a process with this identity could execute ``program``, else why not, in one line.

    ``program`` must be an absolute path. ``user_name`` names the user in the message; without
    it the password database's name for ``uid`` is used, or the number itself.
    """
    if not os.path.isabs(program):
        raise ValueError(f"program must be an absolute path: {program!r}")
    who = _Identity(uid, gid, frozenset(groups), user_name or _user_name(uid))
    lookup = _Lookup(who)
    try:
        path, info = lookup.resolve(program)
        _check_program(path, info, who)
    except _Refused as refused:
        return lookup.explain(str(refused))
    return None


@dataclass(frozen=True)
class _Identity:
    uid: int
    gid: int
    groups: frozenset[int]
    name: str

    def is_in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


class _Refused(Exception):
    """The lookup or the execution would fail; the message says where and why."""


class _Lookup:
    """One path lookup as ``who``, name by name, as the kernel walks a path."""

    def __init__(self, who: _Identity) -> None:
        self.who = who
        self.links_followed = 0
        # The last symlink followed: a message about where it led says how the lookup got there.
        self.last_link: str | None = None

    def resolve(self, program: str) -> tuple[str, os.stat_result]:
        """The path, free of symlinks, of the file ``program`` names, and that file's status."""
        directory = "/"
        pending = _names(program)
        while True:
            name = pending.pop()
            _check_search(directory, self.who)
            path = _step(directory, name)
            info = _lstat(path)
            if stat.S_ISLNK(info.st_mode):
                directory = self._follow(path, directory, pending)
            elif not pending:
                return path, info
            elif stat.S_ISDIR(info.st_mode):
                directory = path
            else:
                raise _Refused(f"{path} is not a directory")

    def explain(self, problem: str) -> str:
        if self.last_link is None:
            return problem
        return f"{problem}, reached through symlink {self.last_link}"

    def _follow(self, link: str, directory: str, pending: list[str]) -> str:
        """Queue the names of ``link``'s target; the directory the lookup goes on from."""
        self.links_followed += 1
        if self.links_followed > MAX_LINKS:
            raise _Refused(f"too many levels of symlinks (more than {MAX_LINKS}) at {link}")
        target = _readlink(link)
        self.last_link = link
        pending.extend(_names(target))
        return "/" if os.path.isabs(target) else directory


def _names(path: str) -> list[str]:
    """The names to look up in ``path``, last first, so that ``pop`` gives the next one.

    A trailing slash (and so ``/`` itself) ends in ``.``: the name before it must then be a
    directory, as the kernel requires.
    """
    names = [name for name in path.split("/") if name]
    if path.endswith("/"):
        names.append(".")
    return names[::-1]


def _step(directory: str, name: str) -> str:
    # ``directory`` never holds a symlink, so its textual parent is the one ``..`` leads to.
    if name == ".":
        return directory
    if name == "..":
        return os.path.dirname(directory)
    return os.path.join(directory, name)


def _lstat(path: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as error:
        raise _Refused(_os_problem(path, error)) from None


def _readlink(link: str) -> str:
    try:
        return os.readlink(link)
    except OSError as error:
        raise _Refused(_os_problem(link, error)) from None


def _os_problem(path: str, error: OSError) -> str:
    if error.errno == errno.ENOENT:
        return f"{path} does not exist"
    return f"cannot check {path}: {error.strerror}"


def _check_search(directory: str, who: _Identity) -> None:
    info = _lstat(directory)
    if who.uid != ROOT_UID and not _class_bits(info, who) & X_BIT:
        raise _Refused(_denial("search directory", directory, info, who))


def _check_program(path: str, info: os.stat_result, who: _Identity) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = FILE_KINDS.get(stat.S_IFMT(info.st_mode), "a special file")
        raise _Refused(f"{path} is not a regular file (it is {kind})")
    if who.uid == ROOT_UID:
        allowed = bool(info.st_mode & EXECUTE_BY_ANYONE)
    else:
        allowed = bool(_class_bits(info, who) & X_BIT)
    if not allowed:
        raise _Refused(_denial("execute", path, info, who))


def _permission_class(info: os.stat_result, who: _Identity) -> int:
    if info.st_uid == who.uid:
        return OWNER_CLASS
    if who.is_in_group(info.st_gid):
        return GROUP_CLASS
    return OTHER_CLASS


def _class_bits(info: os.stat_result, who: _Identity) -> int:
    """The rwx bits of the one class that applies to ``who``: the only ones the kernel reads."""
    return (info.st_mode >> _permission_class(info, who)) & 0o7


def _denial(action: str, path: str, info: os.stat_result, who: _Identity) -> str:
    group = _group_name(info.st_gid)
    owner = _user_name(info.st_uid)
    details = f"mode {stat.S_IMODE(info.st_mode):04o}, owner {owner}, group {group}"
    reason = _reason(info, who, group)
    if reason:
        details = f"{details}; {reason}"
    return f"user {who.name} cannot {action} {path} ({details})"


def _reason(info: os.stat_result, who: _Identity, group: str) -> str | None:
    """Why the x bits the mode does have are not enough, when the mode alone does not say so.

    For root only a file with no x bit at all is refused. For anyone else it is an x bit in a
    class other than theirs, which does not count; with none anywhere, the mode says it all.
    """
    mode = info.st_mode
    if who.uid == ROOT_UID:
        return "root needs at least one x bit"
    permission_class = _permission_class(info, who)
    if permission_class == OWNER_CLASS and mode & 0o011:
        return f"{who.name} owns it, so only the owner bits count"
    if permission_class == GROUP_CLASS and mode & 0o001:
        return f"{who.name} is in group {group}, so only the group bits count"
    if permission_class == OTHER_CLASS and mode & 0o010:
        return f"{who.name} is not in group {group}"
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
