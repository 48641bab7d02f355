"""What reaches the journal: fields, MESSAGE_IDs, raw name bytes, and the catalog explaining them.

journald itself is exercised by the system test (tests/system); here the entries are checked as
built, and the choice of target as systemd makes it (JOURNAL_STREAM against stderr's inode).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import DEADLINE

from watchd.core import logs
from watchd.core.journal import JOURNAL_SOCKET, MessageId, fields_of
from watchd.ledger.owner import LOCK_NAME

CATALOG = Path(__file__).parents[1] / "packaging" / "systemd" / "watchd.catalog"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured():
    capture = Capture()
    saved = logs.LOGGER.handlers[:], logs.LOGGER.level
    logs.LOGGER.handlers[:] = [capture]
    logs.LOGGER.setLevel(logging.DEBUG)
    yield capture.records
    logs.LOGGER.handlers[:], level = saved
    logs.LOGGER.setLevel(level)


def entry_of(record: logging.LogRecord) -> dict[str, str | bytes]:
    return fields_of(record, logs.FieldsFormatter().format(record))


def test_an_action_failure_as_the_journal_gets_it(captured):
    hostile = b"/srv/in/\xff bad\nname\x1b[31m"
    logs.log(logging.ERROR, "action failed: exited with status", message_id=MessageId.ACTION_FAILED,
             rule="ingest", event="close_write", path=hostile, action="command", exit_status=3,
             duration_ms=12, found_by_scan=None)
    entry = entry_of(captured[0])
    assert entry["MESSAGE_ID"] == "3dcd49a4ec2442ee945fd086eee85464"
    assert entry["PRIORITY"] == "3"
    assert entry["SYSLOG_IDENTIFIER"] == "watchd"
    assert entry["WATCHD_PATH"] == hostile  # the name's own bytes, for scripts
    assert entry["WATCHD_RULE"] == b"ingest"
    assert entry["WATCHD_EVENT"] == b"close_write"
    assert entry["WATCHD_ACTION"] == b"command"
    assert entry["WATCHD_EXIT_STATUS"] == "3"
    assert entry["WATCHD_DURATION_MS"] == "12"
    assert "WATCHD_FOUND_BY_SCAN" not in entry
    # MESSAGE is one printable line a human reads: the name escaped, nothing forged.
    message = entry["MESSAGE"]
    assert "\n" not in message and "\x1b" not in message
    assert "path=\"/srv/in/\\xff bad\\nname\\x1b[31m\"" in message
    assert message.startswith("action failed: exited with status rule=ingest ")


def test_a_flag_is_1_in_the_journal_and_the_line_as_in_the_environment(captured):
    """``journalctl WATCHD_CAUGHT_UP=1`` finds what a command saw as WATCHD_CAUGHT_UP=1."""
    logs.log(logging.INFO, "action ok", rule="r", caught_up=True, found_by_scan=True)
    entry = entry_of(captured[0])
    assert (entry["WATCHD_CAUGHT_UP"], entry["WATCHD_FOUND_BY_SCAN"]) == ("1", "1")
    assert entry["MESSAGE"] == "action ok rule=r caught_up=1 found_by_scan=1"


@pytest.mark.parametrize(("name", "shown"), [
    (b"/srv/in/report.csv", "/srv/in/report.csv"),
    ("/srv/in/report.csv", "/srv/in/report.csv"),
    (b"/srv/in/caf\xc3\xa9", "/srv/in/café"),
    ("/srv/in/café", "/srv/in/café"),
    (b"a\\xff", "a\\\\xff"),  # a backslash is doubled: \xff in a line always means the byte
    (b"a\xff", "a\\xff"),
    (os.fsdecode(b"a\xff"), "a\\xff"),
    (b"a\x7fb\x00c", "a\\x7fb\\x00c"),
    ("a\x85b\tc", "a\\u0085b\\tc"),  # a C1 control is a character, not the byte 0x85 …
    (b"a\x85", "a\\x85"),  # … which alone is not UTF-8
    ("a\u2028b", "a\\u2028b"),  # a line separator would break the line in some viewers
    ("invoice\u202etxt.exe", "invoice\\u202etxt.exe"),  # a bidi override would show exe.txt
    ("a\u00a0b\U000e0001", "a\\u00a0b\\U000e0001"),  # invisible: shown, so no two look alike
])
def test_a_name_is_shown_printable_and_unambiguous(name, shown):
    assert logs.escape(name) == shown


def test_a_name_decoded_with_surrogateescape_keeps_its_bytes(captured):
    logs.log(logging.INFO, "x", path=os.fsdecode(b"/in/\xfe"))
    assert entry_of(captured[0])["WATCHD_PATH"] == b"/in/\xfe"


def test_priorities_follow_syslog(captured):
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        logs.log(level, "x")
    assert [entry_of(r)["PRIORITY"] for r in captured] == ["7", "6", "4", "3", "2"]


def test_a_traceback_stays_in_the_entry(captured):
    try:
        raise ValueError("boom")
    except ValueError:
        logs.log(logging.ERROR, "cannot handle an inotify event; skipped", exc_info=True)
    message = entry_of(captured[0])["MESSAGE"]
    assert message.startswith("cannot handle an inotify event; skipped\nTraceback")
    assert "ValueError: boom" in message


def test_every_message_id_is_in_the_catalog_and_no_other():
    text = CATALOG.read_text()
    in_catalog = re.findall(r"^-- ([0-9a-f]{32})$", text, re.MULTILINE)
    assert sorted(in_catalog) == sorted(m.value for m in MessageId)
    subjects = re.findall(r"^Subject: (.+)$", text, re.MULTILINE)
    assert len(subjects) == len(MessageId)


def test_the_journal_is_chosen_when_stderr_is_the_journal_stream(tmp_path, monkeypatch):
    stream = open(tmp_path / "stream", "w")  # noqa: SIM115 - closed below
    stat = os.fstat(stream.fileno())
    monkeypatch.setattr(sys, "stderr", stream)
    (tmp_path / "journal-socket").touch()
    monkeypatch.setattr(logs, "JOURNAL_SOCKET", str(tmp_path / "journal-socket"))
    try:
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        assert logs.setup(target="auto") == "journal"
        # Inherited from a parent whose stderr was the journal, while ours is not: stderr.
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino + 1}")
        assert logs.setup(target="auto") == "stderr"
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert logs.setup(target="auto") == "stderr"
        monkeypatch.delenv("JOURNAL_STREAM")
        assert logs.setup(target="auto") == "stderr"
        assert logs.setup(target="journal") == "journal"
    finally:
        logs.shutdown()
        stream.close()


def test_the_journal_asked_for_where_there_is_none_is_said_and_stderr_taken(tmp_path):
    """journald's socket missing: entries sent there vanish without an error (a second
    daemon refused on the state directory exited 3 saying nothing)."""
    config = tmp_path / "rules.yaml"
    config.write_text(f"settings: {{state_dir: {tmp_path / 'state'}}}\nrules:\n  - name: x\n"
                      f"    paths: [{tmp_path / 'nowhere'}]\n"
                      "    actions: [{command: [/bin/true]}]\n")
    (tmp_path / "state").mkdir()
    # journald's directory hidden, in a mount namespace of the daemon's own, where it runs.
    hidden = ["unshare", "--mount", "sh", "-c",
              f'mount -t tmpfs tmpfs {os.path.dirname(os.path.dirname(JOURNAL_SOCKET))} '
              '2>/dev/null; exec "$@"', "sh"]
    with open(tmp_path / "state" / LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        ran = subprocess.run([*hidden, sys.executable, "-m", "watchd", "run", "--config",
                              str(config), "--log-target", "journal", "--socket",
                              str(tmp_path / "ctl")],
                             capture_output=True, text=True, timeout=30, check=False)
    assert ran.stderr.startswith(f"watchd: no journal at {JOURNAL_SOCKET}: logging to stderr\n")
    assert "another watchd" in ran.stderr and ran.returncode == 3, ran.stderr


def test_the_entry_names_the_code_that_logged(captured):
    logs.log(logging.INFO, "x")
    entry = entry_of(captured[0])
    assert entry["CODE_FILE"] == __file__
    assert entry["CODE_FUNC"] == "test_the_entry_names_the_code_that_logged"


def test_records_the_log_cannot_take_are_counted_and_reported(monkeypatch):
    # stderr is a pipe nobody reads at first: the writer blocks on it, records pile up past
    # the limit and are dropped; once it drains, every record is either written or counted.
    monkeypatch.setattr(logs, "RECORDS_WAITING", 20)
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stderr", stream)
    logs.setup(target="stderr")
    try:
        for i in range(300):
            logs.log(logging.INFO, "record", number=i, padding="p" * 4000)
    finally:
        output = bytearray()
        reader = threading.Thread(target=lambda: output.extend(_read_all(read_end)))
        reader.start()
        logs.shutdown()
        stream.close()
        reader.join(DEADLINE)
    lines = output.decode().splitlines()
    written = sum(" INFO record number=" in line for line in lines)
    reports = [line for line in lines if "log record(s) dropped" in line]
    assert written < 300 and len(reports) == 1
    dropped = int(reports[0].split(" WARNING ")[1].split()[0])
    assert written + dropped == 300


def _read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as pipe:
        return pipe.read()
