"""Uploads through the real sftp-server, and maildir deliveries: a rename by link() and
unlink() is an arrival."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import env_of, recorder, records, wait_for

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
needs_sftp = pytest.mark.skipif(not (os.path.exists(SFTP_SERVER) and shutil.which("sftp")),
                                reason="needs openssh-sftp-server and openssh-client")
SIZE = 200_000


def drop_box(write_rules, daemon, tmp_path: Path) -> tuple[Path, Path]:
    """The default rule (close_write, moved_to) on a drop box, its temporary names excluded;
    each run records the event and the size the file has then."""
    drop, out = tmp_path / "drop", tmp_path / "out.jsonl"
    drop.mkdir()
    script = 'RECORD_SIZE=$(wc -c < "$WATCHD_PATH") exec "$0" "$@"'
    rule = {"name": "uploads", "paths": [str(drop)], "exclude": ["*.tmp"],
            "actions": [{"command": ["/bin/sh", "-c", script, *recorder(out)]}]}
    # One worker: jobs run in the order of their events, so a later file is a sentinel.
    daemon(write_rules(json.dumps({"settings": {"workers": 1}, "rules": [rule]})))
    (tmp_path / "upload.bin").write_bytes(os.urandom(SIZE))
    return drop, out


def sftp(tmp_path: Path, *commands: str, limit_kbit: int | None = None) -> None:
    batch = tmp_path / "batch"
    batch.write_text("".join(f"{command}\n" for command in commands))
    limit = ["-l", str(limit_kbit)] if limit_kbit else []
    subprocess.run(["sftp", "-D", SFTP_SERVER, *limit, "-b", str(batch)], cwd=tmp_path,
                   check=True, capture_output=True, timeout=60)


def told(out: Path) -> list[tuple[str, str, str]]:
    return [(env["WATCHD_EVENT"].decode(), os.path.basename(env["WATCHD_PATH"]).decode(),
             os.path.basename(env["WATCHD_SRC_PATH"]).decode())
            for env in map(env_of, records(out))]


@needs_sftp
@pytest.mark.parametrize(("rename", "src"), [("rename -l", ".upload.tmp"),
                                             ("rename", ".upload.tmp")],
                         ids=["sftp-rename-as-link-and-unlink", "posix-rename"])
def test_an_upload_renamed_into_place_fires_once_with_its_final_name(
        tmp_path, write_rules, daemon, rename, src):
    _, out = drop_box(write_rules, daemon, tmp_path)
    sftp(tmp_path, "cd drop", "put upload.bin .upload.tmp", f"{rename} .upload.tmp final.bin",
         "put upload.bin sentinel.bin")
    wait_for(lambda: any(name == "sentinel.bin" for _, name, _ in told(out)))
    assert sorted(told(out)) == [("close_write", "sentinel.bin", ""),
                                 ("moved_to", "final.bin", src)]
    assert [int(env["RECORD_SIZE"]) for env in map(env_of, records(out))] == [SIZE, SIZE]


@needs_sftp
def test_a_slow_direct_put_fires_once_complete(tmp_path, write_rules, daemon):
    _, out = drop_box(write_rules, daemon, tmp_path)
    sftp(tmp_path, "cd drop", "put upload.bin slow.bin", limit_kbit=800)  # about 2 s
    wait_for(lambda: told(out))
    assert told(out) == [("close_write", "slow.bin", "")]
    (record,) = records(out)
    assert int(env_of(record)["RECORD_SIZE"]) == SIZE


@needs_sftp
def test_a_file_made_in_place_is_not_taken_for_a_link(tmp_path, write_rules, daemon):
    """A hard link is an arrival; a file created and written is told by its close_write."""
    drop, out = drop_box(write_rules, daemon, tmp_path)
    (tmp_path / "elsewhere.bin").write_bytes(b"complete")
    os.link(tmp_path / "elsewhere.bin", drop / "linked.bin")
    (drop / "written.bin").write_bytes(b"w")
    wait_for(lambda: len(told(out)) == 2)
    assert sorted(told(out)) == [("close_write", "written.bin", ""),
                                 ("moved_to", "linked.bin", "")]


def maildir(write_rules, daemon, tmp_path: Path) -> tuple[Path, Path, int]:
    """The default rule (close_write, moved_to) on a maildir, recursive, its tmp/ excluded
    (watched, not acted on); the daemon's pid."""
    box, out = tmp_path / "box", tmp_path / "out.jsonl"
    for sub in ("tmp", "new"):
        (box / sub).mkdir(parents=True)
    rule = {"name": "mail", "paths": [str(box)], "recursive": True, "exclude": ["tmp/"],
            "actions": [{"command": recorder(out)}]}
    process = daemon(write_rules(json.dumps({"settings": {"workers": 1}, "rules": [rule]})))
    return box, out, process.pid


def deliver(box: Path, name: str) -> None:
    """A maildir delivery: written under tmp/, linked into new/, unlinked from tmp/; then a
    sentinel, whose run comes after the delivery's (one worker)."""
    (box / "tmp" / name).write_bytes(b"x" * 1000)
    os.link(box / "tmp" / name, box / "new" / name)
    os.unlink(box / "tmp" / name)
    (box / f"sentinel-{name}").write_bytes(b"s")


def all_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (a signal's stop is not at once)."""
    return all(_task_state(task) == "T" for task in Path(f"/proc/{pid}/task").iterdir())


def _task_state(task: Path) -> str:
    try:
        return (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "T"  # ended: it runs no more either


def told_in(box: Path, out: Path) -> list[tuple[str, str, str]]:
    """Each run's event, path and source path, relative to ``box``."""
    def relative(path: bytes) -> str:
        return os.path.relpath(path, bytes(box)).decode() if path else ""
    return [(env["WATCHD_EVENT"].decode(), relative(env["WATCHD_PATH"]),
             relative(env["WATCHD_SRC_PATH"])) for env in map(env_of, records(out))]


def test_a_link_rename_from_a_sibling_directory_is_an_arrival(tmp_path, write_rules, daemon):
    """Read late (the daemon stopped while the mail is delivered), the old name is gone
    before its close_write is read, and its delete is in another directory's watch."""
    box, out, pid = maildir(write_rules, daemon, tmp_path)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: all_stopped(pid), what="every thread of the daemon stopped")
        deliver(box, "m1")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: len(told_in(box, out)) == 2, what="the delivery and the sentinel")
    assert told_in(box, out) == [("moved_to", "new/m1", "tmp/m1"),
                                 ("close_write", "sentinel-m1", "")]


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_a_link_rename_from_a_sibling_directory_is_an_arrival_while_idle(
        tmp_path, write_rules, daemon):
    """Read as it comes, the records are split across reads wherever the daemon wakes."""
    box, out, _ = maildir(write_rules, daemon, tmp_path)
    deliveries = 30
    for index in range(deliveries):
        deliver(box, f"m{index}")
        runs = 2 * (index + 1)
        wait_for(lambda runs=runs: len(told_in(box, out)) == runs, what=f"delivery {index}")
    expected = []
    for index in range(deliveries):
        expected += [("moved_to", f"new/m{index}", f"tmp/m{index}"),
                     ("close_write", f"sentinel-m{index}", "")]
    assert told_in(box, out) == expected
