"""The ``lstat`` of a batch's paths, made by a helper process.

A batch's re-check looks at each of its paths once more before the run (watchd.run.guard):
a thousand ``lstat`` calls for a batch of a thousand. Each call lets go of the interpreter
lock, and the event reader, which runs meanwhile, makes the worker wait to have it back: the
calls cost more in waiting than in themselves, and the event reader is slowed in turn. The
helper, a second Python process started at the first batch, makes the calls; the daemon
sends it the names in one write and reads their answers in one read. The answers are those
the daemon's own calls would give: the helper runs as the daemon does, and ends when the
daemon does (its end of the pipe closes). Where the helper cannot be had, the daemon makes
the calls itself, and says so once a minute at most.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

from watchd.core.logs import log
from watchd.run.lstat_helper import ANSWER, REQUEST, Looked, lstat_names, read_exact, write_all

RETRY_AFTER = 60.0  # after the helper failed: how long the daemon makes the calls itself
HELPER = (sys.executable, "-I", "-m", "watchd.run.lstat_helper")


class Lstats:
    """The daemon's side: one helper, asked by one worker at a time."""

    def __init__(self, command: tuple[str, ...] = HELPER) -> None:
        self._command = command
        self._helper: subprocess.Popen[bytes] | None = None
        self._failed_at = -RETRY_AFTER
        self._lock = threading.Lock()

    def lstat_names(self, directory: bytes, names: list[bytes]) -> Looked:
        """As ``watchd.run.lstat_helper.lstat_names``, by the helper where it can be had."""
        with self._lock:
            if self._helper is None and time.monotonic() - self._failed_at >= RETRY_AFTER:
                self._helper = self._started()
            if self._helper is not None:
                try:
                    return self._ask(self._helper, directory, names)
                except (OSError, EOFError) as error:
                    self._failed(f"it stopped answering: {error or 'it ended'}")
        return lstat_names(directory, names)

    def close(self) -> None:
        with self._lock:
            self._end()

    def _started(self) -> subprocess.Popen[bytes] | None:
        try:
            return subprocess.Popen(self._command, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, bufsize=0)
        except OSError as error:
            self._failed(f"it cannot be started: {error.strerror}")
            return None

    @staticmethod
    def _ask(helper: subprocess.Popen[bytes], directory: bytes, names: list[bytes]) -> Looked:
        assert helper.stdin is not None and helper.stdout is not None
        joined = b"\0".join(names)
        write_all(helper.stdin.fileno(),
                   REQUEST.pack(len(directory), len(joined)) + directory + joined)
        answers = read_exact(helper.stdout.fileno(), ANSWER.size * len(names))
        if answers is None:
            raise EOFError
        return list(ANSWER.iter_unpack(answers))

    def _failed(self, why: str) -> None:
        log(logging.WARNING, f"the batch re-check's helper process failed: {why}; the daemon "
            f"looks at the paths itself for {RETRY_AFTER:.0f} s")
        self._failed_at = time.monotonic()
        self._end()

    def _end(self) -> None:
        helper, self._helper = self._helper, None
        if helper is None:
            return
        assert helper.stdin is not None and helper.stdout is not None
        helper.stdin.close()  # the helper ends at the end of its input
        helper.stdout.close()
        try:
            helper.wait(1.0)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()
