"""What each rule decided about each event, for whoever runs ``watchd trace``.

Every place that decides (the match, the stages, the queue, the re-check, the run) calls
``tracing.emit`` behind ``if tracing.on:``: while no one traces, a decision costs one
attribute read and nothing is made. A tracer's lines wait in a bounded deque for the control
socket's thread, which looks every few hundredths of a second (a wake-up per line would cost
the deciding thread more than the line); a tracer that does not read loses its oldest lines
(counted, and told), never holds the thread that decided.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from watchd.core.events import FileEvent
from watchd.core.logs import escape

TRACE_BACKLOG = 10_000  # lines a tracer may have waiting before its oldest are dropped

# What a rule did with an event: the ``decision`` of a trace line.
EVENT = "event"
MATCHED = "matched"
NOT_MATCHED = "not matched"
DEBOUNCED = "debounced"
SETTLING = "settling"
BATCHED = "batched"
QUEUED = "queued"
DROPPED = "dropped"
SKIPPED = "skipped"
IGNORED = "ignored"
REFUSED = "refused"
RAN = "ran"
RETRIED = "retried"
DEAD_LETTER = "dead letter"


class Tracer:
    """One ``watchd trace``: the rules and paths it asked for, and its lines not yet sent."""

    def __init__(self, rules: frozenset[str], paths: tuple[bytes, ...]) -> None:
        self.rules = rules
        self.paths = paths
        self.lines: deque[dict[str, object]] = deque(maxlen=TRACE_BACKLOG)
        self.dropped = 0

    def asked(self) -> dict[str, list[str]]:
        """What this tracer follows, as the control socket's answer says it."""
        return {"rules": sorted(self.rules), "paths": [escape(path) for path in self.paths]}

    def wants(self, rule: str | None, path: bytes) -> bool:
        if self.rules and rule is not None and rule not in self.rules:
            return False
        return not self.paths or any(path == prefix or path.startswith(prefix.rstrip(b"/") + b"/")
                                     for prefix in self.paths)

    def put(self, line: dict[str, object]) -> None:
        if len(self.lines) == TRACE_BACKLOG:
            self.dropped += 1
        self.lines.append(line)


class Tracing:
    def __init__(self) -> None:
        self.on = False
        self._tracers: tuple[Tracer, ...] = ()
        self._lock = threading.Lock()

    def attach(self, tracer: Tracer) -> None:
        with self._lock:
            self._tracers = (*self._tracers, tracer)
            self.on = True

    def detach(self, tracer: Tracer) -> None:
        with self._lock:
            self._tracers = tuple(t for t in self._tracers if t is not tracer)
            self.on = bool(self._tracers)

    def emit(self, decision: str, rule: str | None, event: FileEvent, detail: str = "",
             **fields: object) -> None:
        """One line to every tracer that asked for this rule and path."""
        line: dict[str, object] | None = None
        for tracer in self._tracers:
            if not tracer.wants(rule, event.path):
                continue
            if line is None:
                line = {"time": time.time(), "decision": decision, "rule": rule,
                        "event": event.event, "path": escape(event.path),
                        "detail": detail, **{k: v for k, v in fields.items() if v is not None}}
            tracer.put(line)


tracing = Tracing()
