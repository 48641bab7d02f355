"""``watchd webhooks list | replay`` and ``watchd jobs list``: what waits, and dead letters.

A replay is one attempt per dead letter, made by this command (the daemon need not run),
with the rule's webhook as it is configured now: a URL or key fixed since is used. The
body and ``webhook-id`` stay those of the original delivery, so a receiver that already
saw it can tell.
"""

from __future__ import annotations

import json
import marshal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from watchd.actions.webhook import Endpoint, Webhook, attempt
from watchd.core.logs import escape
from watchd.core.rules import RuleSet
from watchd.ledger import store
from watchd.ledger.rows import job_of
from watchd.ledger.store import JobRow
from watchd.outbox.outboxes import OutboxKey, webhooks_of
from watchd.outbox.spool import Delivery, Spool, delivery_of


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# A webhook delivery that is a dead letter, with the id of the job that made it (None: one of
# 0.1's, imported): ``watchd jobs`` shows it as a dead letter of that job.
DeadDelivery = tuple[int | None, Delivery]


def dead_deliveries(connection: sqlite3.Connection) -> list[DeadDelivery]:
    ledger = store.instance(connection)
    return [(store.job_of_delivery(delivery.id, ledger), delivery)
            for delivery in map(delivery_of, store.dead_deliveries(connection))]


def jobs_on_disk(connection: sqlite3.Connection, dead_only: bool,
                 damaged: list[store.DamagedRow]) -> tuple[list[JobRow], list[DeadDelivery]]:
    """What ``watchd jobs list`` shows of the ledger (its dead letters only): the jobs, and
    the dead webhook deliveries; a row of queued jobs that cannot be read, in ``damaged``."""
    states = (store.DEAD,) if dead_only else (*store.UNFINISHED, store.DEAD)
    return store.jobs(connection, states, damaged=damaged), dead_deliveries(connection)


def unlisted(file: Path, damaged: list[store.DamagedRow]) -> list[str]:
    """What ``watchd jobs list`` says of the rows of queued jobs it could not read."""
    return [f"the ledger {file} is damaged: {problem}; those jobs are not listed"
            for problem in damaged]


def ledger_listing(rows: list[JobRow], deliveries: list[DeadDelivery],
                   as_json: bool) -> Iterator[str]:
    """``watchd jobs list``: a count by state, then a line for each job (and for a dead
    letter what failed), a dead webhook delivery as a dead letter of its job; or one JSON
    document of them all."""
    shown = [*((row, None) for row in rows),
             *((_as_row(job, delivery), delivery.id) for job, delivery in deliveries)]
    if as_json:
        yield json.dumps({"jobs": [_as_json(row, delivery_id) for row, delivery_id in shown]},
                         indent=1)
        return
    states = Counter(row.state for row, _ in shown)
    yield "jobs: " + (", ".join(f"{count} {state}" for state, count in sorted(states.items()))
                      or "none")
    for row, delivery_id in shown:
        what = f"event={row.event}  {escape(row.path)}"
        if row.batch is not None:
            what = f"batch of {len(marshal.loads(row.batch))}, the last {escape(row.path)}"
        yield (f"  {row.id or delivery_id}  {row.state}  {_when(row.created)}  rule={row.rule} "
               f"step={row.step} tries={row.tries} {what}")
        if row.error:
            yield f"      {row.action}: {row.error}"
        if row.stderr:
            yield f"      stderr: {escape(row.stderr.strip()[-200:])}"


def _as_row(job: int | None, delivery: Delivery) -> JobRow:
    return JobRow(job or 0, store.DEAD, delivery.rule, b"", delivery.path, delivery.event, False,
                  b"", False, delivery.action, delivery.attempts, delivery.created,
                  delivery.created, action=f"webhook {delivery.id}",
                  error=delivery.last_error or "-")


def _as_json(row: JobRow, delivery_id: str | None) -> dict[str, object]:
    document = row.as_json()
    if delivery_id is not None:
        document.update(id=row.id or None, delivery=delivery_id)
    return document


def change_dead_letters(connection: sqlite3.Connection | None, command: str,
                        ids: list[store.DeadLetterId] | None,
                        ruleset: RuleSet | None) -> tuple[list[str], list[str]]:
    """``watchd jobs retry|drop`` of the dead letters ``ids`` names (all, for None): a job's
    id names its dead letter and those of its webhook deliveries, a delivery's id that one.
    A retry asks only for those the rules in force (``ruleset``) can run. What was done, a
    line each, and a line for each id that names none, or that cannot be run."""
    if connection is None:
        return [], [f"{asked}: no such dead letter" for asked in dict.fromkeys(ids or ())]
    rows, deliveries, unknown = _named(connection, ids)
    problems = [f"{asked}: no such dead letter" for asked in unknown]
    if command == "retry" and ruleset is not None:
        rows, deliveries, refused = _runnable(rows, deliveries, ruleset)
        problems += refused
    change = store.request_retry if command == "retry" else store.drop
    done = change(connection, [row.id for row in rows],
                  [delivery.id for _, delivery in deliveries])
    return changed_lines(command, done, problems)


