"""The mount table, for roots that a mount covers or uncovers.

inotify says when a watched file system is unmounted (IN_UNMOUNT), but nothing when
one is mounted over a watched directory: its watches keep watching the directory
underneath, which nobody can reach any more. The kernel flags /proc/self/mountinfo
(POLLPRI, an "exceptional condition" to select) whenever the table changes; the
daemon's main loop waits on it and asks which mount points came or went.
"""

from __future__ import annotations

import os
import re

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> bytes:
    return _ESCAPE.sub(lambda match: bytes([int(match.group(1), 8)]), field)


class MountTable:
    def __init__(self) -> None:
        self.fd = os.open(MOUNTINFO, os.O_RDONLY | os.O_CLOEXEC)
        self._points = self._read()

    def _read(self) -> frozenset[bytes]:
        os.lseek(self.fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(self.fd, 65536):
            chunks.append(chunk)
        # Each line: id parent major:minor root mount-point options …
        return frozenset(_unescape(line.split(b" ", 5)[4])
                         for line in b"".join(chunks).splitlines() if line.count(b" ") >= 5)

    def changed(self) -> tuple[frozenset[bytes], frozenset[bytes]]:
        """Mount points mounted, and unmounted, since the last call."""
        points = self._read()
        mounted, unmounted = points - self._points, self._points - points
        self._points = points
        return mounted, unmounted

    def close(self) -> None:
        os.close(self.fd)


def touches(point: bytes, root: bytes) -> bool:
    """Whether a mount at ``point`` changes what is at ``root`` or below it."""
    return at_or_below(point, root) or at_or_below(root, point)


def at_or_below(path: bytes, top: bytes) -> bool:
    """Whether ``path`` is ``top`` or inside it."""
    return path == top or path.startswith(top.rstrip(b"/") + b"/")
