"""An event as JSON: what a webhook POSTs, and what ``stdin: json`` writes, one a line."""

from __future__ import annotations

import base64
import os

from watchd.core.events import FileEvent
from watchd.core.placeholders import is_utf8


def text(name: bytes) -> str:
    """A name for JSON: UTF-8 as it is; any other byte as a backslash escape."""
    return name.decode("utf-8", "backslashreplace")


def event_document(event: FileEvent) -> dict[str, object]:
    """The event's own fields; a name that is not UTF-8 also in base64 (``path_b64``), byte
    for byte."""
    document: dict[str, object] = {
        "event": event.event,
        "events": [event.event],
        "path": text(event.path),
        "name": text(os.path.basename(event.path)),
        "dir": text(os.path.dirname(event.path)),
        "is_dir": event.is_dir,
        "src_path": text(event.src_path),
        "caught_up": event.caught_up,
    }
    for key, value in (("path", event.path), ("src_path", event.src_path)):
        if not is_utf8(value):
            document[f"{key}_b64"] = base64.b64encode(value).decode()
    return document