def _named(connection: sqlite3.Connection, ids: list[store.DeadLetterId] | None,
           ) -> tuple[list[JobRow], list[DeadDelivery], list[store.DeadLetterId]]:
    """The dead letters ``ids`` names (all, for None), and the ids that name none."""
    job_ids = None if ids is None else [asked for asked in ids if isinstance(asked, int)]
    rows = store.jobs(connection, (store.DEAD,), job_ids)
    deliveries = [(job, delivery) for job, delivery in dead_deliveries(connection)
                  if ids is None or delivery.id in ids or job in ids]
    named = ({row.id for row in rows} | {delivery.id for _, delivery in deliveries}
             | {job for job, _ in deliveries})
    return rows, deliveries, [asked for asked in dict.fromkeys(ids or ()) if asked not in named]


def _runnable(rows: list[JobRow], deliveries: list[DeadDelivery], ruleset: RuleSet,
              ) -> tuple[list[JobRow], list[DeadDelivery], list[str]]:
    """Of these dead letters, those the rules can run now, and why each other cannot."""
    runnable_rows, refused = runnable_jobs(rows, ruleset)
    webhooks = webhooks_of(ruleset)
    runnable_deliveries = []
    for job_id, delivery in deliveries:
        if (delivery.rule, delivery.action) in webhooks:
            runnable_deliveries.append((job_id, delivery))
        else:
            refused.append(f"{delivery.id}: not queued: its rule {delivery.rule!r} has no "
                           f"webhook as action {delivery.action} now (fix the rules, reload, "
                           "retry)")
    return runnable_rows, runnable_deliveries, refused


def runnable_jobs(rows: list[JobRow], ruleset: RuleSet) -> tuple[list[JobRow], list[str]]:
    """Of these dead letters of jobs, those the rules can run now, and why each other cannot."""
    refused = []
    runnable = []
    for row in rows:
        job = job_of(row, ruleset)
        if isinstance(job, str):
            refused.append(f"{row.id}: not queued: {job} (fix the rules, reload, retry)")
        else:
            runnable.append(row)
    return runnable, refused


def changed_lines(command: str, done: list[store.DeadLetterId],
                  problems: list[str]) -> tuple[list[str], list[str]]:
    """What ``watchd jobs retry|drop`` says it did (a line each), and what it could not."""
    verb = "queued again" if command == "retry" else "dropped"
    if not done and not problems:  # --all, with none: said, not silent
        return ["no dead letters"], []
    return [f"{dead_letter}: {verb}" for dead_letter in done], problems


def describe(delivery: Delivery) -> str:
    return (f"{delivery.id}  {_when(delivery.created)}  rule={delivery.rule} "
            f"action={delivery.action} event={delivery.event} attempts={delivery.attempts}  "
            f"{escape(delivery.path)}  last error: {escape(delivery.last_error or '-')}")


def listing(spool: Spool) -> Iterator[str]:
    waiting = spool.waiting(asked=True)
    yield f"waiting: {sum(waiting.values())}"
    for (rule, action), count in waiting.items():
        yield f"  rule={rule} action={action}: {count}"
    dead = spool.dead_letters()
    yield f"dead letters: {len(dead)} (in the ledger, {spool.file})"
    for delivery in dead:
        yield f"  {describe(delivery)}"


def replay(spool: Spool, ruleset: RuleSet, ids: list[str]) -> Iterator[tuple[bool, str]]:
    """One attempt for each dead letter named (every one if ``ids`` is empty): (sent, line)."""
    webhooks = webhooks_of(ruleset)
    dead = {delivery.id: delivery for delivery in spool.dead_letters()}
    endpoints: dict[str, Endpoint] = {}  # by URL: one connection for the letters of each
    try:
        for delivery_id in ids or list(dead):
            yield _replayed(spool, webhooks, endpoints, dead.get(delivery_id), delivery_id)
    finally:
        for endpoint in endpoints.values():
            endpoint.connections.close()


def _replayed(spool: Spool, webhooks: dict[OutboxKey, Webhook], endpoints: dict[str, Endpoint],
              delivery: Delivery | None, delivery_id: str) -> tuple[bool, str]:
    if delivery is None:
        return False, f"{delivery_id}: no such dead letter"
    webhook = webhooks.get((delivery.rule, delivery.action))
    if webhook is None:
        return False, (f"{delivery_id}: rule {delivery.rule!r} has no webhook as action "
                       f"{delivery.action} now; kept")
    endpoint = endpoints.get(webhook.url)
    if endpoint is None:
        endpoint = endpoints[webhook.url] = Endpoint.of(webhook.url)
    result = attempt(endpoint, webhook, delivery.id, delivery.body)
    delivery.attempts += 1
    if result.delivered:
        spool.done(delivery)
        return True, f"{delivery_id}: delivered (HTTP {result.status})"
    delivery.last_error = result.describe()
    spool.bury(delivery)
    return False, f"{delivery_id}: {result.describe()}; kept"
