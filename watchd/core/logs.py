"""Logging: one line per happening, with its fields; names escaped so they cannot forge lines.

Every message goes through ``log(level, message, **fields)``. On stderr a line
reads ``time LEVEL message key=value …``; in the journal, MESSAGE is
``message key=value …`` and each field is also a structured field of its own. Records pass through a
bounded queue to a writer thread, so that no thread that logs (the notifier
least of all) ever waits on a slow stderr or journal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Mapping

from watchd.core.journal import JOURNAL_SOCKET, JournalHandler, MessageId

LOGGER = logging.getLogger("watchd")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}

RECORDS_WAITING = 10000  # records queued for the writer; beyond it they are dropped and counted
BATCH_WAIT = 0.01  # seconds the writer gathers records after the first, before writing

_SHORT_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape(value: bytes | str) -> str:
    """Printable text for any name: bytes that are not UTF-8 and unprintable characters escaped.

    A backslash is doubled first, so ``\\xff`` in the output always means the byte 0xff, and
    ``\\u2028`` the character U+2028.
    """
    # Most names need nothing escaped: found out at C speed, before the whole round trip below.
    plain = value.decode("ascii") if isinstance(value, bytes) and value.isascii() else value
    if isinstance(plain, str) and plain.isprintable() and "\\" not in plain:
        return plain
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    text = value.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
    return "".join(map(_shown, text))


def _shown(char: str) -> str:
    """A character as a log line may hold it. Controls would let a name end the line or drive a
    terminal; line separators and bidirectional overrides would make it read as other text."""
    if char.isprintable():
        return char
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if code < 0x80:  # an ASCII character is its byte: no other name shows the same
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _quoted(value: object) -> str:
    if isinstance(value, bytes | str):
        text = escape(value)
    else:  # field_text, inline: every number of every line comes here
        text = str(int(value)) if value is True or value is False else str(value)
    if not text or " " in text or '"' in text or "=" in text:
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


class _NonBlockingHandler(logging.Handler):
    """Hands records to the writer thread; beyond ``RECORDS_WAITING`` waiting, drops and
    counts them (the writer reports the count)."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord | None]) -> None:
        super().__init__()
        self.records = records
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.records.qsize() >= RECORDS_WAITING:
            self.dropped += 1
            return
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        self.records.put(record)


class _Writer(threading.Thread):
    """Writes what ``_NonBlockingHandler`` queued, a batch per wake-up.

    Waking for every record costs each busy worker a hand-over of the interpreter lock;
    gathering for ``BATCH_WAIT`` first makes that one per batch. With nothing to write it
    sleeps in ``get``: no periodic wake-ups.
    """

    def __init__(self, source: _NonBlockingHandler, sink: logging.Handler) -> None:
        super().__init__(name="watchd-log", daemon=True)
        self.source = source
        self.sink = sink
        self._dropped_reported = 0

    def run(self) -> None:
        records = self.source.records
        while True:
            batch = [records.get()]
            time.sleep(BATCH_WAIT)
            with contextlib.suppress(queue.Empty):
                while len(batch) < RECORDS_WAITING:
                    batch.append(records.get_nowait())
            for record in batch:
                if record is None:  # from stop(): all that came before it is written
                    break
                self.sink.handle(record)
            self._report_dropped()
            if record is None:
                return

    def _report_dropped(self) -> None:
        dropped = self.source.dropped
        if dropped > self._dropped_reported:
            self.sink.handle(LOGGER.makeRecord(
                LOGGER.name, logging.WARNING, __file__, 0,
                f"{dropped - self._dropped_reported} log record(s) dropped: the log could "
                "not keep up", (), None))
            self._dropped_reported = dropped

    def stop(self) -> None:
        self.source.records.put(None)
        self.join()


_writer: _Writer | None = None


def setup(level: str = "info", target: str = "auto") -> str:
    """Log to ``target`` (journal, stderr, or auto: the journal when stderr is connected to it)
    through the writer thread; returns the target chosen. Call ``shutdown`` before exit."""
    global _writer
    shutdown()
    if target == "auto":
        target = "journal" if stderr_is_journal() else "stderr"
    if target == "journal" and not os.path.exists(JOURNAL_SOCKET):
        # journald's socket is not there: what is sent to it is lost without an error.
        print(f"watchd: no journal at {JOURNAL_SOCKET}: logging to stderr", file=sys.stderr)
        target = "stderr"
    sink: logging.Handler
    if target == "journal":
        sink = JournalHandler(FieldsFormatter())
    else:
        sink = logging.StreamHandler(sys.stderr)
        sink.setFormatter(StderrFormatter())
    # No record needs the thread's or process's name: not looking them up saves a third of
    # making one, for every action run.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    source = _NonBlockingHandler(queue.SimpleQueue())
    _writer = _Writer(source, sink)
    _writer.start()
    LOGGER.handlers[:] = [source]
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
    global _writer
    if _writer is not None:
        _writer.stop()
        _writer = None


def set_level(level: str) -> None:
    LOGGER.setLevel(LEVELS[level])


def log(level: int, message: str, *, exc_info: bool = False,
        message_id: MessageId | None = None, fields: Mapping[str, object] | None = None,
        **more: object) -> None:
    """Log ``message`` with its fields: ``more``, after those of a mapping built beforehand
    (``fields``, whose keys may be any word, ``exc_info`` and ``message_id`` included)."""
    if LOGGER.isEnabledFor(level):
        if fields:
            more = {**fields, **more}
        # The caller's place, for the journal's CODE_FILE, CODE_LINE and CODE_FUNC, read from
        # its frame: Logger.findCaller's walk up the stack costs more than the rest of a record.
        caller = sys._getframe(1)
        code = caller.f_code
        LOGGER.handle(LOGGER.makeRecord(
            LOGGER.name, level, code.co_filename, caller.f_lineno, message, (),
            sys.exc_info() if exc_info else None, code.co_name,
            {"fields": more, "message_id": message_id}))
