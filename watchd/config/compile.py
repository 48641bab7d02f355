"""config → rules: compile the validated rules file into the immutable ``RuleSet``.

Each watched path is resolved here, through trusted symlinks only; ``reresolve`` does it
again when a symlink on a watched path changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pathspec

from watchd.actions.registry import compile_action
from watchd.config import schema
from watchd.config.loader import Config, SourcedRule, load
from watchd.config.schema import ANY_KIND, state_dir_of
from watchd.core.actions import ActionSpec
from watchd.core.events import DIR, KINDS, event_mask
from watchd.core.problems import ConfigError, Problem
from watchd.core.rules import BatchSpec, MetricsSettings, Root, Rule, RuleSet, Settings
from watchd.match.matcher import INDEX_FROM, SuffixIndex
from watchd.security.trust import Resolution, resolve_watched


def read_rules(path: Path, for_daemon: bool = False) -> RuleSet:
    """Load, validate and compile the rules; ConfigError if any of it is wrong, or, for the
    daemon, if this machine cannot run them (``check`` refuses them too; ``explain`` and
    ``webhooks`` take them)."""
    config = load(path)
    if for_daemon:
        refuse_what_cannot_run_here(config)
    return compile_rules(config)


def refuse_what_cannot_run_here(config: Config) -> None:
    """ConfigError, the problems as errors, if the daemon cannot run these valid rules here
    (systemd_run without systemd)."""
    refused = [replace(problem, warning=False) for problem in config.warnings
               if problem.refused_by_daemon]
    if refused:
        raise ConfigError(refused)


def compile_rules(config: Config) -> RuleSet:
    """Compile a validated config; each root is resolved here, through trusted symlinks only."""
    rules = tuple(_rule(sourced) for sourced in config.rules)
    resolutions = _resolve_paths(rules)
    roots = _roots(rules, resolutions)
    return RuleSet(
        settings=Settings(**{name: getattr(config.settings, name)
                              for name in type(config.settings).model_fields
                              if name not in ("state_dir", "metrics")},
                          state_dir=state_dir_of(config.settings),
                          metrics=_metrics_of(config.settings.metrics)),
        rules=rules,
        roots=roots,
        roots_by_path={root.path: root for root in roots},
        files=config.files,
        untrusted_paths=tuple(_untrusted_paths(config, resolutions)),
        warnings=config.warnings,
    )


def _metrics_of(metrics: schema.Metrics | None) -> MetricsSettings | None:
    if metrics is None or (metrics.listen is None and metrics.textfile is None):
        return None
    return MetricsSettings(schema.listen_address(metrics.listen) if metrics.listen else None,
                           metrics.textfile, metrics.interval)


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



def _rule(sourced: SourcedRule) -> Rule:
    model = sourced.model
    mask = 0
    for name in model.events:
        mask |= event_mask(name)
    kinds = frozenset(KINDS) if ANY_KIND in model.kind else frozenset(model.kind)
    actions = tuple(compile_action(action) for action in model.actions)
    return Rule(
        name=model.name,
        mask=mask,
        events=tuple(model.events),
        recursive=model.recursive,
        kinds=kinds,
        paths=tuple(model.paths),
        include=_spec(model.include, model.ignore_case),
        exclude=_spec(model.exclude, model.ignore_case),
        enabled=model.enabled,
        actions=actions,
        source=f"{sourced.file}:{sourced.line}",
        debounce=model.debounce or None,
        max_parallel=_max_parallel(model.max_parallel, actions),
        on_busy=model.on_busy,
        ignore_own_writes=model.ignore_own_writes,
        include_patterns=tuple(model.include) if model.include else None,
        exclude_patterns=tuple(model.exclude),
        ignore_case=model.ignore_case,
        catch_up=model.catch_up,
        existing=model.existing,
        settle=model.settle or None,
        poll=model.poll,
        batch=BatchSpec(model.batch.window, model.batch.max) if model.batch else None,
        kind_by_is_dir=frozenset(kind == DIR for kind in kinds),
    )


def reresolve(ruleset: RuleSet) -> RuleSet | None:
    """The same rules with every path resolved again; None if none leads elsewhere now."""
    roots = _roots(ruleset.rules, _resolve_paths(ruleset.rules))
    if [_reach(root) for root in roots] == [_reach(root) for root in ruleset.roots]:
        return None
    # The load's located untrusted paths were said at the load; the roots say them now.
    return replace(ruleset, roots=roots, roots_by_path={root.path: root for root in roots},
                   untrusted_paths=(), _scopes={})


def _max_parallel(written: int | None, actions: tuple[ActionSpec, ...]) -> int | None:
    """A rule with a webhook runs one job at a time unless it says otherwise: its deliveries
    then go out in the order of the events, whatever the number of workers."""
    if written is None and any(action.keeps_order for action in actions):
        return 1
    return written


def _spec(patterns: list[str] | None, ignore_case: bool) -> pathspec.GitIgnoreSpec | None:
    """The patterns compiled; for ``ignore_case`` lower-cased, as the names they meet are."""
    if not patterns:
        return None
    return pathspec.GitIgnoreSpec.from_lines([p.lower() for p in patterns] if ignore_case
                                             else patterns)
