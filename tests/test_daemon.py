"""The daemon's main loop: reload (good and bad), counters, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from conftest import counters_line, kernel_watches, recorder, records, wait_for


def rules_text(watched, out, names) -> str:
    text = "rules:\n"
    for name in names:
        text += f"""\
  - name: {name}
    paths: [{watched}]
    recursive: true
    actions: [{{command: {recorder(out, name, "{path}")}}}]
"""
    return text


def fired_rules(out) -> list[str]:
    return [bytes.fromhex(record["argv"][0]).decode() for record in records(out)]


def test_reload_applies_new_rules_and_keeps_shared_watches(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    (watched / "a" / "b").mkdir(parents=True)
    config = write_rules(rules_text(watched, out, ["first"]))
    process = daemon(config)
    before = kernel_watches(process.pid)
    assert len(before) == 3
    config.write_text(rules_text(watched, out, ["first", "second"]))
    process.signal(signal.SIGHUP)
    process.wait_log("reloaded")
    assert kernel_watches(process.pid) == before
    (watched / "a" / "f").write_bytes(b"x")
    wait_for(lambda: sorted(fired_rules(out)) == ["first", "second"])


def test_a_broken_reload_keeps_the_old_rules_firing(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = write_rules(rules_text(watched, out, ["old"]))
    process = daemon(config)
    config.write_text(rules_text(watched, out, ["new"]) + "    bogus: 1\n")
    process.signal(signal.SIGHUP)
    process.wait_log("reload failed")
    assert f"reload failed: the current rules stay in force: {config}:6:5: rules[0]: unknown key" \
        in process.log()
    (watched / "f").write_bytes(b"x")
    wait_for(lambda: fired_rules(out) == ["old"])
    # Fixed again: the next reload takes.
    config.write_text(rules_text(watched, out, ["new"]))
    process.signal(signal.SIGHUP)
    process.wait_log("reloaded")
    (watched / "g").write_bytes(b"x")
    wait_for(lambda: fired_rules(out) == ["old", "new"])


def test_reload_drops_watches_no_rule_needs(tmp_path, write_rules, daemon):
    one, two, out = tmp_path / "one", tmp_path / "two", tmp_path / "out.jsonl"
    (one / "sub").mkdir(parents=True)
    two.mkdir()
    config = write_rules(rules_text(one, out, ["r"]))
    process = daemon(config)
    assert len(kernel_watches(process.pid)) == 2
    config.write_text(rules_text(two, out, ["r"]))
    process.signal(signal.SIGHUP)
    process.wait_log("reloaded")
    assert list(kernel_watches(process.pid).values()) == [os.stat(two).st_ino]
    (one / "f").write_bytes(b"x")
    (two / "f").write_bytes(b"x")
    wait_for(lambda: records(out))
    assert [bytes.fromhex(r["argv"][1]) for r in records(out)] == [os.fsencode(two / "f")]


def test_sigusr1_logs_counters(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    process = daemon(write_rules(rules_text(watched, out, ["r"])))
    (watched / "f").write_bytes(b"x")
    wait_for(lambda: records(out))
    process.wait_log("action ok")
    # A run is counted once its action has said how it went: ask until it is.
    line = wait_for(lambda: told if "actions_ok=1" in (told := counters_line(process)) else None,
                    what="the run counted")
    for field in ["watches=1", "rules=1", "actions_ok=1", "actions_failed=0", "dropped=0",
                  "overflows=0"]:
        assert field in line


def test_sigint_stops_cleanly(tmp_path, write_rules, daemon):
    watched = tmp_path / "in"
    watched.mkdir()
    process = daemon(write_rules(rules_text(watched, tmp_path / "out", ["r"])))
    process.signal(signal.SIGINT)
    assert process.process.wait(15) == 0
    assert "stopping on SIGINT" in process.log()


def test_runs_under_warnings_as_errors(tmp_path, write_rules, daemon):
    """pyinotify's deprecated calls must not stop the daemon when warnings are errors."""
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    process = daemon(write_rules(rules_text(watched, out, ["strict"])), "-W", "error")
    for name in ["a", "b"]:
        (watched / name).write_bytes(b"x")
    wait_for(lambda: len(records(out)) == 2)
    assert "Traceback" not in process.log()


def test_a_full_queue_drops_counts_and_says_so(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = write_rules(f"""\
        settings: {{workers: 1, queue_size: 1}}
        rules:
          - name: slow
            paths: [{watched}]
            actions: [{{command: {recorder(out)}, env: {{RECORD_SLEEP: "1"}}}}]
        """)
    process = daemon(config)
    for index in range(20):
        (watched / str(index)).write_bytes(b"x")
    process.wait_log("queue full: events dropped")
    line = next(ln for ln in process.log().splitlines() if "events dropped" in ln)
    assert "queue_size=1" in line


def test_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "watchd", "--help"], capture_output=True,
                            text=True, check=True)
    for command in ["run", "check", "explain", "schema"]:
        assert command in result.stdout
