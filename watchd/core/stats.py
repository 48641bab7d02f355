"""What the daemon has done since it started: counters, in total and by rule.

Every component reports its figures through its ``stats()``; STATUS=, SIGUSR1 (and
later ``watchd status`` and metrics) read them there, never a component's fields.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field, fields

DROP_REPORT_INTERVAL = 1.0  # seconds: dropped events or deliveries are logged at most this often


class Count(enum.Enum):
    """A counter that several threads add to, through ``Counters.add``."""

    ACTIONS_OK = "actions_ok"
    ACTIONS_FAILED = "actions_failed"
    ACTIONS_SKIPPED = "actions_skipped"
    DROPPED = "dropped"
    WEBHOOKS_OK = "webhooks_ok"
    WEBHOOKS_FAILED = "webhooks_failed"
    WEBHOOKS_DROPPED = "webhooks_dropped"
    OWN_WRITES_IGNORED = "own_writes_ignored"
    PROGRAMS_UNTRUSTED = "programs_untrusted"
    REFUSED_BY_KIND = "refused_by_kind"
    RETRIED = "retried"
    DEAD_LETTERS = "dead_letters"
    DEAD_LETTERS_DROPPED = "dead_letters_dropped"
    CAUGHT_UP = "caught_up"
    POLLED = "polled"
    LEDGER_FAILURES = "ledger_failures"
    LEDGER_DROPPED = "ledger_dropped"
    LEDGER_CORRUPT = "ledger_corrupt"


@dataclass
class Counters:
    # The notifier thread's own counters are its fields, written by it alone (a reader may
    # see them a moment late); those that several threads write are a ``Count``, via ``add``.
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
    retried: int = 0  # failed runs that are tried again
    dead_letters: int = 0  # jobs given up on, kept in the ledger
    dead_letters_dropped: int = 0  # the oldest, past settings.dead_letters
    caught_up: int = 0  # events found by a catch-up: changes made while the daemon was down
    polled: int = 0  # events found by a poll: changes inotify did not tell
    ledger_failures: int = 0  # attempts to write the ledger that failed
    ledger_dropped: int = 0  # records of what rules saw not kept: ledger unwritable too long
    ledger_corrupt: int = 0  # ledgers put aside as unreadable
    # Per rule: "matched" and each ``Count``'s name.
    by_rule: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, count: Count, rule: str | None = None, amount: int = 1) -> None:
        name = count.value
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)
            if rule is not None:
                _bump(self.by_rule.setdefault(rule, {}), name, amount)

    def matched_by(self, rule: str) -> None:
        """A rule matched an event. Matching runs under the watch table's lock (the notifier
        thread's, or the main loop's for a reload or a mount change), one thread at a time:
        the count needs no lock of its own, and the hot path takes none."""
        self.matched += 1
        per_rule = self.by_rule.get(rule)
        if per_rule is None:
            with self._lock:
                per_rule = self.by_rule.setdefault(rule, {})
        _bump(per_rule, "matched", 1)

    def summary(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "by_rule" and not f.name.startswith("_")}

    def keep_rules(self, names: set[str]) -> None:
        """Forget the counts of rules a reload removed (the totals keep them)."""
        with self._lock:
            for rule in self.by_rule.keys() - names:
                del self.by_rule[rule]

    def of_rule(self, rule: str) -> dict[str, int]:
        with self._lock:
            return dict(self.by_rule.get(rule, {}))


def _bump(counts: dict[str, int], name: str, amount: int) -> None:
    counts[name] = counts.get(name, 0) + amount
