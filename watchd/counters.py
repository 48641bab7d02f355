"""What the daemon has done since it started, for SIGUSR1 and the status line."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Counters:
    # Each counter is written by one thread only; a reader may see it a moment late.
    events: int = 0
    matched: int = 0
    actions_ok: int = 0
    actions_failed: int = 0
    dropped: int = 0
    overflows: int = 0
    reader_errors: int = 0

    def summary(self) -> dict[str, int]:
        return {field.name: getattr(self, field.name) for field in fields(self)}
