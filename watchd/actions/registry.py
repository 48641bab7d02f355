"""The action kinds, in the order the schema offers them: adding a kind is one line here."""


from __future__ import annotations

from pydantic import BaseModel

from watchd.actions import command, systemd_run, webhook
from watchd.actions.kind import ActionKind
from watchd.core.actions import ActionSpec

KINDS: tuple[ActionKind, ...] = (command.KIND, webhook.KIND, systemd_run.KIND)

_BY_MODEL = {kind.model: kind for kind in KINDS}


def kind_of(model: BaseModel) -> ActionKind:
    """The kind of a validated action."""
    return _BY_MODEL[type(model)]


def compile_action(model: BaseModel) -> ActionSpec:
    return kind_of(model).compile(model)
