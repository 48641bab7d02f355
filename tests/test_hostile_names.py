"""Hostile file names reach a command byte for byte, as one argv element; nothing runs from them."""

from __future__ import annotations

import os

import pytest
from conftest import argv_of, env_of, recorder, records, wait_for

HOSTILE_NAMES = [
    b"$(touch pwned)",
    b"`touch pwned`",
    b";id",
    b"a\nb",
    b"-rf",
    b"--help",
    b"-e",
    b"~root",
    b"{path}",
    b"x" * 255,
    b"\xff\xfe",
    b"bad\xff\xfe",
    b"with space \"and\" 'quotes'",
    b"tab\there",
    b"\x1b[31mred",
    b"caf\xc3\xa9",
    b"*",
    b"\\x41",
]


@pytest.fixture
def hostile_run(tmp_path, write_rules, daemon):
    watched, out, cwd = tmp_path / "in", tmp_path / "out.jsonl", tmp_path / "cwd"
    watched.mkdir()
    cwd.mkdir()
    argv = recorder(out, "{path}", "{name}", "prefix-{name}-suffix")
    config = write_rules(f"""\
        rules:
          - name: hostile
            paths: [{watched}]
            actions: [{{command: {argv}, cwd: {cwd}}}]
        """)
    process = daemon(config)
    for name in HOSTILE_NAMES:
        path = os.path.join(os.fsencode(watched), name)
        with open(path, "wb") as stream:
            stream.write(b"x")
    wait_for(lambda: len(records(out)) >= len(HOSTILE_NAMES), what="every hostile name")
    process.wait_log("action ok", count=len(HOSTILE_NAMES))
    return watched, out, cwd, process


def test_names_reach_argv_and_environment_byte_for_byte(hostile_run):
    watched, out, _, _ = hostile_run
    seen = {}
    for record in records(out):
        path, name, wrapped = argv_of(record)
        env = env_of(record)
        assert env["WATCHD_PATH"] == path
        assert env["WATCHD_NAME"] == name
        assert env["WATCHD_DIR"] == os.fsencode(watched)
        assert wrapped == b"prefix-" + name + b"-suffix"
        seen[name] = path
    assert sorted(seen) == sorted(HOSTILE_NAMES)
    for name, path in seen.items():
        assert path == os.fsencode(watched) + b"/" + name


def test_nothing_injected_runs_and_no_line_is_forged(hostile_run, tmp_path):
    _, _, cwd, process = hostile_run
    assert not list(tmp_path.rglob("pwned"))
    assert not (cwd / "pwned").exists()
    log = process.log()
    assert "\x1b" not in log
    # Every line of the log is one of watchd's own: the newline in a name stayed escaped.
    for line in log.splitlines():
        assert line[:4].isdigit(), line
    assert "a\\nb" in log
    assert "bad\\xff\\xfe" in log
    assert "\\\\x41" in log
