"""End to end: the real daemon, real inotify, real commands; which rule fires for what."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import argv_of, env_of, recorder, records, wait_for


def rule(name, paths, out, events=None, **keys) -> str:
    lines = [f"  - name: {name}", f"    paths: {[str(p) for p in paths]}"]
    if events:
        lines.append(f"    events: {events}")
    lines += [f"    {key}: {value}" for key, value in keys.items()]
    argv = recorder(out, "{rule}", "{event}", "{path}", "{src_path}")
    lines.append(f"    actions: [{{command: {argv}}}]")
    return "\n".join(lines) + "\n"


def fired(out) -> list[tuple[str, str, bytes, bytes]]:
    result = []
    for record in records(out):
        name, event, path, src = argv_of(record)
        result.append((name.decode(), event.decode(), path, src))
    return result


def test_each_event_fires_its_rule(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = write_rules("rules:\n" + "".join(
        rule(f"on-{event}", [watched], out, [event])
        for event in ["create", "close_write", "moved_to", "delete"]
    ))
    (watched / "c").write_bytes(b"z")
    daemon(config)
    (watched / "a").write_bytes(b"x")
    (tmp_path / "b").write_bytes(b"y")
    os.rename(tmp_path / "b", watched / "b")
    os.unlink(watched / "c")
    a, b, c = (os.fsencode(watched / name) for name in "abc")
    expected = {("on-create", "create", a, b""), ("on-close_write", "close_write", a, b""),
                ("on-moved_to", "moved_to", b, b""), ("on-delete", "delete", c, b"")}
    wait_for(lambda: set(fired(out)) >= expected, what="one action per event")
    assert sorted(fired(out)) == sorted(expected)


def test_a_move_inside_the_tree_carries_its_source(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    (watched / "old").write_bytes(b"x")
    daemon(write_rules("rules:\n" + rule("moves", [watched], out, ["moved_to"])))
    os.rename(watched / "old", watched / "new")
    wait_for(lambda: fired(out))
    assert fired(out) == [("moves", "moved_to", os.fsencode(watched / "new"),
                           os.fsencode(watched / "old"))]


def test_include_and_exclude(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    (watched / "sub").mkdir(parents=True)
    # One worker: actions run in event order, so the last one's record ends the test.
    config = write_rules("settings: {workers: 1}\nrules:\n" + rule(
        "csv", [watched], out, recursive="true", include='["*.csv", "/top.txt"]',
        exclude='["skip*", "sub/private/"]'))
    daemon(config)
    (watched / "sub" / "private").mkdir()
    names = ["a.csv", "a.txt", "skip.csv", "top.txt", "sub/b.csv", "sub/top.txt",
             "sub/private/c.csv", "last.csv"]
    for name in names:
        (watched / name).write_bytes(b"x")
    wait_for(lambda: any(path.endswith(b"last.csv") for _, _, path, _ in fired(out)))
    seen = sorted(os.path.relpath(os.fsdecode(path), watched) for _, _, path, _ in fired(out))
    assert seen == ["a.csv", "last.csv", "sub/b.csv", "top.txt"]


def test_kind_restricts_to_files_or_directories(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    daemon(write_rules("rules:\n" + rule("dirs", [watched], out, ["create"], kind="dir")
                       + rule("files", [watched], out, ["create"], kind="file")))
    (watched / "d").mkdir()
    (watched / "f").write_bytes(b"")
    wait_for(lambda: len(fired(out)) >= 2)
    assert sorted((name, os.path.basename(path)) for name, _, path, _ in fired(out)) == [
        ("dirs", b"d"), ("files", b"f")]
    assert {env_of(r)["WATCHD_IS_DIR"] for r in records(out)} == {b"0", b"1"}


def test_non_recursive_rules_ignore_subdirectories(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    (watched / "sub").mkdir(parents=True)
    daemon(write_rules("rules:\n" + rule("flat", [watched], out)))
    (watched / "sub" / "deep").write_bytes(b"x")
    (watched / "top").write_bytes(b"x")
    wait_for(lambda: fired(out))
    assert [os.path.basename(path) for _, _, path, _ in fired(out)] == [b"top"]


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_new_subdirectories_every_file_seen_exactly_once(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    daemon(write_rules("rules:\n" + rule("creates", [watched], out, ["create"], recursive="true",
                                         kind="file")))
    for index in range(200):
        deep = watched / f"a{index}" / "b" / "c"
        deep.mkdir(parents=True)
        (deep / "f").touch()
    expected = sorted(os.fsencode(watched / f"a{i}" / "b" / "c" / "f") for i in range(200))
    wait_for(lambda: len(fired(out)) >= 200, timeout=60, what="200 creates")
    paths = sorted(path for _, event, path, _ in fired(out))
    assert paths == expected


def test_a_path_that_appears_after_start_is_watched(tmp_path, write_rules, daemon):
    later, out = tmp_path / "not" / "yet" / "there", tmp_path / "out.jsonl"
    process = daemon(write_rules("rules:\n" + rule("later", [later], out)))
    later.mkdir(parents=True)
    (later / "probe").write_bytes(b"x")
    wait_for(lambda: fired(out), what="the new directory to be watched")
    assert {path for _, _, path, _ in fired(out)} == {os.fsencode(later / "probe")}
    # Deleted and made again: watched again.
    shutil.rmtree(tmp_path / "not")
    later.mkdir(parents=True)
    (later / "again").write_bytes(b"x")
    wait_for(lambda: os.fsencode(later / "again") in {p for _, _, p, _ in fired(out)})
    assert "ERROR" not in process.log()


def test_a_file_root_sees_its_file_replaced(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "conf" / "app.conf", tmp_path / "out.jsonl"
    watched.parent.mkdir()
    watched.write_bytes(b"v1")
    daemon(write_rules("rules:\n" + rule("conf", [watched], out)))
    (watched.parent / "other.conf").write_bytes(b"x")
    (watched.parent / "app.conf.new").write_bytes(b"v2")
    os.rename(watched.parent / "app.conf.new", watched)
    watched.write_bytes(b"v3")
    wait_for(lambda: len(fired(out)) >= 2)
    assert sorted((event, path) for _, event, path, _ in fired(out)) == [
        ("close_write", os.fsencode(watched)), ("moved_to", os.fsencode(watched))]


def test_the_suffix_index_fires_exactly_the_rules_a_scan_would(tmp_path):
    """Many rules on one root are looked up by name suffix; the result is the scan's."""
    import dataclasses

    from watchd.config.compile import compile_rules
    from watchd.config.loader import load
    from watchd.core.events import FileEvent, event_mask
    from watchd.match.matcher import match

    patterns = ["*.csv", "*.gz", "*.tar.gz", "*.bashrc", "*.CSV", "data/*.csv", "*.c*",
                "*.txt", "!*.txt", "*.json", "*.x1", "*.x2", "*.x3", "*.x4", "*.x5", "*.x6",
                "*.x7", "*.x8", "*.d"]
    config = tmp_path / "rules.yaml"
    config.write_text("rules:\n" + "".join(
        f"  - name: r{i}\n    paths: [{tmp_path}]\n    recursive: true\n    events: [create]\n"
        f"    include: ['{pattern}']\n    actions: [{{command: [/bin/true]}}]\n"
        for i, pattern in enumerate(patterns)) + f"""\
  - name: all
    paths: [{tmp_path}]
    recursive: true
    events: [create]
    actions: [{{command: [/bin/true]}}]
""")
    ruleset = compile_rules(load(config))
    root = ruleset.roots[0]
    assert root.index is not None
    scanning = dataclasses.replace(root, index=None)
    names = [b"a.csv", b"A.CSV", b"x.tar.gz", b"y.gz", b".bashrc", b"data/b.csv", b"c.cpp",
             b"notes.txt", b"d.json", b"plain", b"x.csv/inner.txt", b"deep/er/z.x3",
             b"dir.d/f", b"\xff.gz", b"a.b.c.x8", b"..", b"trailing."]
    for name in names:
        for is_dir in (False, True):
            event = FileEvent(root.prefix + name, "create", event_mask("create"), is_dir)
            fast = [rule.name for rule, _ in match(ruleset.scope((root,)), event)]
            slow = [rule.name for rule, _ in match(ruleset.scope((scanning,)), event)]
            assert fast == slow, (name, is_dir)
