"""A job as the ledger keeps it, and back: the row of a ``Job``, the ``Job`` of a row."""

from __future__ import annotations

import marshal
import time
from dataclasses import dataclass, replace

from watchd.core.events import EVENT_BITS, FileEvent
from watchd.core.job import Job
from watchd.core.rules import Root, Rule, RuleSet
from watchd.ledger.store import QUEUED, JobRow


@dataclass(frozen=True, slots=True)
class Failure:
    """How the last run of a job's action failed, for its retry or its dead letter."""

    action: str  # what ran, as ``watchd explain`` shows it
    error: str
    status: int | None = None
    stderr: bytes | None = None


def row_of(job: Job, state: str, failure: Failure | None = None,
           next_at: float | None = None) -> JobRow:
    row = queued_row(job, job.id)
    if failure is None:
        return row._replace(state=state, next_at=next_at)
    return row._replace(state=state, next_at=next_at, action=failure.action,
                        status=failure.status, error=failure.error, stderr=failure.stderr)


def as_held(on_disk: list[JobRow], held: list[tuple[str, Job, float | None]]) -> list[JobRow]:
    """The ledger's rows with what the daemon holds now (``JobQueue.held``): each job in
    the state it is in, and those not written yet (the ledger cannot be written) as well."""
    rows = {row.id: row for row in on_disk}
    for state, job, next_at in held:
        row = rows.get(job.id)
        rows[job.id] = (row._replace(state=state, next_at=next_at) if row is not None
                        else row_of(job, state, next_at=next_at))
    return sorted(rows.values())


def queued_row(job: Job, job_id: int) -> JobRow:
    """A new job's row, under the id it is given: made for every job queued, so kept short."""
    event = job.event
    now = time.time()
    return JobRow(job_id, QUEUED, job.rule.name, job.root.path, event.path, event.event,
                  event.is_dir, event.src_path, event.caught_up, job.step, job.tries, now, now,
                  batch=_batch_of(job.batch) if job.batch else None)


def _batch_of(events: tuple[FileEvent, ...]) -> bytes:
    return marshal.dumps([(event.path, event.event, event.is_dir, event.src_path,
                           event.caught_up) for event in events])


def _events_of(batch: bytes) -> tuple[FileEvent, ...]:
    return tuple(FileEvent(path, name, EVENT_BITS.get(name, 0), bool(is_dir), src_path,
                           caught_up=bool(caught_up))
                 for path, name, is_dir, src_path, caught_up in marshal.loads(batch))


def job_of(row: JobRow, ruleset: RuleSet) -> Job | str:
    """The job a row keeps, under the rules in force now; why not, if it cannot be (its
    rule, its root or its action is gone)."""
    found = _rule_and_root(ruleset, row.rule, row.root, row.step)
    if isinstance(found, str):
        return found
    if row.batch and found[0].batch is None:
        # Its actions name one path ({path}, {name}…), a batch has none to give them.
        return f"rule {row.rule!r} no longer batches: a batch runs only under a rule with batch"
    event = FileEvent(row.path, row.event, EVENT_BITS.get(row.event, 0), row.is_dir,
                      row.src_path, caught_up=row.caught_up)
    batch = _events_of(row.batch) if row.batch else ()
    return Job(*found, event, row.id, row.step, row.tries, batch)


def under(ruleset: RuleSet, job: Job) -> Job | str:
    """A job held in memory under the rules of a reload (``ruleset``): its rule's of the same
    name now; why not, as ``job_of``."""
    found = _rule_and_root(ruleset, job.rule.name, job.root.path, job.step)
    if isinstance(found, str):
        return found
    rule, root = found
    return replace(job, rule=rule, root=root)


def _rule_and_root(ruleset: RuleSet, name: str, root_path: bytes,
                   step: int) -> tuple[Rule, Root] | str:
    """The rule named ``name`` and its root at ``root_path`` in ``ruleset``, able to run
    action ``step``; why not, if they cannot be."""
    rule = next((rule for rule in ruleset.rules if rule.name == name and rule.enabled), None)
    if rule is None:
        return f"its rule {name!r} is gone or disabled"
    root = ruleset.roots_by_path.get(root_path)
    if root is None or rule not in root.rules:
        return f"rule {name!r} no longer watches {root_path.decode(errors='replace')}"
    if step > len(rule.actions):
        return f"rule {name!r} has no action {step} now"
    return rule, root
