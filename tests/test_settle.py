"""settle: a path is acted on only once its size and mtime have stayed the same for a while,
looked at with lstat: a writer that pauses is not cut short."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import counters_line, wait_for


def size_rule(write_rules, watched: Path, out: Path, **keys: object) -> Path:
    """A rule that appends the size the file has when its action runs."""
    path = "{paths}" if "batch" in keys else "{path}"  # a batch's command names its paths
    rule = {"name": "upload", "paths": [str(watched)], "events": ["create", "modify"],
            "actions": [{"command": ["/bin/sh", "-c", f'wc -c < "$0" >> {out}', path]}],
            **keys}
    return write_rules(json.dumps({"rules": [rule]}))


def sizes(out: Path) -> list[int]:
    return [int(line) for line in out.read_text().split()] if out.exists() else []


def slow_upload(path: Path, pause: float) -> None:
    with open(path, "wb") as upload:
        upload.write(b"a" * 1000)
        upload.flush()
        # The pause is the scenario: a slow client between two writes, not a wait for a result.
        signal.sigtimedwait([], pause)
        upload.write(b"b" * 1000)


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_a_paused_upload_is_acted_on_once_complete(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out"
    watched.mkdir()
    process = daemon(size_rule(write_rules, watched, out, settle="1500ms"))
    slow_upload(watched / "upload.bin", 0.8)
    wait_for(lambda: sizes(out))
    # Whatever came later, nothing acts on the path before it settles again.
    assert sizes(out) == [2000]
    assert "settling=0" in counters_line(process)


def test_debounce_alone_acts_on_the_half_written_upload(tmp_path, write_rules, daemon):
    """What settle is for: debounce sees only the absence of events."""
    watched, out = tmp_path / "in", tmp_path / "out"
    watched.mkdir()
    daemon(size_rule(write_rules, watched, out, debounce="300ms"))
    slow_upload(watched / "upload.bin", 0.8)
    wait_for(lambda: len(sizes(out)) == 2)
    assert sizes(out) == [1000, 2000]


def test_a_path_that_is_gone_is_released_at_once(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.txt"
    watched.mkdir()
    rule = {"name": "gone", "paths": [str(watched)], "events": ["delete"], "settle": "1h",
            "actions": [{"command": ["/bin/sh", "-c", f'echo "$0" >> {out}', "{path}"]}]}
    daemon(write_rules(json.dumps({"rules": [rule]})))
    (watched / "x").write_bytes(b"x")
    os.unlink(watched / "x")
    wait_for(lambda: out.exists() and out.read_text().strip() == str(watched / "x"))


@pytest.mark.slow  # two starts and two settle periods: make test runs it, make check does not
@pytest.mark.parametrize("shape", [{}, {"batch": {"window": "100ms"}}], ids=["job", "batch"])
def test_a_path_settling_at_a_stop_settles_again_after_the_start(tmp_path, write_rules, daemon,
                                                                 shape):
    # Held at the stop, its job waited in the ledger and was run at once at the next start:
    # an upload still being written was acted on half-written. A batch rule's path came back
    # as a batch of one, run at once the same way.
    watched, out = tmp_path / "in", tmp_path / "out"
    watched.mkdir()
    config = size_rule(write_rules, watched, out, settle="3s", **shape)
    process = daemon(config)
    with open(watched / "upload.bin", "wb") as upload:
        upload.write(b"a" * 1000)
        upload.flush()
        wait_for(lambda: "settling=1" in counters_line(process), what="the upload settling")
        assert process.stop() == 0
        assert "1 job(s) wait in the ledger" in process.log()
        process = daemon(config)
        upload.write(b"b" * 1000)  # the client goes on while the daemon starts again
    wait_for(lambda: sizes(out))
    assert sizes(out) == [2000]
    assert "settling=0" in counters_line(process)
    # The upload's new event took the place of the job the ledger held, and ended it.
    assert process.stop() == 0
    assert "from the ledger queued" not in daemon(config).log()
    assert sizes(out) == [2000]
