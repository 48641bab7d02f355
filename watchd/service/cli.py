"""The command line: ``watchd run | check | explain | schema | status | trace | webhooks |
jobs``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from watchd import __version__
from watchd.config.compile import compile_rules, read_rules, refuse_what_cannot_run_here
from watchd.config.loader import DEFAULT_CONFIG, load, state_dir_in
from watchd.config.schema import RulesFile
from watchd.control import status
from watchd.control.client import NoDaemon, ask, stream
from watchd.control.protocol import DEFAULT_SOCKET, SOCKET_VARIABLE, ProtocolError, socket_path
from watchd.core import logs
from watchd.core.events import event_mask
from watchd.core.logs import escape
from watchd.core.problems import ConfigError
from watchd.core.rules import RuleSet
from watchd.ledger import store
from watchd.outbox.deadletters import (
    change_dead_letters,
    jobs_on_disk,
    ledger_listing,
    listing,
    replay,
    unlisted,
)
from watchd.outbox.spool import DirectWriter, Spool
from watchd.service.daemon import Daemon
from watchd.service.explain import explain, resolve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watchd", description="Run commands when files change, by rules written in YAML."
    )
    parser.add_argument("--version", action="version", version=f"watchd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="PATH",
                         help=f"the main rules file (default: {DEFAULT_CONFIG})")
        return sub

    run_parser = with_socket(with_config(commands.add_parser(
        "run", help="run the daemon in the foreground")))
    run_parser.add_argument("--log-target", choices=["auto", "journal", "stderr"], default="auto",
                            help="where to log (default auto: the journal when stderr is "
                                 "connected to it, else stderr)")
    check_parser = with_config(commands.add_parser("check", help="validate the rules and drop-ins"))
    check_parser.add_argument("--strict", action="store_true",
                              help="treat warnings (commands open to injection) as errors")
    explain_parser = with_config(
        commands.add_parser("explain", help="which rules an event on PATH would fire, and why")
    )
    explain_parser.add_argument("path", metavar="PATH")
    explain_parser.add_argument("--event", metavar="NAME", type=_event_name,
                                help="the event (default: each rule's own events)")
    commands.add_parser("schema", help="print the JSON Schema of the rules file")
    status_parser = with_socket(commands.add_parser(
        "status", help="the running daemon's state: rules, jobs, watches, what is degraded"))
    status_parser.add_argument("--json", action="store_true", help="one JSON document "
                               "(its fields are in watchd(8))")
    trace_parser = with_socket(commands.add_parser(
        "trace", help="each event and what each rule decided, live, until Ctrl-C"))
    trace_parser.add_argument("--rule", action="append", default=[], metavar="NAME",
                              help="only this rule's decisions (again for more rules)")
    trace_parser.add_argument("--json", action="store_true", help="one JSON object a line")
    trace_parser.add_argument("paths", nargs="*", metavar="PATH",
                              help="only events on these paths, or below these directories")
    webhooks = commands.add_parser("webhooks", help="webhook deliveries waiting, and dead letters")
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", required=True,
                                               metavar="COMMAND")
    with_config(webhook_commands.add_parser(
        "list", help="deliveries waiting in the spool, and every dead letter"))
    replay_parser = with_config(webhook_commands.add_parser(
        "replay", help="send dead letters again, one attempt each, with the rules as they are"))
    chosen = replay_parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("ids", nargs="*", default=[], metavar="ID", help="dead letters to send")
    chosen.add_argument("--all", action="store_true", help="every dead letter")
    _jobs_parser(commands, with_config)
    return parser


def with_socket(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub.add_argument("--socket", metavar="PATH", default=None,
                     help=f"the control socket (default: ${SOCKET_VARIABLE}, else "
                          f"{DEFAULT_SOCKET})")
    return sub


def _jobs_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                 with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
                 ) -> None:
    jobs = commands.add_parser("jobs", help="jobs in the ledger: queued, running, retrying, "
                               "and dead letters")
    job_commands = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND")
    for parser in (jobs, with_socket(with_config(job_commands.add_parser(
            "list", help="every job in the ledger (the default)")))):
        parser.add_argument("--dead", action="store_true", help="only the dead letters")
        parser.add_argument("--json", action="store_true", help="one JSON document")
    with_socket(with_config(jobs))
    for name, what in (("retry", "run dead letters again, from the action that failed"),
                       ("drop", "forget dead letters")):
        sub = with_socket(with_config(job_commands.add_parser(name, help=what)))
        chosen = sub.add_mutually_exclusive_group(required=True)
        chosen.add_argument("ids", nargs="*", default=[], type=_dead_letter_id, metavar="ID",
                            help="the dead letters' ids: a job's (each dead letter of the "
                                 "job), or a webhook delivery's")
        chosen.add_argument("--all", action="store_true", help="every dead letter")


def _dead_letter_id(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _event_name(name: str) -> str:
    try:
        event_mask(name)
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown event {name!r}") from None
    return name.lower().removeprefix("in_")


def main(argv: list[str] | None = None) -> int:
    """The command line; a closed pipe, a Ctrl-C or a system error is said in words, never
    as a traceback (those are for bugs)."""
    try:
        return _command(argv)
    except BrokenPipeError:
        # The reader went away (| head): nothing more can be said, and exiting must not try
        # to flush to it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as error:
        print(f"watchd: {error}", file=sys.stderr)
        return 1


EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell shows for a command ended by SIGPIPE
EXIT_INTERRUPTED = 128 + signal.SIGINT


def _command(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        logs.setup(target=args.log_target)
        try:
            return Daemon(args.config, args.socket).run()
        finally:
            logs.shutdown()
    if args.command == "check":
        return _check(args.config, args.strict)
    if args.command == "explain":
        return _explain(args.config, args.path, args.event)
    if args.command == "webhooks":
        return _webhooks(args)
    if args.command == "jobs":
        return _talking(lambda: _jobs(args))
    if args.command == "status":
        return _status(args)
    if args.command == "trace":
        return _trace(args)
    print(json.dumps(RulesFile.model_json_schema(), indent=2))
    return 0


def _check(path: Path, strict: bool = False) -> int:
    try:
        config = load(path)
        refuse_what_cannot_run_here(config)
        ruleset = compile_rules(config)
    except ConfigError as error:
        _print_problems(error)
        print(f"{len(error.problems)} error(s): nothing applied", file=sys.stderr)
        return 1
    for warning in ruleset.warnings:
        print(warning, file=sys.stderr)
    # Not a config error to the daemon (a user could then keep it from starting), which
    # watches the rest and says DEGRADED; an error here, for the admin to fix.
    _print_problems(ConfigError(list(ruleset.untrusted_paths)))
    if ruleset.untrusted_paths:
        print(f"{len(ruleset.untrusted_paths)} error(s): the daemon would not watch these "
              "paths", file=sys.stderr)
    if strict and ruleset.warnings:
        print(f"{len(ruleset.warnings)} warning(s), errors with --strict", file=sys.stderr)
    if ruleset.untrusted_paths or (strict and ruleset.warnings):
        return 1
    enabled = sum(rule.enabled for rule in ruleset.rules)
    print(f"{path}: OK: {len(ruleset.rules)} rule(s), {enabled} enabled, "
          f"from {len(config.files)} file(s)")
    for rule, sourced in zip(ruleset.rules, config.rules, strict=True):
        state = "" if rule.enabled else " (disabled)"
        print(f"  {rule.name}{state}  {rule.source}")
        print(f"    paths: {', '.join(sourced.model.paths)}"
              + (" (recursive)" if rule.recursive else ""))
        print(f"    events: {', '.join(rule.events)}; actions: {len(rule.actions)}")
    for root in ruleset.roots:
        if root.untrusted is None and not os.path.lexists(root.path):
            print(f"  note: {escape(root.path)} does not exist yet; it is watched once it appears")
    return 0


def _explain(path: Path, target: str, event: str | None) -> int:
    try:
        ruleset = read_rules(path)
    except ConfigError as error:
        _print_problems(error)
        return 1
    resolved, is_dir, mode = resolve(target)
    for line in explain(ruleset, resolved, is_dir, event, mode):
        print(line)
    return 0



def _webhooks(args: argparse.Namespace) -> int:
    if args.webhooks_command != "list" and not args.ids and not args.all:
        print("name the dead letters to send, or --all", file=sys.stderr)
        return 2
    listing_only = args.webhooks_command == "list"
    read = _rules_or_state_dir(args.config, needs_rules=not listing_only)
    if read is None:
        return 1
    ruleset, state_dir = read
    try:
        connection = _open_ledger(state_dir, writable=not listing_only)
    except sqlite3.Error as error:
        print(f"watchd: cannot read the ledger in {state_dir}: {error}", file=sys.stderr)
        return 1
    if listing_only:
        if connection is not None:
            connection.close()
        for line in listing(Spool(state_dir)):
            print(line)
        return 0
    failed = 0
    spool = Spool(state_dir, DirectWriter(connection) if connection else None)
    assert ruleset is not None  # a replay needs the rules
    for sent, line in replay(spool, ruleset, args.ids):
        print(line, file=sys.stdout if sent else sys.stderr)
        failed += not sent
    return 1 if failed else 0


EXIT_NO_DAEMON = 3


def _talking(talk: Callable[[], int]) -> int:
    """``talk`` to the daemon; in words, with its exit status, why it could not."""
    try:
        return talk()
    except NoDaemon as error:
        print(f"watchd: {error}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except ProtocolError as error:
        print(f"watchd: the daemon refused: {error}", file=sys.stderr)
        return 1


def _status(args: argparse.Namespace) -> int:
    def show() -> int:
        document = ask(socket_path(args.socket), "status")
        if args.json:
            print(json.dumps(document, indent=1))
        else:
            for line in status.render(document):  # type: ignore[arg-type]
                print(line)
        return 0
    return _talking(show)


def _trace(args: argparse.Namespace) -> int:
    """Each trace line as it comes, until Ctrl-C (exit 0) or the daemon stops (exit 1)."""
    def follow() -> int:
        lines = stream(socket_path(args.socket), "trace", rules=args.rule,
                       paths=[os.path.abspath(path) for path in args.paths])
        next(lines)  # attached: what follows is traced
        print(f"tracing {', '.join(args.rule) or 'every rule'}"
              + (f" on {', '.join(args.paths)}" if args.paths else "")
              + "; Ctrl-C ends", file=sys.stderr, flush=True)
        try:
            for message in lines:
                print(json.dumps(message) if args.json else _trace_line(message), flush=True)
        except KeyboardInterrupt:
            return 0
        print("watchd: the daemon stopped", file=sys.stderr)
        return 1
    return _talking(follow)


def _trace_line(message: dict[str, object]) -> str:
    if "dropped" in message:
        return f"... {message['dropped']} trace line(s) lost: this reader was too slow"
    line: dict[str, object] = message["trace"]  # type: ignore[assignment]
    when = float(line["time"])  # type: ignore[arg-type]
    stamp = time.strftime("%H:%M:%S", time.localtime(when)) + f".{int(when % 1 * 1000):03d}"
    if line["rule"] is None:
        said = f"{stamp} {line['event']} {line['path']}"
        if line.get("src_path"):
            said += f" (from {line['src_path']})"
    else:
        said = f"{stamp}   {line['rule']}: {line['decision']}"
    extra = [f"{name}={line[name]}" for name in ("job", "try", "exit_status", "duration_ms",
                                                 "count") if name in line]
    detail = str(line.get("detail") or "")
    return said + (f": {detail}" if detail else "") + (f" ({', '.join(extra)})" if extra else "")


def _jobs(args: argparse.Namespace) -> int:
    """``watchd jobs``: through the running daemon (which lists the jobs as it holds them,
    and runs a dead letter asked for again at once), else on the ledger directly (a daemon
    started later runs what ``retry`` asked for)."""
    command = args.jobs_command or "list"
    listing_only = command == "list"
    if not listing_only and not args.ids and not args.all:
        print("name the dead letters, or --all", file=sys.stderr)
        return 2
    ids = None if listing_only or args.all else args.ids
    dead, as_json = listing_only and args.dead, listing_only and args.json
    try:
        answered = cast(dict[str, Any], ask(
            socket_path(args.socket), "jobs", dead=dead, json=as_json,
            change=None if listing_only else command, ids=ids))
        # A daemon older than this command lists where asked to change: it is done here.
        if listing_only or answered.get("change") == command:
            return _said(command, answered["lines"], answered.get("stderr", []))
    except NoDaemon as error:  # then on the ledger directly, below
        if args.socket:  # a socket named, and no daemon there: said, not silent
            print(f"watchd: {error}; the ledger of {args.config} is read directly",
                  file=sys.stderr)
    read = _rules_or_state_dir(args.config, needs_rules=command == "retry")
    if read is None:
        return 1
    ruleset, state_dir = read
    try:
        connection = _open_ledger(state_dir, writable=not listing_only)
        if listing_only:
            damaged: list[store.DamagedRow] = []
            rows, deliveries = (jobs_on_disk(connection, dead, damaged) if connection
                                else ([], []))
            _said(command, list(ledger_listing(rows, deliveries, as_json)),
                  [f"watchd: {note}" for note in unlisted(store.path_in(state_dir), damaged)])
            return 1 if damaged else 0
        return _said(command, *change_dead_letters(connection, command, ids, ruleset))
    except sqlite3.Error as error:
        print(f"watchd: cannot read the ledger in {state_dir}: {error}", file=sys.stderr)
        return 1


def _rules_or_state_dir(config: Path, needs_rules: bool) -> tuple[RuleSet | None, Path] | None:
    """The rules and their state directory; where the command ``needs_rules`` not (a listing,
    a drop) and they have errors, the state directory their settings name: a broken rule must
    not hide the dead letters it made. None: why not was said."""
    try:
        ruleset = read_rules(config)
    except ConfigError as error:
        if not needs_rules:
            try:
                state_dir = Path(state_dir_in(config))
            except ConfigError:
                pass
            else:
                print(f"watchd: {config} has {len(error.problems)} error(s) (watchd check "
                      f"--config {config} shows them); the ledger in {state_dir} is read",
                      file=sys.stderr)
                return None, state_dir
        _print_problems(error)
        return None
    return ruleset, Path(ruleset.settings.state_dir)


def _said(command: str, lines: list[str], problems: list[str]) -> int:
    """Print what ``watchd jobs`` answered; 1 for a dead letter asked for that is none."""
    for line in lines:
        print(line)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems and command != "list" else 0


def _open_ledger(state_dir: Path, writable: bool = True) -> sqlite3.Connection | None:
    """The ledger, to change (or only to read: also on a read-only file system); None if
    there is none (nothing was ever queued)."""
    file = store.path_in(state_dir)
    if not file.exists():
        return None
    return store.connect(file, create=False) if writable else store.read_only(file)


def _print_problems(error: ConfigError) -> None:
    for problem in error.problems:
        print(problem, file=sys.stderr)
