"""The rules file's schema, as pydantic models, its actions' built from the registry.

These models only check shape and values; ``watchd.config.compile`` compiles a validated
``RulesFile`` into the immutable objects the daemon runs on.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator, model_validator

from watchd.actions.registry import KINDS
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


PACKAGED_STATE_DIR = "/var/lib/watchd"


def state_dir_of(settings: Settings) -> str:
    """``settings.state_dir`` as given; unset, the state directory systemd made for the unit
    (``StateDirectory=`` sets the variable, the first of several), else the packaged one."""
    if "state_dir" in settings.model_fields_set:
        return settings.state_dir
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return given if given.startswith("/") else PACKAGED_STATE_DIR


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


class Batch(Strict):
    """``batch:``: one run of the rule's actions for many events."""

    window: Duration = Field(default=1.0, description="collect events for this long after "
                             "the first one, then run once for all the paths collected")
    max: int = Field(default=10000, ge=1, le=1_000_000, description="at most this many paths "
                     "in one run: a full batch runs at once, and the next one begins")


class Rule(Strict):
    """One rule: which paths and events, and what to do."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128, description="names the "
                      "rule in logs, in the journal (`WATCHD_RULE`) and as `{rule}`; unique "
                      "across all files")
    paths: list[AbsolutePath] = Field(min_length=1, description="what is watched. A path that "
                                      "does not exist yet is watched once it appears, and a "
                                      "watched directory deleted and made again is watched "
                                      "again; a file is watched through its directory. A "
                                      "symlink on the way is followed only if it, and every "
                                      "directory above it, is root's and writable by nobody "
                                      "else")
    events: list[EventName] = Field(default=["close_write", "moved_to"], min_length=1,
                                    description="the events the rule acts on: `close_write` for "
                                    "\"a file was written\", `moved_to` for \"a file was renamed "
                                    "into place\" (what `rsync` and careful writers do)")
    recursive: bool = Field(default=False, description="watch the subdirectories too, and new "
                            "ones as they appear; what was already in a new one is reported as "
                            "`create` (and, for a regular file, `close_write`)")
    include: list[Pattern] | None = Field(default=None, min_length=1, description="act only on "
                                          "names that match one of these patterns; unset: on "
                                          "every name")
    exclude: list[Pattern] = Field(default_factory=list, description="never act on names that "
                                   "match one of these patterns, even when included")
    kind: Kinds = Field(default=["file", "dir"], min_length=1, description="what the path an "
                        "event is about must be for the rule to act: `file` (a regular file), "
                        "`dir`, `symlink`, `special` (a FIFO, a socket, a block or character "
                        "device) or `any`; a symlink or a special file reaches an action only "
                        "when named")
    debounce: Duration | None = Field(default=None, description="act once when the path has "
                                      "been quiet this long, with its last event; unset: act on "
                                      "every event")
    max_parallel: int | None = Field(default=None, ge=1, le=10_000, description="at most this "
                                     "many actions of this rule at once; the rest wait, in "
                                     "order. Unset: as many as there are `workers`, but one at "
                                     "a time for a rule with a webhook action, so that its "
                                     "deliveries keep the order of the events")
    on_busy: Literal["queue", "skip", "restart"] = Field(
        default="queue", description="what an event does for a path whose action still runs "
        "(one action of a rule runs per path at a time): `queue` one more run after it (later "
        "events replace its event), `skip` it, or `restart` (stop the running action and run "
        "again)")
    ignore_case: bool = Field(default=False, description="the `include` and `exclude` patterns "
                              "match names case-insensitively: `*.jpg` matches `IMG_0001.JPG`")
    ignore_own_writes: bool = Field(default=False, description="ignore events on a path while "
                                    "an action of this rule runs for it and 1 s after: a loop "
                                    "guard for actions that rewrite their own file; writes to "
                                    "other paths are not covered")
    catch_up: bool = Field(default=True, description="at start, and when a reload adds a "
                           "path back, act once on what changed while the daemon (or the "
                           "rule, for that path) was not watching, "
                           "as the events it would have seen (`create` and `close_write` for "
                           "a new file, `close_write` for a changed one, `delete`, "
                           "`moved_from`/`moved_to` for a renamed one), with "
                           "`WATCHD_CAUGHT_UP=1`; a file unchanged since it was last acted "
                           "on is not acted on again")
    existing: Literal["ignore", "process"] = Field(
        default="ignore", description="when a rule first sees a tree (at its first start, "
        "nothing in the ledger for it yet, and for a path a reload adds that it never walked), "
        "what to do with the files already there: `ignore` them (they are recorded, so "
        "that later changes are caught up with) or `process` them as new")
    settle: Duration | None = Field(default=None, description="act on a path only once its "
                                    "size and mtime, looked at with `lstat`, have stayed the "
                                    "same this long: a writer that pauses (a slow upload) is "
                                    "not cut short; with `debounce`, settling begins once the "
                                    "path is quiet. Unset: act as the event comes")
    poll: Duration | None = Field(default=None, description="also walk the rule's trees this "
                                  "often and act once on what changed, as the catch-up at "
                                  "start does: for NFS, CIFS and FUSE mounts (sshfs), where "
                                  "inotify sees only the changes made through this machine; "
                                  "at least 1s")
    batch: Batch | None = Field(default=None, description="one run of the actions for all the "
                                "paths of a window (each path once, with its last event): "
                                "`{paths}` in argv, or `stdin: paths`; one batch of a rule "
                                "runs at a time, the next waits. With `debounce`, a path joins "
                                "a batch once it has been quiet; unset: one run per event")
    enabled: bool = Field(default=True, description="`false`: the rule is checked, but watches "
                          "nothing and never acts")
    actions: list[ActionModel] = Field(min_length=1, description="what to do for each matched "
                                       "event: actions of the kinds below, run in order; when "
                                       "one fails, the later ones are skipped")

    @model_validator(mode="after")
    def _poll_not_too_often(self) -> Rule:
        if self.poll is not None and self.poll < 1.0:
            raise ValueError(f"poll: {self.poll:g}s is too often: at least 1s (a poll walks "
                             "the whole tree)")
        return self

    @model_validator(mode="after")
    def _existing_is_looked_for(self) -> Rule:
        if self.existing == "process" and not self.catch_up and self.poll is None:
            raise ValueError("existing: process needs catch_up: true (or a poll): the files "
                             "already there are found by the catch-up's walk at the first start")
        return self

    @model_validator(mode="after")
    def _batch_queues(self) -> Rule:
        if self.batch is not None and self.on_busy != "queue":
            raise ValueError(f"on_busy: {self.on_busy} does not apply to a batch rule: its "
                             "batches run one after another, none is skipped or cut short")
        return self


class Metrics(Strict):
    """``settings.metrics:``: Prometheus' exposition of the daemon's figures."""

    listen: str | None = Field(
        default=None, description="`host:port` (`[::1]:9478` for IPv6) to serve `/metrics` on "
        "over HTTP, without authentication: keep it on loopback (`127.0.0.1:9478`) and let a "
        "local Prometheus or a proxy reach it (docs/security.md says why); read at start")
    textfile: AbsolutePath | None = Field(
        default=None, description="a file to write the same figures to, atomically, every "
        "`interval`, for node_exporter's textfile collector; its name ends in `.prom`; read at "
        "start")
    interval: Duration = Field(default=15.0, description="how often `textfile` is written")

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, listen: str | None) -> str | None:
        if listen is not None:
            listen_address(listen)
        return listen

    @field_validator("textfile")
    @classmethod
    def _prom_suffix(cls, textfile: str | None) -> str | None:
        if textfile is not None and not textfile.endswith(".prom"):
            raise ValueError("node_exporter reads only files whose names end in .prom")
        return textfile


def listen_address(listen: str) -> tuple[str, int]:
    """``host:port`` as (host, port); ValueError, in words, for anything else."""
    host, colon, port = listen.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{listen!r} is not host:port (for example 127.0.0.1:9478)")
    return host.removeprefix("[").removesuffix("]"), int(port)


class Settings(Strict):
    workers: int = Field(default=4, ge=1, le=256, description="threads running actions")
    queue_size: int = Field(default=10000, ge=1, le=10_000_000, description="actions waiting "
                            "to run; beyond it matched events are dropped, counted and logged")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="the least severe level of what is logged")
    stop_grace: Duration = Field(default=10.0, description="on stop, how long running actions "
                                 "may finish before their process groups are killed")
    state_dir: AbsolutePath = Field(default=PACKAGED_STATE_DIR, description="where "
                                    "the ledger (`ledger.db`: jobs until they end, dead letters, "
                                    "what each rule last saw) and webhook deliveries are kept; "
                                    "read at start; one daemon's (it holds `lock` there: a "
                                    "second one started on it is refused). Unset: "
                                    "`$STATE_DIRECTORY` (set by the unit's `StateDirectory=`), "
                                    "else `/var/lib/watchd`")
    snapshot_limit: int = Field(default=500_000, ge=0, le=100_000_000, description="names kept "
                                "(about 150 bytes each) to report what changed during an "
                                "inotify queue overflow; past it, files deleted during an "
                                "overflow in the directories beyond the limit go unreported")
    dead_letters: int = Field(default=10000, ge=1, le=10_000_000, description="dead letters "
                              "kept in the ledger, of jobs and of webhook deliveries each; past "
                              "it the oldest are dropped, counted and logged")
    degraded_poll: Duration = Field(default=60.0, description="how often directories the "
                                    "inotify watch limit left unwatched are walked for changes "
                                    "(acted on as inotify would have told them), and watching "
                                    "them is tried again: degraded, never deaf; at least 1s")
    webhook_backlog: int = Field(default=10000, ge=1, le=1_000_000, description="deliveries "
                                 "waiting per webhook action; beyond it new ones are dropped, "
                                 "counted and logged")
    metrics: Metrics | None = Field(default=None, description="Prometheus metrics, served over "
                                    "HTTP and/or written for node_exporter, with the keys below; "
                                    "unset: none")

    @field_validator("degraded_poll")
    @classmethod
    def _degraded_poll_not_too_often(cls, seconds: float) -> float:
        if seconds < 1.0:  # 0 made the daemon walk and log without a pause
            raise ValueError(f"{seconds:g}s is too often: at least 1s (each walks every "
                             "directory the watch limit left unwatched)")
        return seconds


# A drop-in's keys mean what the main file's do: one wording for both.
_VERSION = "the version of the format; the only one is 1"
_RULES = "the rules, each with the keys below; rule names are unique across all files"


class RulesFile(Strict):
    """The main rules file."""

    version: Literal[1] = Field(default=1, description=_VERSION)
    settings: Settings = Field(default_factory=Settings, description="how the daemon runs, "
                               "with the keys below; only in the main file, not in a drop-in")
    rules: list[Rule] = Field(default_factory=list, description=_RULES)


class DropIn(Strict):
    """A file of ``rules.d/``: more rules, nothing else."""

    version: Literal[1] = Field(default=1, description=_VERSION)
    rules: list[Rule] = Field(default_factory=list, description=_RULES)
