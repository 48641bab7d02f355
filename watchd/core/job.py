"""A job: one matched event for one rule, as it travels from the match to the action."""

from __future__ import annotations

import os
from dataclasses import dataclass

from watchd.core.events import FileEvent
from watchd.core.rules import Root, Rule

JobKey = tuple[str, bytes]  # a rule's name and a path: what runs one at a time


@dataclass(frozen=True, slots=True)
class Job:
    """``id`` is the job's in the ledger (0 until it is queued); ``step`` the action to
    perform next, from 1; ``tries`` how many runs of that action have been started."""

    rule: Rule
    root: Root
    event: FileEvent
    id: int = 0
    step: int = 1
    tries: int = 0

    @property
    def key(self) -> JobKey:
        return (self.rule.name, self.event.path)

    def values(self) -> dict[str, bytes]:
        """The placeholder values, as bytes: what ``{path}``, ``{name}`` … stand for."""
        path = self.event.path
        return {
            "path": path,
            "name": os.path.basename(path),
            "dir": os.path.dirname(path),
            "root": self.root.path,
            "event": self.event.event.encode(),
            "rule": self.rule.name.encode(),
            "src_path": self.event.src_path,
        }
