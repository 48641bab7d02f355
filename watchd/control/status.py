"""``watchd status``: the running daemon's state as one JSON document, and its human form.

The live part is made on the main loop (``live``, from the components' own figures); the
ledger's dead letters are counted on the control socket's thread (``with_ledger``), so that
neither a large ledger nor a slow disk holds the main loop. Every field is in watchd(8).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from watchd import __version__
from watchd.core.logs import escape
from watchd.core.rules import RuleSet
from watchd.core.stats import Counters
from watchd.ledger.writer import Ledger
from watchd.run.dispatch import Dispatcher
from watchd.run.queue import JobQueue
from watchd.run.workers import WorkerPool
from watchd.source.table import WatchTable

T = TypeVar("T")


class Daemon(Protocol):
    """What the status is made of: the daemon as the control socket sees it."""

    config_path: Path
    started: float
    loaded: float
    last_reload: dict[str, object] | None
    reloads: dict[str, int]
    ruleset: RuleSet
    counters: Counters
    dispatcher: Dispatcher
    workers: WorkerPool
    jobs: JobQueue
    ledger: Ledger
    table: WatchTable

    def stats(self) -> dict[str, int]: ...

    def degradations(self, stats: dict[str, int]) -> list[str]: ...

    def ask(self, question: Callable[[], T]) -> T: ...

# Of each rule: its counters (since the start) and what it has in each state now.
RULE_COUNTS = ("matched", "actions_ok", "actions_failed", "actions_skipped", "dropped",
               "retried", "dead_letters", "caught_up", "polled", "webhooks_ok",
               "webhooks_failed", "webhooks_dropped")
RULE_STATES = ("running", "queued", "retrying", "debouncing", "settling", "batching")
WIDTH = 80
UNWATCHED_LISTED = 20  # directories the watch limit refused, named in the document


def live(daemon: Daemon) -> dict[str, Any]:
    """What the daemon's components say now (on the main loop)."""
    stats = daemon.stats()
    held = daemon.dispatcher.by_rule()
    failures = daemon.workers.last_failures
    rules = []
    for rule in daemon.ruleset.rules:
        counts = daemon.counters.of_rule(rule.name)
        states = held.get(rule.name, {})
        failure = failures.get(rule.name)
        rules.append({
            "name": rule.name, "enabled": rule.enabled, "source": rule.source,
            **{name: counts.get(name, 0) for name in RULE_COUNTS},
            **{state: states.get(state, 0) for state in RULE_STATES},
            "last_failure": None if failure is None else {
                "time": failure.time, "path": escape(failure.path),
                "action": failure.failure.action, "error": failure.failure.error,
                "exit_status": failure.failure.status,
                "stderr": _first_line(failure.failure.stderr)},
        })
    refused = list(daemon.table.refused)[:UNWATCHED_LISTED]
    now = time.time()
    return {
        "version": __version__, "pid": os.getpid(), "started": daemon.started,
        "uptime_seconds": round(now - daemon.started, 3),
        "config": {"path": str(daemon.config_path), "loaded": daemon.loaded,
                   "rules": len(daemon.ruleset.rules), "last_reload": daemon.last_reload,
                   "reloads": dict(daemon.reloads)},
        "watches": stats["watches"], "inotify_records": stats["inotify_records"],
        "events": stats["events"], "matched": stats["matched"], "dropped": stats["dropped"],
        "overflows": stats["overflows"], "ledger_failures": stats["ledger_failures"],
        "unwatched": {"count": stats["unwatched"],
                      "polled_every_seconds": daemon.ruleset.settings.degraded_poll,
                      "why": "inotify watch limit (fs.inotify.max_user_watches)",
                      "directories": [escape(path) for path in refused]},
        "degraded": daemon.degradations(stats),
        "actions": {name: stats[f"actions_{name}"] for name in ("ok", "failed", "skipped")},
        "jobs": {state: stats[state] for state in RULE_STATES},
        "ledger": {"file": str(daemon.ledger.file), "pending_writes": stats["ledger_pending"],
                   "problem": daemon.ledger.problem or None, "dead_letters": None,
                   "dead_letters_of_rules_gone": None},
        "webhooks": {name: stats[f"webhooks_{name}"]
                     for name in ("ok", "failed", "waiting", "dropped")},
        "workers": stats["workers"],
        "rules": rules,
    }


