"""The helper process that looks at a batch's paths (``lstat``) for the daemon
(watchd.run.lstats): run as ``python3 -I -m watchd.run.lstat_helper``. It answers requests on
stdin, on stdout, until stdin ends: that is, until the daemon closes it or ends.

A request: the directory's length, the names' length, the directory, the names joined by NUL
(a name holds neither NUL nor "/"). An answer for each name: its errno (0: none), its st_mode.
Only the standard library is imported here: the helper starts fast and logs nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct

REQUEST = struct.Struct("=II")
ANSWER = struct.Struct("=iI")

Looked = list[tuple[int, int]]  # (errno, st_mode) of each name, in order


def lstat_names(directory: bytes, names: list[bytes]) -> Looked:
    """Each name's (errno, st_mode), looked at in ``directory`` without following a symlink:
    relative to the directory's descriptor, which resolves one name rather than the whole
    path again; by the whole path where the directory cannot be opened (each then says why)."""
    try:
        handle: int | None = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        handle = None
    prefix = directory.rstrip(b"/") + b"/"
    looked = []
    try:
        for name in names:
            try:
                mode = os.lstat(name if handle is not None else prefix + name,
                                dir_fd=handle).st_mode
            except OSError as error:
                looked.append((error.errno or 0, 0))
            else:
                looked.append((0, mode))
    finally:
        if handle is not None:
            os.close(handle)
    return looked


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_exact(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``; None if it ended first."""
    parts, left = [], size
    while left:
        part = os.read(fd, left)
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def serve() -> None:
    """The helper: answer requests on stdin, on stdout, until stdin ends."""
    # A Ctrl-C at the terminal reaches the whole process group: the daemon decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(BrokenPipeError):  # the daemon ended while it asked
        while (request := read_exact(0, REQUEST.size)) is not None:
            directory_size, names_size = REQUEST.unpack(request)
            body = read_exact(0, directory_size + names_size)
            if body is None:
                return
            names = body[directory_size:].split(b"\0")
            looked = lstat_names(body[:directory_size], names)
            write_all(1, b"".join(ANSWER.pack(error, mode) for error, mode in looked))


if __name__ == "__main__":
    serve()
