"""The rules file's schema, as pydantic models, its actions' built from the registry.

These models only check shape and values; ``watchd.config.compile`` compiles a validated
``RulesFile`` into the immutable objects the daemon runs on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, Discriminator, Field, Tag

from watchd.actions import KINDS
from watchd.schema.fields import (
    ANY_KIND,
    AbsolutePath,
    Duration,
    EventName,
    Kinds,
    Pattern,
    Strict,
)

__all__ = ["ANY_KIND", "DropIn", "Rule", "RulesFile", "Settings"]


def _action_kind(data: Any) -> str | None:
    """The tag of the kind an action is: the first key of it that names a kind."""
    if isinstance(data, dict):
        for kind in KINDS:
            if kind.key in data:
                return _tag(kind.key)
    return None


def _tag(key: str) -> str:
    # Bracketed, so that the loader tells it from a key in an error's location.
    return f"action[{key}]"


if TYPE_CHECKING:
    ActionModel = BaseModel
else:
    ActionModel = Annotated[
        Union[tuple(Annotated[kind.model, Tag(_tag(kind.key))] for kind in KINDS)],  # noqa: UP007
        Discriminator(_action_kind, custom_error_type="action_kind",
                      custom_error_message="an action needs "
                      + " or ".join(kind.summary for kind in KINDS)),
    ]


class Rule(Strict):
    """One rule: which paths and events, and what to do."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)
    paths: list[AbsolutePath] = Field(min_length=1)
    events: list[EventName] = Field(default=["close_write", "moved_to"], min_length=1)
    recursive: bool = False
    include: list[Pattern] | None = Field(default=None, min_length=1)
    exclude: list[Pattern] = Field(default_factory=list)
    kind: Kinds = Field(default=["file", "dir"], min_length=1, description="what the path must "
                        "be for the rule to act: file (a regular file), dir, symlink, special "
                        "(FIFO, socket, device) or any, or a list of them; a symlink or a special "
                        "file reaches an action only when named")
    debounce: Duration | None = Field(default=None, description="act once when the path has "
                                      "been quiet this long, with its last event")
    max_parallel: int | None = Field(default=None, ge=1, le=10_000, description="at most this "
                                     "many actions of this rule at once; the rest wait, in order")
    on_busy: Literal["queue", "skip", "restart"] = Field(
        default="queue", description="an event for a path whose action still runs: queue one "
        "more run after it, skip it, or restart the action")
    ignore_case: bool = Field(default=False, description="include and exclude patterns match "
                              "names case-insensitively (IMG_0001.JPG matches *.jpg)")
    ignore_own_writes: bool = Field(default=False, description="ignore events on the path an "
                                    "action of this rule runs for, while it runs and 1 s after")
    enabled: bool = True
    actions: list[ActionModel] = Field(min_length=1)


class Settings(Strict):
    workers: int = Field(default=4, ge=1, le=256)
    queue_size: int = Field(default=10000, ge=1, le=10_000_000)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    stop_grace: Duration = Field(default=10.0, description="on stop, how long running actions "
                                 "may finish before their process groups are killed")
    state_dir: AbsolutePath = Field(default="/var/lib/watchd", description="where webhook "
                                    "deliveries are kept until acknowledged, and dead letters")
    snapshot_limit: int = Field(default=500_000, ge=0, le=100_000_000, description="names kept "
                                "to recover from an inotify queue overflow (about 150 bytes "
                                "each); past it, deletions during an overflow go unreported")
    webhook_backlog: int = Field(default=10000, ge=1, le=1_000_000, description="deliveries "
                                 "waiting per webhook action; beyond it they are dropped, counted "
                                 "and logged")


class RulesFile(Strict):
    """The main rules file."""

    version: Literal[1] = 1
    settings: Settings = Field(default_factory=Settings)
    rules: list[Rule] = Field(default_factory=list)


class DropIn(Strict):
    """A file of ``rules.d/``: more rules, nothing else."""

    version: Literal[1] = 1
    rules: list[Rule] = Field(default_factory=list)
