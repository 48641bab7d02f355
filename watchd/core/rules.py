"""The rules the daemon runs on: immutable objects, grouped by the root they watch.

``watchd.config.compile`` builds a ``RuleSet`` from the validated rules file; a reload
builds a new one and the daemon swaps it in whole. Matching them against events is
``watchd.match.matcher``'s.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import pathspec

from watchd.core.actions import ActionSpec
from watchd.core.problems import Problem

if TYPE_CHECKING:
    from watchd.core.events import FileEvent


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """``settings.metrics``: where the figures are served, where written, how often."""

    listen: tuple[str, int] | None
    textfile: str | None
    interval: float


@dataclass(frozen=True, slots=True)
class Settings:
    """``settings:`` of the main rules file, as the daemon uses them (durations in seconds)."""

    workers: int
    queue_size: int
    log_level: str
    stop_grace: float
    state_dir: str
    snapshot_limit: int
    webhook_backlog: int
    dead_letters: int = 10000
    degraded_poll: float = 60.0
    metrics: MetricsSettings | None = None


@dataclass(frozen=True, slots=True)
class RunAs:
    """A user to run commands as, resolved when the rules load."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def lookup(cls, name: str) -> RunAs:
        entry = pwd.getpwnam(name)
        groups = tuple(os.getgrouplist(name, entry.pw_gid))
        return cls(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """``batch:`` of a rule: collect for ``window`` seconds after the first event, at most
    ``max`` paths in one run."""

    window: float
    max: int


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    name: str
    mask: int
    events: tuple[str, ...]
    recursive: bool
    kinds: frozenset[str]
    paths: tuple[str, ...]  # as written: each is resolved again when a symlink on it changes
    include: pathspec.GitIgnoreSpec | None
    exclude: pathspec.GitIgnoreSpec | None
    enabled: bool
    actions: tuple[ActionSpec, ...]
    source: str
    debounce: float | None = None
    max_parallel: int | None = None
    on_busy: str = "queue"
    ignore_own_writes: bool = False
    include_patterns: tuple[str, ...] | None = None
    exclude_patterns: tuple[str, ...] = ()
    ignore_case: bool = False
    catch_up: bool = True
    existing: str = "ignore"  # or "process": at the rule's first start
    batch: BatchSpec | None = None
    settle: float | None = None
    poll: float | None = None
    # The values ``is_dir`` may have for the rule to fire, from ``kinds``: the hot path's test.
    kind_by_is_dir: frozenset[bool] = frozenset((False, True))

    def subject(self, relative: bytes, is_dir: bool) -> str:
        """What the patterns are matched against: the relative path, ``/`` after a directory."""
        subject = os.fsdecode(relative) + ("/" if is_dir else "")
        return subject.lower() if self.ignore_case else subject


class RuleIndex(Protocol):
    """A root's rules looked up by a path (``watchd.match.matcher.SuffixIndex``)."""

    def candidates(self, relative: bytes) -> list[Rule]: ...


@dataclass(frozen=True, slots=True, eq=False)
class Root:
    """A path some rules watch, with those rules. Events under it are matched against them."""

    path: bytes
    prefix: bytes
    rules: tuple[Rule, ...]
    recursive: bool
    mask: int
    index: RuleIndex | None = None
    # Names on its path whose change can change where it leads: the symlinks it was resolved
    # through, names others may rename (trust.resolve_watched); their directories are watched.
    links: tuple[bytes, ...] = ()
    untrusted: str | None = None  # why it is not followed: a symlink on the way is not trusted

    def candidates(self, relative: bytes) -> tuple[Rule, ...] | list[Rule]:
        """The rules that may fire for ``relative``: all of them, or what the index allows."""
        if self.index is None or not relative:
            return self.rules
        return self.index.candidates(relative)

    def relative(self, path: bytes) -> bytes | None:
        """``path`` relative to this root: ``b""`` for the root itself, None if outside it."""
        if path == self.path:
            return b""
        if path.startswith(self.prefix):
            return path[len(self.prefix) :]
        return None


@dataclass(frozen=True, slots=True, eq=False)
class Scope:
    """The roots whose rules apply to events in one watched directory."""

    roots: tuple[Root, ...]
    mask: int
    recursive: tuple[Root, ...]

    @classmethod
    def of(cls, roots: tuple[Root, ...]) -> Scope:
        mask = 0
        for root in roots:
            mask |= root.mask
        return cls(roots, mask, tuple(root for root in roots if root.recursive))


EMPTY_SCOPE = Scope.of(())


class EventSink(Protocol):
    """Where the event source hands each event, with the scope of its directory."""

    def submit(self, event: FileEvent, scope: Scope) -> bool:
        """Whether a rule matched the event."""


@dataclass(frozen=True)
class RuleSet:
    """Everything the daemon runs on, from one load of the rules: replaced whole on reload."""

    settings: Settings
    rules: tuple[Rule, ...]
    roots: tuple[Root, ...]
    roots_by_path: dict[bytes, Root]
    files: tuple[str, ...]
    # Watched paths that lead through an untrusted symlink, located in the rules files.
    untrusted_paths: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()  # the config's: logged at each load
    _scopes: dict[tuple[Root, ...], Scope] = field(default_factory=dict, repr=False)

    def scope(self, roots: tuple[Root, ...]) -> Scope:
        """The one shared ``Scope`` for these roots (directories share them, to save memory)."""
        scope = self._scopes.get(roots)
        if scope is None:
            scope = self._scopes[roots] = Scope.of(roots) if roots else EMPTY_SCOPE
        return scope
