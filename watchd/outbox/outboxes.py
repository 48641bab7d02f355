"""Webhook deliveries: one outbox per webhook action, each with a thread of its own.

A worker running a webhook action only builds the delivery, keeps it in the ledger (handed
to its writer thread) and hands it to its outbox: it never waits on the network or the disk.
Each outbox sends in order and retries its head until acknowledged or given up on, so a
slow or dead endpoint delays only its own rule's deliveries. An outbox holds at most
``settings.webhook_backlog`` deliveries; beyond that a new one is refused, counted and
logged, and its job is tried again later (``retries`` and ``backoff`` of the webhook).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from watchd.actions.webhook import (
    Endpoint,
    Webhook,
    attempt,
    body,
    delivery_delay,
    new_delivery_id,
)
from watchd.core.job import Job
from watchd.core.journal import MessageId
from watchd.core.logs import log
from watchd.core.rules import RuleSet
from watchd.core.stats import DROP_REPORT_INTERVAL, Count, Counters
from watchd.ledger.rows import Failure
from watchd.ledger.writer import Ledger
from watchd.outbox.spool import Delivery, Spool, delivery_of

OutboxKey = tuple[str, int]  # a rule's name, and the action's place in it from 1
# Told of each failed delivery attempt: its rule, its path and how it failed (a rule's last
# failure, in ``watchd status``, as a failed command's is).
FailureNote = Callable[[str, bytes, Failure], None]


def count_dead(counters: Counters, delivery: Delivery) -> None:
    """A delivery given up on: a failed webhook, and a dead letter of its rule."""
    counters.add(Count.WEBHOOKS_FAILED, delivery.rule)
    counters.add(Count.DEAD_LETTERS, delivery.rule)


def webhooks_of(ruleset: RuleSet) -> dict[OutboxKey, Webhook]:
    return {(rule.name, place): action for rule in ruleset.rules if rule.enabled
            for place, action in enumerate(rule.actions, 1) if isinstance(action, Webhook)}


class Outbox:
    def __init__(self, key: OutboxKey, webhook: Webhook, backlog: int, spool: Spool,
                 counters: Counters, note_failure: FailureNote) -> None:
        self.key = key
        self.webhook = webhook
        self.backlog = backlog
        self.spool = spool
        self.counters = counters
        self.note_failure = note_failure
        self._endpoint: Endpoint | None = None  # the outbox thread's: see ``_endpoint_of``
        self._waiting: deque[Delivery] = deque()
        self._ready = threading.Condition()
        self._stopping = threading.Event()
        self._woken = threading.Event()  # ends a wait between attempts: a stop, a new webhook
        self._dropped_unreported = 0
        self._next_drop_report = 0.0
        self.thread = threading.Thread(target=self._run, name=f"watchd-webhook-{key[0]}.{key[1]}",
                                       daemon=True)

    def __len__(self) -> int:
        return len(self._waiting)

    def start(self, waiting: list[Delivery]) -> None:
        """Start sending, those already on disk first (a backlog larger than allowed included:
        they were accepted once)."""
        self._waiting.extend(waiting)
        self.thread.start()

    def unsent(self) -> list[Delivery]:
        """What waits to be sent (the first perhaps being sent now)."""
        with self._ready:
            return list(self._waiting)

    def rewire(self, webhook: Webhook, backlog: int) -> None:
        """A reload's webhook and backlog; a changed webhook (a URL or a key fixed) ends a
        wait between attempts: the next comes now, with it."""
        changed = webhook != self.webhook
        self.webhook, self.backlog = webhook, backlog
        if changed:
            self._woken.set()

    def take(self, waiting: list[Delivery]) -> None:
        """Send these too, after what waits (on disk already, as ``start``'s)."""
        with self._ready:
            self._waiting.extend(waiting)
            self._ready.notify()

    def accept(self, make: Callable[[], Delivery]) -> Delivery | None:
        """Keep a new delivery in the ledger, then queue it; None if the backlog is full."""
        with self._ready:
            room = len(self._waiting) < self.backlog
            if room:
                delivery = make()
                self.spool.keep(delivery)
                self._waiting.append(delivery)
                self._ready.notify()
        if not room:
            self._dropped()
            return None
        return delivery

    def stop(self) -> None:
        self._stopping.set()
        self._woken.set()
        with self._ready:
            self._ready.notify()

    def _run(self) -> None:
        try:
            self._send_all()
        finally:
            if self._endpoint is not None:
                self._endpoint.connections.close()

    def _send_all(self) -> None:
        while not self._stopping.is_set():
            with self._ready:
                while not self._waiting and not self._stopping.is_set():
                    self._ready.wait()
                if self._stopping.is_set():
                    return
                delivery = self._waiting[0]
            try:
                self._deliver(delivery)
            except Exception:
                # A bug must cost one delivery, not the outbox: it stays kept for the next start.
                log(logging.ERROR, "webhook delivery failed: internal error", exc_info=True,
                    rule=delivery.rule, path=delivery.path, delivery=delivery.id)
            if not self._stopping.is_set():
                self._waiting.popleft()

    def _deliver(self, delivery: Delivery) -> None:
        """Attempt until acknowledged, refused for good, out of retries, or stopping."""
        while True:
            webhook = self.webhook  # a reload may have changed it since the last attempt
            if delivery.url is not None and delivery.url != webhook.url:
                self._elsewhere(delivery)
                return
            result = attempt(self._endpoint_of(webhook), webhook, delivery.id, delivery.body)
            delivery.attempts += 1
            delivery.last_error = None if result.delivered else result.describe()
            fields = _fields(delivery, result.status, result.duration)
            if result.delivered:
                self.spool.done(delivery)
                self.counters.add(Count.WEBHOOKS_OK, delivery.rule)
                self.counters.add(Count.ACTIONS_OK, delivery.rule)
                log(logging.INFO, "webhook delivered", fields=fields)
                return
            self.counters.add(Count.ACTIONS_FAILED, delivery.rule)  # a failed run, as a command's
            self.note_failure(delivery.rule, delivery.path,
                              Failure(f"webhook {delivery.id}", result.describe()))
            if not result.retryable or delivery.attempts > webhook.retries:
                self._give_up(delivery, result.retryable, fields)
                return
            self.counters.add(Count.RETRIED, delivery.rule)
            delay = delivery_delay(webhook, delivery.attempts, result.retry_after)
            log(logging.WARNING, f"webhook attempt failed: {result.describe()}; retrying in "
                f"{delay:.1f}s", fields=fields)
            self._woken.wait(delay)
            self._woken.clear()  # a webhook set since is read at the top, before an attempt
            if self._stopping.is_set():
                return  # still kept: sent after the next start

    def _endpoint_of(self, webhook: Webhook) -> Endpoint:
        """The endpoint of the webhook's URL: the one before, unless a reload changed it."""
        if self._endpoint is None or self._endpoint.url != webhook.url:
            if self._endpoint is not None:
                self._endpoint.connections.close()
            self._endpoint = Endpoint.of(webhook.url)
        return self._endpoint

    def _give_up(self, delivery: Delivery, exhausted: bool, fields: dict[str, object]) -> None:
        grave = self.spool.bury(delivery)
        count_dead(self.counters, delivery)
        why = "retries exhausted" if exhausted else "not retried"
        log(logging.ERROR, f"action failed: webhook: {delivery.last_error} ({why}); kept as a "
            f"dead letter: watchd jobs retry {delivery.id}",
            message_id=MessageId.ACTION_FAILED, dead_letter=str(grave), fields=fields)

    def _elsewhere(self, delivery: Delivery) -> None:
        """A delivery whose webhook posts elsewhere now (a reload or a restart changed the
        URL of its rule's action at its place, or moved another action there) is not sent
        there unasked: it is a dead letter, for an admin to send on or drop."""
        delivery.last_error = (f"not sent: action {delivery.action} of rule {delivery.rule!r} "
                               "posts to another URL than when it was made")
        grave = self.spool.bury(delivery)
        count_dead(self.counters, delivery)
        log(logging.ERROR, f"webhook delivery kept as a dead letter: {delivery.last_error}; "
            f"send it there with: watchd jobs retry {delivery.id}",
            message_id=MessageId.ACTION_FAILED, rule=delivery.rule, path=delivery.path,
            delivery=delivery.id, dead_letter=str(grave))

    def _dropped(self) -> None:
        self.counters.add(Count.WEBHOOKS_DROPPED, self.key[0])
        with self._ready:
            self._dropped_unreported += 1
            now = time.monotonic()
            if now < self._next_drop_report:
                return
            dropped, self._dropped_unreported = self._dropped_unreported, 0
            self._next_drop_report = now + DROP_REPORT_INTERVAL
        log(logging.ERROR, "webhook backlog full: deliveries dropped",
            message_id=MessageId.EVENTS_DROPPED, rule=self.key[0], step=self.key[1],
            dropped=dropped, backlog=self.backlog)


def _fields(delivery: Delivery, status: int | None, duration: float) -> dict[str, object]:
    return {"rule": delivery.rule, "event": delivery.event, "path": delivery.path,
            "action": "webhook", "step": delivery.action, "http_status": status,
            "attempt": delivery.attempts, "duration_ms": round(duration * 1000),
            "delivery": delivery.id}


class Deliveries:
    """Every outbox, kept in step with the rules on each reload."""

    def __init__(self, state_dir: Path, counters: Counters, ledger: Ledger) -> None:
        self.spool = Spool(state_dir, ledger)
        self.ledger = ledger
        self.counters = counters
        self.on_failure: FailureNote = lambda rule, path, failure: None
        self._imported = False
        self._outboxes: dict[OutboxKey, Outbox] = {}

    def prepare(self, ruleset: RuleSet) -> Callable[[], None]:
        """Read what the rules' webhooks have waiting in the ledger (at the first, the start:
        after importing what watchd 0.1 left in files). The commit starts outboxes for new
        webhook actions, updates kept ones, stops gone ones, and makes dead letters of
        deliveries waiting for an action that no longer exists."""
        imported = [] if self._imported else self._import_legacy()
        wanted = webhooks_of(ruleset)
        # Deliveries on disk for a webhook action gone, with no outbox (kept from before the
        # start); a running outbox's own are what it has not sent (its memory, not the disk,
        # which may not show yet what it has just sent).
        orphaned = sorted(set(self.spool.outboxes()) - wanted.keys() - self._outboxes.keys())
        waiting = {key: self.spool.load(*key) for key in wanted.keys() - self._outboxes.keys()}
        # Imported at a reload (the ledger could not be written at the start): outboxes that
        # run already get theirs too.
        for delivery in imported:
            key = (delivery.rule, delivery.action)
            if key in self._outboxes:
                waiting.setdefault(key, []).append(delivery)
        return functools.partial(self._commit, wanted, waiting, orphaned,
                                 ruleset.settings.webhook_backlog)

    def _import_legacy(self) -> list[Delivery]:
        """Import watchd 0.1's spool once (the deliveries that wait to be sent); a ledger that
        cannot be written now (read-only, full, locked) leaves the files where they are, for
        the next reload or start."""
        try:
            imported = self.spool.import_legacy()
        except (OSError, sqlite3.Error) as error:
            log(logging.ERROR, f"the webhook deliveries watchd 0.1 left in {self.state_dir} "
                f"cannot be imported into the ledger now ({error}): they stay in their files, "
                "and are imported at the next reload or start",
                message_id=MessageId.LEDGER_DEGRADED, path=str(self.state_dir))
            return []
        self._imported = True
        return imported

    def _commit(self, wanted: dict[OutboxKey, Webhook], waiting: dict[OutboxKey, list[Delivery]],
                orphaned: list[OutboxKey], backlog: int) -> None:
        for key in self._outboxes.keys() - wanted.keys():
            self._retire(self._outboxes.pop(key))
        for key, webhook in wanted.items():
            outbox = self._outboxes.get(key)
            if outbox is None:
                outbox = self._outboxes[key] = Outbox(key, webhook, backlog, self.spool,
                                                      self.counters, self._note_failure)
                outbox.start(waiting[key])
            elif key in waiting:
                outbox.take(waiting[key])
            outbox.rewire(webhook, backlog)
        for key in orphaned:
            self._orphaned(key)

    @property
    def state_dir(self) -> Path:
        """Where the ledger is, with deliveries and dead letters: the one of the start."""
        return self.spool.state_dir

    def stats(self) -> dict[str, int]:
        return {"webhooks_waiting": self.waiting()}

    def _note_failure(self, rule: str, path: bytes, failure: Failure) -> None:
        self.on_failure(rule, path, failure)  # as set now (the workers come after the outboxes)

    def _orphaned(self, key: OutboxKey) -> None:
        for delivery in self.spool.load(*key):
            self._bury_orphan(delivery)

    def _retire(self, outbox: Outbox) -> None:
        """Stop the outbox of a webhook action a reload removed; what it has not sent is a
        dead letter."""
        outbox.stop()
        for delivery in outbox.unsent():
            self._bury_orphan(delivery)

    def _bury_orphan(self, delivery: Delivery) -> None:
        delivery.last_error = (f"its rule {delivery.rule!r} has no webhook as action "
                               f"{delivery.action} any more")
        grave = self.spool.bury_later(delivery)
        count_dead(self.counters, delivery)
        log(logging.WARNING, f"webhook delivery kept as a dead letter: {delivery.last_error}",
            rule=delivery.rule, path=delivery.path, delivery=delivery.id, dead_letter=str(grave))

    def take_asked(self, rows: list[tuple[object, ...]]) -> None:
        """Dead deliveries ``watchd jobs retry`` asked for again (on the ledger's thread): each
        sent anew by its outbox, its retries from the first; one whose webhook is gone is a
        dead letter again, saying why."""
        for delivery in map(delivery_of, rows):
            outbox = self._outboxes.get((delivery.rule, delivery.action))
            if outbox is None:
                self._bury_orphan(delivery)
            else:
                outbox.take([delivery])
        log(logging.INFO, f"{len(rows)} webhook delivery(ies) asked for again queued",
            deliveries=len(rows))

    def deliver(self, job: Job, place: int) -> bool:
        """Keep and queue the webhook at ``place`` of the job's rule; False if it was not
        (its rule changed, or the backlog is full)."""
        outbox = self._outboxes.get((job.rule.name, place))
        if outbox is None:
            # Matched under rules that a reload has since replaced; the new rules decide now.
            log(logging.WARNING, "webhook not sent: its rule changed since the event",
                rule=job.rule.name, path=job.event.path, step=place)
            return False

        def make() -> Delivery:
            # A job run again after a crash sends the same id: the receiver can tell.
            delivery_id = (f"msg_{self.ledger.instance}_{job.id}_{place}" if job.id
                           else new_delivery_id())
            return Delivery(delivery_id, job.rule.name, place, job.event.event, job.event.path,
                            body(job, delivery_id), time.time(), url=outbox.webhook.url)

        return outbox.accept(make) is not None

    def waiting(self) -> int:
        return sum(len(outbox) for outbox in self._outboxes.values())

    def stop(self, timeout: float) -> None:
        """Stop every outbox; what is not acknowledged stays kept for the next start."""
        deadline = time.monotonic() + timeout
        for outbox in self._outboxes.values():
            outbox.stop()
        for outbox in self._outboxes.values():
            outbox.thread.join(max(0.0, deadline - time.monotonic()))
