"""``log_output: true``: a command's stdout and stderr, line by line, into the journal.

Each line is one log record with the fields ``WATCHD_RULE``, ``WATCHD_JOB`` and
``WATCHD_STREAM`` (``stdout`` or ``stderr``), its bytes escaped as every name is. A run logs at
most ``LINES_PER_RUN`` lines of at most ``LINE_BYTES`` bytes each, and then says how many more
it had: a chatty command cannot flood the journal. The pipes are drained as the command
writes, whatever is logged, so a command never waits on them.
"""

from __future__ import annotations

import logging

from watchd.core.job import Job
from watchd.core.logs import log

LINES_PER_RUN = 1000
LINE_BYTES = 4096


class OutputLines:
    """What one run wrote on its streams, cut into lines and logged within the bound."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.logged = 0
        self.unlogged = 0
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def add(self, stream: str, data: bytes) -> None:
        *lines, rest = (self._partial[stream] + data).split(b"\n")
        for line in lines:
            self._line(stream, line)
        if len(rest) > LINE_BYTES:  # a line without an end: logged in pieces
            self._line(stream, rest)
            rest = b""
        self._partial[stream] = rest

    def end(self) -> None:
        """The run ended: its last lines without a newline, and how many were not logged."""
        for stream, rest in self._partial.items():
            if rest:
                self._line(stream, rest)
        if self.unlogged:
            log(logging.WARNING, f"{self.unlogged} more output line(s) not logged: "
                f"log_output keeps {LINES_PER_RUN} per run", rule=self.job.rule.name,
                job=self.job.id or None, step=self.job.step)

    def _line(self, stream: str, line: bytes) -> None:
        if self.logged >= LINES_PER_RUN:
            self.unlogged += 1
            return
        self.logged += 1
        # Decoded losslessly: the log escapes every message as it escapes names.
        text = line.rstrip(b"\r")[:LINE_BYTES].decode("utf-8", "surrogateescape")
        log(logging.INFO, text, rule=self.job.rule.name,
            job=self.job.id or None, stream=stream, step=self.job.step)
