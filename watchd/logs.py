"""Logging: one line per happening, with its fields; names escaped so they cannot forge lines.

Every message goes through ``log(level, message, **fields)``. On stderr a line
reads ``time LEVEL message key=value …``; in the journal, MESSAGE is
``message key=value …`` and each field is also a structured field of its own. Records pass through a
bounded queue to a writer thread, so that no thread that logs (the notifier
least of all) ever waits on a slow stderr.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import sys

from watchd.journal import JournalHandler, MessageId

LOGGER = logging.getLogger("watchd")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}

# Control characters (C0, DEL, C1) would let a file name end a log line or drive a terminal.
_CONTROL = {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)]}
_CONTROL.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})


def escape(value: bytes | str) -> str:
    """Printable text for any name: bytes that are not UTF-8 and control characters escaped.

    A backslash is doubled first, so ``\\xff`` in the output always means the byte 0xff.
    """
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    text = value.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
    return text.translate(_CONTROL)


def _quoted(value: object) -> str:
    text = escape(value) if isinstance(value, bytes | str) else str(value)
    if text == "" or any(c in text for c in ' "='):
        return '"' + text.replace('"', '\\"') + '"'
    return text


class FieldsFormatter(logging.Formatter):
    """``message key=value …``: what the journal gets as MESSAGE (it keeps time and level)."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = getattr(record, "fields", {})
        text = " ".join(
            [escape(record.getMessage())]
            + [f"{key}={_quoted(value)}" for key, value in fields.items() if value is not None]
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        return text


class StderrFormatter(FieldsFormatter):
    """``time LEVEL message key=value …``"""

    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03d"

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.formatTime(record)} {record.levelname} {super().format(record)}"


class _NonBlockingHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread; when its queue is full, drops and counts them."""

    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


_listener: logging.handlers.QueueListener | None = None


def setup(level: str = "info", target: str = "auto") -> str:
    """Log to ``target`` (journal, stderr, or auto: the journal when stderr is connected to it)
    through the writer thread; returns the target chosen. Call ``shutdown`` before exit."""
    global _listener
    shutdown()
    if target == "auto":
        target = "journal" if stderr_is_journal() else "stderr"
    writer: logging.Handler
    if target == "journal":
        writer = JournalHandler(FieldsFormatter())
    else:
        writer = logging.StreamHandler(sys.stderr)
        writer.setFormatter(StderrFormatter())
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=10000)
    _listener = logging.handlers.QueueListener(records, writer)
    _listener.start()
    LOGGER.handlers[:] = [_NonBlockingHandler(records)]
    LOGGER.propagate = False
    set_level(level)
    return target


def stderr_is_journal() -> bool:
    """systemd's test: JOURNAL_STREAM names the device and inode of the stream stderr is."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(sys.stderr.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


def shutdown() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def set_level(level: str) -> None:
    LOGGER.setLevel(LEVELS[level])


def log(level: int, message: str, exc_info: bool = False, message_id: MessageId | None = None,
        **fields: object) -> None:
    if LOGGER.isEnabledFor(level):
        LOGGER.log(level, message, exc_info=exc_info,
                   extra={"fields": fields, "message_id": message_id})
