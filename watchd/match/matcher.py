"""Which rules fire for an event: the hot path, run on the notifier thread for every event.

Each rule is checked cheapest test first; a root with many rules looks its candidates up
by name suffix (``SuffixIndex``). ``refusal`` says why a rule does not fire, in constants
that ``watchd explain`` words.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from watchd.core.events import FileEvent
from watchd.core.rules import Root, Rule, Scope

# Why a rule does not fire for an event; ``match`` returns these constants, ``explain`` words them.
REASON_EVENT = "event"
REASON_KIND = "kind"
REASON_DEPTH = "depth"
REASON_INCLUDE = "include"
REASON_EXCLUDE = "exclude"


def refusal(rule: Rule, bit: int, is_dir: bool, relative: bytes) -> str | None:
    """None if this rule fires for the event, else the reason it does not."""
    if not bit & rule.mask:
        return REASON_EVENT
    # Only dir or not is known here; what a path that is not a directory is (a regular
    # file, a symlink, a FIFO…) is told by the lstat just before the actions run.
    if is_dir not in rule.kind_by_is_dir:
        return REASON_KIND
    if not relative:
        return None
    if not rule.recursive and b"/" in relative:
        return REASON_DEPTH
    if rule.include is None and rule.exclude is None:
        return None
    subject = rule.subject(relative, is_dir)
    if rule.include is not None and not rule.include.match_file(subject):
        return REASON_INCLUDE
    if rule.exclude is not None and rule.exclude.match_file(subject):
        return REASON_EXCLUDE
    return None


INDEX_FROM = 16  # rules on one root; below it, trying each is as fast as looking up
_GLOB = frozenset(b"*?[]\\!/")


def _suffixes(include: tuple[str, ...] | None) -> tuple[bytes, ...] | None:
    """``(b"csv", …)`` if every include pattern is ``*.csv``-like, else None."""
    if not include:
        return None
    found = []
    for pattern in include:
        if not pattern.startswith("*.") or any(c in _GLOB for c in pattern[2:].encode()):
            return None
        found.append(pattern[2:].encode())
    return tuple(found)


@dataclass(frozen=True, slots=True, eq=False)
class SuffixIndex:
    """A root's rules by the name suffixes their include patterns need (``*.csv`` → csv), so
    that an event is tried only against rules whose patterns could match it, plus the rest.

    ``*.csv`` matches a name ending in ``.csv`` at any depth, and everything below a
    directory so named: every suffix of every component of the path is looked up.
    """

    always: tuple[tuple[int, Rule], ...]
    by_suffix: dict[bytes, tuple[tuple[int, Rule], ...]]

    @classmethod
    def of(cls, rules: tuple[Rule, ...]) -> SuffixIndex:
        always: list[tuple[int, Rule]] = []
        by_suffix: dict[bytes, list[tuple[int, Rule]]] = {}
        for position, rule in enumerate(rules):
            # A name's case is not folded for the look-up: such rules are always tried.
            suffixes = None if rule.ignore_case else _suffixes(rule.include_patterns)
            if suffixes is None:
                always.append((position, rule))
            for suffix in dict.fromkeys(suffixes or ()):
                by_suffix.setdefault(suffix, []).append((position, rule))
        return cls(tuple(always), {k: tuple(v) for k, v in by_suffix.items()})

    def candidates(self, relative: bytes) -> list[Rule]:
        found = dict(self.always)
        for component in relative.split(b"/"):
            dot = component.find(b".")
            while dot >= 0:
                found.update(self.by_suffix.get(component[dot + 1 :], ()))
                dot = component.find(b".", dot + 1)
        return [found[position] for position in sorted(found)]


def match(scope: Scope, event: FileEvent) -> Iterator[tuple[Rule, Root]]:
    """Each rule (once, with the root it came under) that fires for ``event`` in ``scope``."""
    if not event.bit & scope.mask:
        return
    # A rule listed under two nested roots fires once, for the first (the deepest).
    fired: set[str] | None = set() if len(scope.roots) > 1 else None
    for root in scope.roots:
        if not event.bit & root.mask:
            continue
        relative = root.relative(event.path)
        if relative is None:
            continue
        for rule in root.candidates(relative):
            if refusal(rule, event.bit, event.is_dir, relative) is not None:
                continue
            if fired is not None:
                if rule.name in fired:
                    continue
                fired.add(rule.name)
            yield rule, root
