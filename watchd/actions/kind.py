"""What the registry knows of an action kind: its key, its schema, how it compiles, and what
it finds in a valid action that its schema cannot say."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from watchd.core.actions import ActionSpec


class Severity(enum.Enum):
    WARNING = "warning"  # valid but risky (a command open to injection): told by check
    ERROR = "error"  # refused like a schema error, but told by a check the schema cannot make
    REFUSED_HERE = "refused here"  # valid, but this machine cannot run it: the daemon refuses


@dataclass(frozen=True, slots=True)
class Finding:
    where: tuple[int | str, ...]  # keys and indexes below the action
    message: str
    severity: Severity


def nothing_found(model: Any, batch: bool) -> Iterator[Finding]:
    return iter(())


@dataclass(frozen=True)
class ActionKind:
    key: str  # what names it in an action of the rules file
    model: type[BaseModel]  # its schema: an action mapping with ``key`` among its keys
    compile: Callable[[Any], ActionSpec]  # from a validated ``model`` to what the workers run
    summary: str  # what it is, for the error an action of no known kind gets
    # Looked at once the whole file is valid, each finding located by the loader; ``batch``:
    # whether the action's rule runs for batches.
    checks: Callable[[Any, bool], Iterator[Finding]] = nothing_found
