"""Queued jobs kept many to a row: what makes a burst cheap to write.

A job is written when it is queued and forgotten when it ends, most often without anything in
between; one row of 18 columns each costs about ten times what the job's share of one packed
row does. So the jobs a commit queues go in one row of ``queued`` (their ids' range, and the
jobs packed with ``marshal``), and each one that ends, or whose row moves to ``jobs`` (retried,
a dead letter, on to its next action), is noted in ``ended``. A row whose jobs have all ended
is removed, with its notes. What is queued is then: the packed jobs not ended, and the
``jobs`` rows in an unfinished state.

``Chunks`` is the writer's index of the packed jobs not ended: which row holds each, and how
many each row still holds. A batch changes it only through a ``Delta``, put in force once the
batch is committed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from watchd.ledger.store import packed_jobs


@dataclass
class Delta:
    """What one batch changes in the index: a new row, and the jobs it notes ended."""

    new: tuple[int, list[int]] | None = None  # (first id, the ids packed)
    ended: list[int] = field(default_factory=list)
    emptied: list[int] = field(default_factory=list)  # rows whose jobs have all ended


class Chunks:
    def __init__(self) -> None:
        self.row_of: dict[int, int] = {}  # a packed job not ended -> the first id of its row
        self.left: dict[int, int] = {}  # a row -> how many of its jobs have not ended

    def load(self, connection: sqlite3.Connection) -> None:
        self.row_of.clear()
        self.left.clear()
        for first, _ in connection.execute("SELECT first, last FROM queued"):
            self.left[first] = 0
        # A row that cannot be read holds none: the writer said so, reading the jobs.
        for first, row in packed_jobs(connection, damaged=[]):
            self.row_of[row.id] = first
            self.left[first] += 1

    def holds(self, job_id: int) -> bool:
        return job_id in self.row_of

    def ending(self, delta: Delta, job_ids: list[int]) -> None:
        """Note these jobs ended in ``delta``, and which rows that empties."""
        counts: dict[int, int] = {}
        for job_id in job_ids:
            first = self.row_of[job_id]
            counts[first] = counts.get(first, 0) + 1
            delta.ended.append(job_id)
        delta.emptied.extend(first for first, count in counts.items()
                             if self.left[first] == count)

    def apply(self, delta: Delta) -> None:
        """Put a committed batch's changes in force."""
        if delta.new is not None:
            first, ids = delta.new
            self.left[first] = len(ids)
            for job_id in ids:
                self.row_of[job_id] = first
        for job_id in delta.ended:
            self.left[self.row_of.pop(job_id)] -= 1
        for first in delta.emptied:
            del self.left[first]
