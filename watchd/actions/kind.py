"""What the registry knows of an action kind: its key, its schema, how it compiles."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from watchd.core.actions import ActionSpec

# A warning about a valid action: where in the action (keys and indexes below it), and what.
Warning = tuple[tuple[int | str, ...], str]


def no_warnings(model: Any) -> Iterator[Warning]:
    return iter(())


@dataclass(frozen=True)
class ActionKind:
    key: str  # what names it in an action of the rules file
    model: type[BaseModel]  # its schema: an action mapping with ``key`` among its keys
    compile: Callable[[Any], ActionSpec]  # from a validated ``model`` to what the workers run
    summary: str  # what it is, for the error an action of no known kind gets
    # What is valid but risky, told by ``watchd check``: a command open to injection.
    warnings: Callable[[Any], Iterator[Warning]] = no_warnings
    # What this machine cannot run though the rules are valid: the daemon refuses the rules.
    refusals: Callable[[Any], Iterator[Warning]] = no_warnings
