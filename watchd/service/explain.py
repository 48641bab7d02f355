"""``watchd explain``: which rules an event on a path would fire, and why the others would not."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from watchd.core.events import EVENT_BITS, FileEvent, describe_mode, event_mask, kind_of
from watchd.core.job import Job
from watchd.core.logs import escape
from watchd.core.rules import Rule, RuleSet
from watchd.match.matcher import REASON_KIND, refusal
from watchd.match.reasons import words


def resolve(path: str) -> tuple[bytes, bool, int | None]:
    """The path as events would name it (its directory resolved, the name itself not followed),
    whether it is a directory, and its mode (None if it does not exist)."""
    raw = os.fsencode(path)
    absolute = os.path.abspath(raw)
    resolved = os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))
    try:
        mode: int | None = os.lstat(resolved).st_mode
    except OSError:
        mode = None
    return resolved, stat.S_ISDIR(mode) if mode is not None else raw.endswith(b"/"), mode


def explain(ruleset: RuleSet, path: bytes, is_dir: bool, event: str | None,
            mode: int | None = None) -> Iterator[str]:
    """Why each rule would or would not fire; ``mode`` is the path's own, if it exists."""
    what = describe_mode(mode) if mode is not None else (
        "does not exist; taken as " + ("a directory" if is_dir else "a file"))
    yield f"{escape(path)} ({what})" + (f", event {event}" if event else "")
    if not ruleset.rules:
        yield "no rules are configured"
    for rule in ruleset.rules:
        yield from _explain_rule(ruleset, rule, path, is_dir, event, mode)


def _explain_rule(
    ruleset: RuleSet, rule: Rule, path: bytes, is_dir: bool, event: str | None,
    mode: int | None,
) -> Iterator[str]:
    title = f"rule {rule.name} ({rule.source})"
    if not rule.enabled:
        yield f"{title}: does not fire: the rule is disabled (enabled: false)"
        return
    roots = [root for root in ruleset.roots if rule in root.rules]
    under = [(root, rel) for root in roots if (rel := root.relative(path)) is not None]
    if not under:
        watched = ", ".join(escape(root.path) for root in roots)
        yield f"{title}: does not fire: the path is not under its paths ({watched})"
        return
    root, relative = under[0]
    bit = event_mask(event) if event else rule.mask
    reason = refusal(rule, bit, is_dir, relative)
    if reason is None and mode is not None and kind_of(mode) not in rule.kinds:
        reason = REASON_KIND
    if reason is not None:
        yield f"{title}: does not fire: {words(reason, rule, relative, event, is_dir)}"
        return
    names = [event] if event else [n for n, b in EVENT_BITS.items() if b & rule.mask]
    yield f"{title}: fires on {', '.join(names)}"
    sample = FileEvent(path, names[0], bit, is_dir)
    values = Job(rule, root, sample).values()
    for index, action in enumerate(rule.actions, 1):
        yield f"  {index}. {action.describe(values)}"
