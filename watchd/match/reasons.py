"""Why a rule does or does not fire, in words: for ``watchd explain`` and ``watchd trace``."""

from __future__ import annotations

from collections.abc import Iterator

import pathspec

from watchd.core.events import KINDS, FileEvent
from watchd.core.logs import escape
from watchd.core.rules import Rule, Scope
from watchd.match.matcher import (
    REASON_DEPTH,
    REASON_EVENT,
    REASON_EXCLUDE,
    REASON_INCLUDE,
    REASON_KIND,
    refusal,
)


def words(reason: str, rule: Rule, relative: bytes, event: str | None, is_dir: bool) -> str:
    shown = escape(relative)
    return {
        REASON_EVENT: f"event {event} is not among its events ({', '.join(rule.events)})",
        REASON_KIND: "it takes only kind: " + ", ".join(k for k in KINDS if k in rule.kinds),
        REASON_DEPTH: f"{shown!r} is in a subdirectory and the rule is not recursive",
        REASON_INCLUDE: f"no include pattern matches {shown!r}",
        REASON_EXCLUDE: f"exclude pattern {_excluding(rule, relative, is_dir)!r} matches "
                        f"{shown!r}",
    }[reason]


def _excluding(rule: Rule, relative: bytes, is_dir: bool) -> str:
    """The exclude pattern that decided: the last one matching (a later ``!`` one would have
    taken the path back)."""
    subject = rule.subject(relative, is_dir)
    deciding = ""
    for pattern in rule.exclude_patterns:
        written = pattern.lower() if rule.ignore_case else pattern
        if pathspec.GitIgnoreSpec.from_lines([written]).match_file(subject):
            deciding = pattern
    return deciding


def decisions(scope: Scope, event: FileEvent) -> Iterator[tuple[Rule, str | None]]:
    """Each rule of the event's scope, once, and why it does not fire (None: it fires), as
    ``match`` decides, in words."""
    seen: set[str] = set()
    for root in scope.roots:
        relative = root.relative(event.path)
        if relative is None:
            continue
        for rule in root.rules:
            if rule.name in seen:
                continue
            seen.add(rule.name)
            reason = refusal(rule, event.bit, event.is_dir, relative)
            yield rule, None if reason is None else words(reason, rule, relative, event.event,
                                                          event.is_dir)
