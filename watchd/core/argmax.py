"""What one exec can carry: the kernel counts each argv and environment string, its NUL and
its pointer against ``ARG_MAX`` (E2BIG past it), and refuses any one string of
``MAX_ARG_STRLEN`` bytes or more."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

POINTER = 8
# The kernel caps what exec takes at 3/4 of its 8 MiB _STK_LIM whatever the stack limit (an
# unlimited one makes sysconf say more than it takes).
ARG_MAX = min(os.sysconf("SC_ARG_MAX"), 6 << 20)
MAX_ARG_STRLEN = 32 * os.sysconf("SC_PAGE_SIZE")  # linux/binfmts.h
# Exec also copies the program's path (at most PATH_MAX) and a pointer; the rest is room
# for a kernel that counts a little more.
MARGIN = 8192


def argument_size(argument: bytes) -> int:
    return len(argument) + 1 + POINTER


def argv_size(argv: Iterable[bytes]) -> int:
    return sum(map(argument_size, argv))


def environment_size(env: Mapping[bytes, bytes]) -> int:
    """What ``env`` costs an exec: each ``NAME=value``, its NUL and its pointer."""
    return sum(len(name) + len(value) + 2 + POINTER for name, value in env.items())


def room_beside(size: int) -> int:
    """Bytes of arguments one exec can take beside ``size`` bytes of others (may be < 0)."""
    return ARG_MAX - MARGIN - size


def fits_alone(path: bytes, room: int) -> bool:
    """Whether ``path`` can be one argument of an exec with ``room`` bytes left for it."""
    return len(path) < MAX_ARG_STRLEN and argument_size(path) <= room
