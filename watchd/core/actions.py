"""The contract between a worker and an action, whatever its kind.

A compiled action (``ActionSpec``) performs itself for a job, with what the worker
offers it (``ActionContext``): running a process under the worker's watch (so that a
stop, a timeout or a newer event can end it) and handing a delivery to its outbox.
Each kind lives in one module of ``watchd.actions``, listed in its registry.
"""

from __future__ import annotations

import enum
import os
import random
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from watchd.core.job import Job

MAX_BACKOFF = 600.0  # seconds: the longest wait between two tries that a backoff computes


def retry_delay(backoff: float, retry: int) -> float:
    """Seconds before retry number ``retry`` (1 for the first): ``backoff`` doubled for each
    retry after the first, and up to a quarter more (jitter: many jobs that failed together do
    not all retry together), at most ``MAX_BACKOFF``. Never less (``backoff`` is the first wait
    an admin asked for) until the doubling reaches the cap: then between 80% of it and all."""
    least = backoff * 2.0 ** (retry - 1)
    if least >= MAX_BACKOFF:
        return random.uniform(0.8 * MAX_BACKOFF, MAX_BACKOFF)
    return random.uniform(least, min(MAX_BACKOFF, least * 1.25))


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    RESTARTED = "restarted"  # a newer event stopped it (on_busy: restart); its run follows
    SKIPPED = "skipped"  # not run, and said why: the rule's later actions are not run either
    STOPPED = "stopped"  # killed by the daemon's stop: its job runs it again at the next start
    # Handed on (a webhook, to its outbox): the next action runs; ok or failed is counted at
    # its end (delivered, or given up on), not now.
    HANDED_ON = "handed on"


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """How one run of a process ended. ``status`` is the exit status, or minus the signal."""

    status: int | None
    duration: float
    timed_out: bool
    stderr: bytes
    error: str | None = None
    stopped: bool = False  # killed by the daemon's stop: its job runs it again at the next start

    @property
    def ok(self) -> bool:
        return self.status == 0 and not self.timed_out

    def describe(self) -> str:
        """How it failed, in words: the signal named, the number in words too."""
        if self.timed_out:
            return "timed out"
        if self.error:
            return self.error
        status = self.status or 0
        if status > 0:
            return f"exited with status {status}"
        try:
            return f"killed by signal {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"


class Process(Protocol):
    """One run of a process; ``kill`` may be called from another thread (stop, restart)."""

    def run(self) -> ProcessResult: ...

    def kill(self, sig: int = ...) -> None: ...


class ActionContext(Protocol):
    """What a worker offers the action it performs."""

    def run_process(self, job: Job, step: int, program: str,
                    process: Process) -> ProcessResult | Outcome:
        """Run ``process`` where a stop or restart can reach it, once ``program`` has passed
        its trust check; the outcome instead if it did not run to its end (the program is
        not trusted now: FAILED; a newer event stopped it: RESTARTED)."""
        ...

    def deliver(self, job: Job, step: int) -> bool:
        """Hand the job to the outbox of the webhook at ``step``; False if it was refused."""
        ...

    def skip(self, job: Job, step: int, reason: str) -> Outcome:
        """Say why an action is not run, and count it."""
        ...


class ActionSpec(Protocol):
    """An action ready to perform, compiled from the rules file."""

    kind: ClassVar[str]  # its key in the rules file: command, webhook, systemd_run
    # Whether a rule with it runs one job at a time unless it says otherwise (webhooks: the
    # deliveries then go out in the order of the events).
    keeps_order: ClassVar[bool]

    @property
    def retries(self) -> int:
        """Further tries of a failed run before the job is a dead letter."""
        ...

    @property
    def backoff(self) -> float:
        """The wait before the first retry, in seconds (``retry_delay``)."""
        ...

    def room_for_paths(self, job: Job) -> int | None:
        """Bytes of a batch's paths that one run of it for ``job``'s rule and root can carry
        (each path's, its NUL's and its pointer's), None if they are in no argv."""
        ...

    def describe(self, values: Mapping[str, bytes]) -> str:
        """What ``watchd explain`` shows of it for an event with these placeholder values."""
        ...

    def perform(self, context: ActionContext, job: Job, step: int,
                info: os.stat_result | None) -> Outcome:
        """Do it for ``job`` (``info``: the path's lstat just before, None if it is gone)."""
        ...
