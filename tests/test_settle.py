"""settle: a path is acted on only once its size and mtime have stayed the same for a while,
looked at with lstat: a writer that pauses is not cut short."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import counters, counters_line, listed, wait_for


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


def stopped_settling(process, config: Path, daemon):
    """Stop ``process`` once its one path is settling (kept in the ledger); the next start."""
    wait_for(lambda: "settling=1" in counters_line(process), what="the upload settling")
    assert process.stop() == 0
    assert "1 job(s) wait in the ledger" in process.log()
    return daemon(config)


@pytest.mark.slow  # three starts and a settle period: make test runs it, make check does not
def test_a_path_settling_at_two_stops_runs_once(tmp_path, write_rules, daemon):
    # The second stop kept the resumed job again, under a new id: its first row stayed queued,
    # the next start held both, ran one and left the other in the ledger, to run once more.
    watched, out = tmp_path / "in", tmp_path / "out"
    watched.mkdir()
    config = size_rule(write_rules, watched, out, settle="2s")
    process = daemon(config)
    (watched / "upload.bin").write_bytes(b"a" * 1000)
    process = stopped_settling(stopped_settling(process, config, daemon), config, daemon)
    wait_for(lambda: sizes(out))
    wait_for(lambda: not listed(config), what="the ledger without a job")
    assert process.stop() == 0
    assert "from the ledger queued" not in daemon(config).log()
    assert sizes(out) == [1000]


def stop_line_when_debounce_hands_on(tmp_path: Path, write_rules, daemon, attempt: int,
                                     files: int) -> str:
    """The stop line of a daemon stopped as its debouncer hands ``files`` paths to settle:
    paused past every path's debounce, then stopped and let go on, its stop and that thread
    (with every path to hand on at once) run together."""
    watched = tmp_path / f"in{attempt}"
    watched.mkdir()
    rule = {"name": "upload", "paths": [str(watched)], "events": ["close_write"],
            "debounce": "1s", "settle": "1h", "actions": [{"command": ["/bin/true"]}]}
    settings = {"state_dir": str(tmp_path / f"state{attempt}")}
    process = daemon(write_rules(json.dumps({"settings": settings, "rules": [rule]})))
    for index in range(files):
        (watched / f"f{index}").write_bytes(b"x")
    # Once the last is matched, its debounce ends within a second (earlier ones may be settling).
    wait_for(lambda: counters(process)["matched"] == files, timeout=30)
    due = time.monotonic() + 1.0
    process.signal(signal.SIGSTOP)
    wait_for(lambda: time.monotonic() > due + 0.1, what="every path's debounce over")
    process.signal(signal.SIGTERM)
    process.signal(signal.SIGCONT)
    assert process.stop() == 0
    return [line for line in process.log().splitlines() if " stopped" in line][-1]


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_a_stop_while_debounce_hands_paths_to_settle_keeps_every_job(tmp_path, write_rules,
                                                                     daemon):
    # The debouncer's thread hands what is due to settle outside its lock; the stop stopped
    # settle meanwhile, which refused the rest: "dropped", neither run nor kept.
    files = 2000
    for attempt in range(3):
        stopped = stop_line_when_debounce_hands_on(tmp_path, write_rules, daemon, attempt, files)
        assert f"; {files} job(s) wait in the ledger" in stopped, stopped


@pytest.mark.slow  # seconds: make test runs it, make check does not
@pytest.mark.parametrize("change", [{"enabled": False}, {"name": "other"}],
                         ids=["disabled", "removed"])
def test_a_reload_that_removes_a_rule_ends_its_settling_paths(tmp_path, write_rules, daemon,
                                                              change):
    # A held job kept the rule it was matched under: it ran after the reload, and a path the
    # ledger held (resumed) became a dead letter "rule gone" at the next start.
    watched, out = tmp_path / "in", tmp_path / "out"
    watched.mkdir()
    config = size_rule(write_rules, watched, out, settle="1h")
    process = daemon(config)
    (watched / "resumed.bin").write_bytes(b"a")
    process = stopped_settling(process, config, daemon)
    (watched / "new.bin").write_bytes(b"b")
    wait_for(lambda: "settling=2" in counters_line(process), what="both paths settling")
    size_rule(write_rules, watched, out, settle="1h", **change)
    process.signal(signal.SIGHUP)
    process.wait_log("reloaded")
    ended = [line for line in process.log().splitlines() if "(it was settling at" in line]
    assert len(ended) == 2, process.log()
    assert all("WARNING not run: its rule 'upload' is gone or disabled" in line for line in ended)
    assert "settling=0" in counters_line(process)
    wait_for(lambda: not listed(config, "--dead") and not listed(config), what="no job left")
    assert process.stop() == 0
    assert not sizes(out)


@pytest.mark.parametrize(("state", "before", "after"), [
    ("settling", {"settle": "1h"}, {"settle": "100ms"}),
    ("debouncing", {"debounce": "1h"}, {"debounce": "100ms"}),
    ("batching", {"batch": {"window": "1h"}}, {"batch": {"window": "100ms"}})],
    ids=["settle", "debounce", "batch"])
def test_a_reload_that_shortens_settle_applies_to_held_paths(tmp_path, write_rules, daemon,
                                                             state, before, after):
    # A held path kept the delay of the rule it was matched under: an hour.
    watched, out = tmp_path / "in", tmp_path / "out"
    watched.mkdir()
    process = daemon(size_rule(write_rules, watched, out, **before))
    (watched / "upload.bin").write_bytes(b"a" * 1000)
    wait_for(lambda: f"{state}=1" in counters_line(process), what=f"the path {state}")
    size_rule(write_rules, watched, out, **after)
    process.signal(signal.SIGHUP)
    wait_for(lambda: sizes(out))
    assert sizes(out) == [1000]
