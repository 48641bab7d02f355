"""What the daemon has done since it started, for SIGUSR1 and the status line."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields

DROP_REPORT_INTERVAL = 1.0  # seconds: dropped events or deliveries are logged at most this often


@dataclass
class Counters:
    # Most counters are written by one thread only (a reader may see them a moment late);
    # those that several threads write go through ``add``.
    inotify_records: int = 0  # read from the kernel, whatever they were about
    events: int = 0  # handed to the rules: the kernel's in watched scopes, and found by scan
    matched: int = 0
    actions_ok: int = 0
    actions_failed: int = 0
    dropped: int = 0
    overflows: int = 0
    reader_errors: int = 0
    webhooks_ok: int = 0
    webhooks_failed: int = 0
    webhooks_dropped: int = 0
    own_writes_ignored: int = 0
    actions_skipped: int = 0
    programs_untrusted: int = 0  # runs refused: the program became writable by others
    refused_by_kind: int = 0  # jobs not run: the path was a symlink, FIFO… the rule did not name
    found_by_scan: int = 0  # events reported from a directory's listing, not the kernel's queue
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def summary(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
