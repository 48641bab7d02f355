"""Rules compiled for the daemon: immutable objects, grouped by the root they watch.

``compile_rules`` turns a validated ``Config`` into a ``RuleSet``; a reload builds
a new ``RuleSet`` and swaps it in whole. ``match`` is the hot path: it runs on the
notifier thread for every event, so each rule is checked cheapest test first.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pathspec

from watchd.config import Config, Problem, SourcedRule
from watchd.events import DIR, KINDS, FileEvent, event_mask
from watchd.models import ANY_KIND, OWNER, CommandAction, Settings, WebhookAction
from watchd.models import Rule as RuleModel
from watchd.placeholders import Template, parse_template
from watchd.secrets import SigningKey
from watchd.trust import Resolution, resolve_watched


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
class Command:
    """A command action ready to run: argv templates and how to run them."""

    argv: tuple[Template, ...]
    program: str  # command[0], a literal path: its trust is checked again before every run
    timeout: float
    user: RunAs | None
    cwd: bytes | None
    env: tuple[tuple[bytes, bytes], ...]
    as_owner: bool = False  # user: '@owner': the user comes from the file, just before the run
    allow_root_owner: bool = False

    @classmethod
    def compile(cls, model: CommandAction) -> Command:
        as_owner = model.user == OWNER
        return cls(
            argv=tuple(parse_template(arg) for arg in model.command),
            program=model.command[0],
            timeout=model.timeout,
            user=RunAs.lookup(model.user) if model.user and not as_owner else None,
            cwd=os.fsencode(model.cwd) if model.cwd else None,
            env=tuple((os.fsencode(k), os.fsencode(v)) for k, v in model.env.items()),
            as_owner=as_owner,
            allow_root_owner=model.allow_root_owner,
        )


@dataclass(frozen=True, slots=True)
class Webhook:
    """A webhook action ready to deliver: where, how signed, how hard to try."""

    url: str
    key: SigningKey | None
    timeout: float
    retries: int
    backoff: float
    headers: tuple[tuple[str, str], ...]

    @classmethod
    def compile(cls, model: WebhookAction) -> Webhook:
        spec = model.webhook
        return cls(spec.url, spec.secret_file, spec.timeout, spec.retries, spec.backoff,
                   tuple(spec.headers.items()))


Action = Command | Webhook


def _compile_action(model: CommandAction | WebhookAction) -> Action:
    if isinstance(model, WebhookAction):
        return Webhook.compile(model)
    return Command.compile(model)


# Why a rule does not fire for an event; ``match`` returns these constants, ``explain`` words them.
REASON_EVENT = "event"
REASON_KIND = "kind"
REASON_DEPTH = "depth"
REASON_INCLUDE = "include"
REASON_EXCLUDE = "exclude"


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    name: str
    mask: int
    events: tuple[str, ...]
    recursive: bool
    kinds: frozenset[str]
    paths: tuple[str, ...]  # as written: each is resolved again when a symlink on it changes
    include: pathspec.PathSpec | None
    exclude: pathspec.PathSpec | None
    enabled: bool
    actions: tuple[Action, ...]
    source: str
    debounce: float | None = None
    max_parallel: int | None = None
    on_busy: str = "queue"
    ignore_own_writes: bool = False
    include_patterns: tuple[str, ...] | None = None
    exclude_patterns: tuple[str, ...] = ()
    ignore_case: bool = False
    # The values ``is_dir`` may have for the rule to fire, from ``kinds``: the hot path's test.
    kind_by_is_dir: frozenset[bool] = frozenset((False, True))

    @classmethod
    def compile(cls, sourced: SourcedRule) -> Rule:
        model = sourced.model
        mask = 0
        for name in model.events:
            mask |= event_mask(name)
        kinds = frozenset(KINDS) if ANY_KIND in model.kind else frozenset(model.kind)
        return cls(
            name=model.name,
            mask=mask,
            events=tuple(model.events),
            recursive=model.recursive,
            kinds=kinds,
            paths=tuple(model.paths),
            include=_spec(model.include, model.ignore_case),
            exclude=_spec(model.exclude, model.ignore_case),
            enabled=model.enabled,
            actions=tuple(_compile_action(action) for action in model.actions),
            source=f"{sourced.file}:{sourced.line}",
            debounce=model.debounce or None,
            max_parallel=_max_parallel(model),
            on_busy=model.on_busy,
            ignore_own_writes=model.ignore_own_writes,
            include_patterns=tuple(model.include) if model.include else None,
            exclude_patterns=tuple(model.exclude),
            ignore_case=model.ignore_case,
            kind_by_is_dir=frozenset(kind == DIR for kind in kinds),
        )

    def subject(self, relative: bytes, is_dir: bool) -> str:
        """What the patterns are matched against: the relative path, ``/`` after a directory."""
        subject = os.fsdecode(relative) + ("/" if is_dir else "")
        return subject.lower() if self.ignore_case else subject

    def refusal(self, bit: int, is_dir: bool, relative: bytes) -> str | None:
        """None if this rule fires for the event, else the reason it does not."""
        if not bit & self.mask:
            return REASON_EVENT
        # Only dir or not is known here; what a path that is not a directory is (a regular
        # file, a symlink, a FIFO…) is told by the lstat just before the actions run.
        if is_dir not in self.kind_by_is_dir:
            return REASON_KIND
        if not relative:
            return None
        if not self.recursive and b"/" in relative:
            return REASON_DEPTH
        if self.include is None and self.exclude is None:
            return None
        subject = self.subject(relative, is_dir)
        if self.include is not None and not self.include.match_file(subject):
            return REASON_INCLUDE
        if self.exclude is not None and self.exclude.match_file(subject):
            return REASON_EXCLUDE
        return None


@dataclass(frozen=True, slots=True, eq=False)
class Root:
    """A path some rules watch, with those rules. Events under it are matched against them."""

    path: bytes
    prefix: bytes
    rules: tuple[Rule, ...]
    recursive: bool
    mask: int
    index: SuffixIndex | None = None
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

    def reresolved(self) -> RuleSet | None:
        """The same rules with every path resolved again; None if none leads elsewhere now."""
        roots = _roots(self.rules, _resolve_paths(self.rules))
        if [_reach(root) for root in roots] == [_reach(root) for root in self.roots]:
            return None
        # The load's located untrusted paths were said at the load; the roots say them now.
        return replace(self, roots=roots, roots_by_path={root.path: root for root in roots},
                       untrusted_paths=(), _scopes={})


def compile_rules(config: Config) -> RuleSet:
    """Compile a validated config; each root is resolved here, through trusted symlinks only."""
    rules = tuple(Rule.compile(sourced) for sourced in config.rules)
    resolutions = _resolve_paths(rules)
    roots = _roots(rules, resolutions)
    return RuleSet(
        settings=config.settings,
        rules=rules,
        roots=roots,
        roots_by_path={root.path: root for root in roots},
        files=config.files,
        untrusted_paths=tuple(_untrusted_paths(config, resolutions)),
        warnings=config.warnings,
    )


def _resolve_paths(rules: tuple[Rule, ...]) -> dict[str, Resolution]:
    return {path: resolve_watched(path) for rule in rules if rule.enabled for path in rule.paths}


def _roots(rules: tuple[Rule, ...], resolutions: dict[str, Resolution]) -> tuple[Root, ...]:
    """The rules grouped by the path each of theirs leads to."""
    grouped: dict[bytes, tuple[list[Rule], list[Resolution]]] = {}
    for rule in rules:
        for path in rule.paths if rule.enabled else ():
            resolution = resolutions[path]
            members, ways = grouped.setdefault(os.fsencode(resolution.path), ([], []))
            if rule not in members:
                members.append(rule)
            ways.append(resolution)
    return tuple(_root(path, tuple(members), ways) for path, (members, ways) in grouped.items())


def _untrusted_paths(config: Config, resolutions: dict[str, Resolution]) -> Iterator[Problem]:
    for sourced in config.rules:
        for index, path in enumerate(sourced.model.paths if sourced.model.enabled else ()):
            reason = resolutions[path].untrusted
            if reason is not None:
                line, column = sourced.path_places[index]
                yield Problem(sourced.file, line, column,
                              f"rules[{sourced.index}].paths[{index}]: {reason}; watchd will "
                              "not follow it (point the rule at the real directory, or make "
                              "the symlink root's)")


def _reach(root: Root) -> tuple[bytes, tuple[bytes, ...], str | None]:
    return root.path, root.links, root.untrusted


def _root(path: bytes, rules: tuple[Rule, ...], ways: list[Resolution]) -> Root:
    mask = 0
    for rule in rules:
        mask |= rule.mask
    return Root(
        path=path,
        prefix=path.rstrip(b"/") + b"/",
        rules=rules,
        recursive=any(rule.recursive for rule in rules),
        mask=mask,
        index=SuffixIndex.of(rules) if len(rules) >= INDEX_FROM else None,
        links=tuple(dict.fromkeys(os.fsencode(link) for way in ways for link in way.links)),
        untrusted=next((way.untrusted for way in ways if way.untrusted), None),
    )


INDEX_FROM = 16  # rules on one root; below it, trying each is as fast as looking up
_GLOB = frozenset(b"*?[]\\!/")


def _max_parallel(model: RuleModel) -> int | None:
    """A rule with a webhook runs one job at a time unless it says otherwise: its deliveries
    then go out in the order of the events, whatever the number of workers."""
    if model.max_parallel is None and any(isinstance(a, WebhookAction) for a in model.actions):
        return 1
    return model.max_parallel


def _spec(patterns: list[str] | None, ignore_case: bool) -> pathspec.PathSpec | None:
    """The patterns compiled; for ``ignore_case`` lower-cased, as the names they meet are."""
    if not patterns:
        return None
    return pathspec.GitIgnoreSpec.from_lines([p.lower() for p in patterns] if ignore_case
                                             else patterns)


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
            if rule.refusal(event.bit, event.is_dir, relative) is not None:
                continue
            if fired is not None:
                if rule.name in fired:
                    continue
                fired.add(rule.name)
            yield rule, root