def with_ledger(document: dict[str, Any], dead_by_rule: dict[str, int] | None) -> dict[str, Any]:
    """The document with the ledger's dead letters (None: the ledger could not be read)."""
    if dead_by_rule is None:
        return document
    document["ledger"]["dead_letters"] = sum(dead_by_rule.values())
    for rule in document["rules"]:
        rule["dead_letters_kept"] = dead_by_rule.get(rule["name"], 0)
    in_force = {rule["name"] for rule in document["rules"]}
    # A reload that removed a rule leaves its dead letters, which no row of the table shows.
    document["ledger"]["dead_letters_of_rules_gone"] = {
        name: count for name, count in sorted(dead_by_rule.items()) if name not in in_force}
    return document


def _first_line(stderr: bytes | None) -> str | None:
    if not stderr:
        return None
    lines = stderr.strip().splitlines()
    return escape(lines[0][:200]) if lines else None


def render(document: dict[str, Any]) -> Iterator[str]:
    """The human form: fits 80 columns, the way ``systemctl status`` reads (a longer line
    loses its middle; ``--json`` has it whole)."""
    for line in _lines(document):
        yield line if len(line) <= WIDTH else line[: WIDTH // 2 - 1] + "…" + line[
            -(WIDTH - WIDTH // 2):]


def _lines(document: dict[str, Any]) -> Iterator[str]:
    degraded = document["degraded"]
    yield (f"● watchd {document['version']} (pid {document['pid']}): running since "
           f"{_when(document['started'])}; {_duration(document['uptime_seconds'])}"
           + (", DEGRADED" if degraded else ""))
    config = document["config"]
    yield f"     Rules: {config['rules']} rule(s), loaded {_when(config['loaded'])}"
    yield f"            from {config['path']}"
    reload = config["last_reload"]
    if reload is not None:
        said = "ok" if reload["ok"] else "FAILED, previous rules in force"
        yield f"    Reload: {_when(reload['time'])}: {said}"
        if not reload["ok"]:
            yield f"            {reload['error']}"
    yield (f"   Watches: {document['watches']:,}; {document['events']:,} events, "
           f"{document['overflows']:,} overflows, {document['dropped']:,} dropped")
    jobs = document["jobs"]
    ledger = document["ledger"]
    dead = ledger["dead_letters"]
    yield (f"      Jobs: {jobs['running']} running, {jobs['queued']} queued, "
           f"{jobs['retrying']} retrying, {_held(jobs)} held"
           + (f"; {dead} dead letter(s)" if dead else ""))
    if ledger["problem"]:
        yield f"    Ledger: {ledger['problem']}"
    hooks = document["webhooks"]
    if any(hooks.values()):
        yield (f"  Webhooks: {hooks['ok']} ok, {hooks['failed']} failed, {hooks['waiting']} "
               f"waiting, {hooks['dropped']} dropped")
    for line in degraded:
        yield f"  Degraded: {line}"
    for path in document["unwatched"]["directories"]:
        yield f"            unwatched, polled: {path}"
    yield ""
    yield from _rule_table(document["rules"])
    if dead:
        yield ""
        yield "Dead letters: watchd jobs list --dead; run again: watchd jobs retry ID"
    gone = ledger.get("dead_letters_of_rules_gone")
    if gone:
        yield ("Dead letters of rules no longer in force: "
               + ", ".join(f"{name} {count}" for name, count in gone.items()))
        yield "  (they cannot run again; drop: watchd jobs drop ID)"


_COLUMNS = (("MATCHED", 8), ("OK", 8), ("FAILED", 7), ("RUN", 4), ("QUEUED", 7),
            ("RETRY", 6), ("HELD", 6), ("DEAD", 5))


def _rule_table(rules: list[dict[str, Any]]) -> Iterator[str]:
    yield f"{'RULE':<24}" + "".join(f"{title:>{width}}" for title, width in _COLUMNS)
    for rule in rules:
        name = rule["name"] if rule["enabled"] else f"{rule['name']} (off)"
        values = (rule["matched"], rule["actions_ok"], rule["actions_failed"], rule["running"],
                  rule["queued"], rule["retrying"], _held(rule), rule.get("dead_letters_kept", 0))
        yield f"{name[:23]:<24}" + "".join(
            f"{value:>{width},}" for value, (_, width) in zip(values, _COLUMNS, strict=True))
        failure = rule["last_failure"]
        if failure is not None:
            said = f"{failure['error']}" + (f": {failure['stderr']}" if failure["stderr"] else "")
            yield f"  last failure {_when(failure['time'], short=True)}: {said}"
            yield f"    of {failure['path']}"


def _held(figures: dict[str, Any]) -> int:
    """Waiting on a stage: debounce, settle or batch."""
    return int(figures["debouncing"] + figures["settling"] + figures["batching"])


def _when(epoch: float | None, short: bool = False) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%H:%M:%S" if short else "%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{minutes}min"] * bool(
        minutes)
    return " ".join(parts or [f"{seconds}s"]) + " ago"
