"""Polling: a rule's trees walked again every ``poll`` seconds, for what inotify cannot see.

On NFS, CIFS or a FUSE mount (sshfs, bindfs) inotify tells only the changes made through
this machine. A rule with ``poll`` has each of its trees compared, at that interval, with
what the ledger says the rule last saw, as the catch-up at start does (the same walk, the
same events, marked ``caught_up``); a change a live event already acted on is recorded and
not acted on again. One thread walks one tree at a time, so a large tree's poll delays the
next poll, never the event path; a tree's next poll is due ``poll`` seconds after its last
one ended.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable

from watchd.core.rules import Root, Rule, RuleSet
from watchd.run.deadlines import wait_until

Pair = tuple[Rule, Root]
PairKey = tuple[str, bytes]  # a rule's name, a root's path


class Poller:
    def __init__(self, walk: Callable[[Pair], None], stopping: threading.Event) -> None:
        self.walk = walk  # one poll of one tree, on the poller's thread
        self.stopping = stopping
        self._pairs: dict[PairKey, Pair] = {}
        self._due: list[tuple[float, PairKey]] = []
        self._changed = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self.polls = 0

    def prepare(self, ruleset: RuleSet) -> Callable[[], None]:
        pairs = {(rule.name, root.path): (rule, root) for root in ruleset.roots
                 if root.untrusted is None for rule in root.rules
                 if rule.enabled and rule.poll}

        def commit() -> None:
            with self._changed:
                now = time.monotonic()
                for key, (rule, _) in pairs.items():
                    if key not in self._pairs:
                        # A rule without catch_up: its first poll, at once, records what is
                        # there (a catch-up did, for the others), for the next to act on.
                        first = now if not rule.catch_up else now + (rule.poll or 0.0)
                        heapq.heappush(self._due, (first, key))
                self._pairs = pairs
                self._changed.notify()
            if pairs and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="watchd-poll",
                                                daemon=True)
                self._thread.start()
        return commit

    def _run(self) -> None:
        while not self.stopping.is_set():
            pair = self._next()
            if pair is None:
                return
            self.walk(pair)
            self.polls += 1
            with self._changed:
                key = (pair[0].name, pair[1].path)
                current = self._pairs.get(key)
                if current is not None:  # its rule may have changed in a reload
                    heapq.heappush(self._due, (time.monotonic() + (current[0].poll or 0.0),
                                               key))

    def _next(self) -> Pair | None:
        """The next tree due (None once stopping), waiting for its time."""
        with self._changed:
            while not self.stopping.is_set():
                while self._due and self._due[0][1] not in self._pairs:
                    heapq.heappop(self._due)  # a rule or root a reload removed
                if self._due and self._due[0][0] <= time.monotonic():
                    return self._pairs[heapq.heappop(self._due)[1]]
                wait_until(self._changed, self._due[0][0] if self._due else None)
        return None

    def stop(self, timeout: float) -> None:
        """Stop (``stopping`` is set by the caller); wait for a poll walking to end."""
        with self._changed:
            self._changed.notify()
        if self._thread is not None:
            self._thread.join(timeout)
