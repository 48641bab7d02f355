"""The journal: fixed MESSAGE_IDs, and records sent as structured fields.

Each field given to ``logs.log`` becomes ``WATCHD_<NAME>``; bytes (a file name)
are sent as they are, so ``WATCHD_PATH`` holds the name's exact bytes while
``MESSAGE`` shows it escaped. Every MESSAGE_ID here is explained in
``packaging/systemd/watchd.catalog`` (``journalctl -x`` shows that text).
"""

from __future__ import annotations

import logging
from enum import StrEnum

from systemd import journal


class MessageId(StrEnum):
    STARTED = "068b4e040e93426f8b3e83d413c3d593"
    RELOADED = "0b4317ae335b4a19b8afe5ef16a9a881"
    RELOAD_FAILED = "cdac17c011ec46c4ad1fc002220c2217"
    ACTION_FAILED = "3dcd49a4ec2442ee945fd086eee85464"
    QUEUE_OVERFLOW = "45758d632ce54a11bcc6d9d2e32cc3a8"
    EVENTS_DROPPED = "296dad00a552445db8c06d28149158a0"
    STOPPED = "32ca5750e7b74d2b8cabb1664de3f322"
    CONFIG_INVALID = "6147e902439d4327be3df311bcd76e7b"
    WATCH_LIMIT = "c185fe0c3fc54266bc51f08b84f7d509"
    PATH_UNTRUSTED = "4e9b54520a1b442ba36ffbc010e08f96"
    PROGRAM_UNTRUSTED = "904474a6927a48088b3ee1d258252808"
    RULES_WARNING = "1876b14b15314bf6b41567d9bb1dfa58"
    JOB_DEAD = "922cc3b9c45b421c9b06ecb4b45490ec"
    CAUGHT_UP = "1401ee8bb55f482f8b9710339fe4b04f"
    LEDGER_DEGRADED = "f33b2042c05f499686e294ebb1b302c2"
    LEDGER_CORRUPT = "a7db98c4fed34552a228071aa42798c1"
    POLLED = "beb6457715344dc0b4ead43b20657951"
    WATCHED_AGAIN = "3e0bb82f251e48f98fb255442b4f46ab"


IDENTIFIER = "watchd"
_PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
               logging.DEBUG: 7}


def field_name(key: str) -> str:
    return "WATCHD_" + key.upper()


JOURNAL_SOCKET = "/run/systemd/journal/socket"  # where journald takes entries


def field_text(value: object) -> str:
    """A field's value that is not a name, as text: a flag is 1 or 0, as in a command's
    environment (``WATCHD_CAUGHT_UP=1``), not Python's ``True``."""
    return str(int(value)) if isinstance(value, bool) else str(value)


def fields_of(record: logging.LogRecord, message: str) -> dict[str, str | bytes]:
    """The journal entry for ``record``, whose rendered text is ``message``."""
    entry: dict[str, str | bytes] = {
        "MESSAGE": message,
        "PRIORITY": str(_PRIORITIES.get(record.levelno, 6)),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
        "CODE_FILE": record.pathname,
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName,
    }
    message_id = getattr(record, "message_id", None)
    if message_id:
        entry["MESSAGE_ID"] = str(message_id)
    for key, value in getattr(record, "fields", {}).items():
        if value is None:
            continue
        if isinstance(value, str):
            # A name decoded with surrogateescape goes back to its own bytes.
            value = value.encode("utf-8", "surrogateescape")
        entry[field_name(key)] = value if isinstance(value, bytes) else field_text(value)
    return entry


class JournalHandler(logging.Handler):
    """Sends each record to journald over its native socket, with every field."""

    def __init__(self, render: logging.Formatter) -> None:
        super().__init__()
        self.render = render

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = fields_of(record, self.render.format(record))
            journal.sendv(*(_line(key, value) for key, value in entry.items()))
        except Exception:
            self.handleError(record)


def _line(key: str, value: str | bytes) -> bytes:
    return key.encode() + b"=" + (
        value if isinstance(value, bytes) else value.encode("utf-8", "backslashreplace"))
