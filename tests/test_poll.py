"""poll: a rule's tree walked at an interval, for the changes inotify cannot see; tested on a
bindfs (FUSE) mount changed through the directory under it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import counters, env_of, recorder, records, wait_for

pytestmark = pytest.mark.skipif(not shutil.which("bindfs") or not os.path.exists("/dev/fuse"),
                                reason="needs bindfs and /dev/fuse")


@pytest.fixture
def fuse_mount(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(the directory under the mount, the bindfs mount of it)."""
    under, mount = tmp_path / "under", tmp_path / "mount"
    under.mkdir()
    mount.mkdir()
    subprocess.run(["bindfs", str(under), str(mount)], check=True, timeout=30)
    try:
        yield under, mount
    finally:
        subprocess.run(["fusermount", "-u", "-z", str(mount)], check=False, timeout=30)


def told(out: Path) -> list[tuple[str, str, str, str]]:
    return [(env["WATCHD_EVENT"].decode(), os.path.basename(env["WATCHD_PATH"]).decode(),
             os.path.basename(env["WATCHD_SRC_PATH"]).decode(), env["WATCHD_CAUGHT_UP"].decode())
            for env in map(env_of, records(out))]


@pytest.mark.slow  # tens of seconds: make test runs it, make check does not
def test_changes_inotify_cannot_see_are_polled_and_acted_on_once(
        tmp_path, write_rules, daemon, fuse_mount):
    under, mount = fuse_mount
    out = tmp_path / "out.jsonl"
    (under / "already").write_bytes(b"there before")
    rule = {"name": "share", "paths": [str(mount)], "poll": "1s",
            "events": ["close_write", "moved_to", "delete"],
            "actions": [{"command": recorder(out)}]}
    process = daemon(write_rules(json.dumps({"rules": [rule]})))
    process.wait_log("first start: what is there is recorded")
    (under / "new").write_bytes(b"written past inotify")
    wait_for(lambda: told(out), what="the poll's run for the new file")
    assert told(out) == [("close_write", "new", "", "1")]
    (under / "new").rename(under / "renamed")
    os.unlink(under / "already")
    wait_for(lambda: len(told(out)) == 3, what="the rename and the delete polled")
    assert sorted(told(out)[1:]) == [("delete", "already", "", "1"),
                                     ("moved_to", "renamed", "new", "1")]
    process.wait_log("polled: changes inotify did not tell", count=2)
    # A change inotify told is acted on once: the polls after it find it recorded.
    (mount / "live").write_bytes(b"through the mount: inotify tells it")
    wait_for(lambda: len(told(out)) == 4)
    assert told(out)[3] == ("close_write", "live", "", "0")
    after = polls(process)
    wait_for(lambda: polls(process) >= after + 2, what="two polls after the live event")
    assert len(told(out)) == 4, told(out)[4:]


@pytest.mark.slow  # several polls: make test runs it, make check does not
def test_a_directory_found_unchanged_is_compared_again_once_its_records_change(
        tmp_path, write_rules, daemon, fuse_mount):
    """A poll skips reading the records of a directory found as it was, while the ledger has
    not changed them: here a live rename changes them (the file left the top directory) and
    an unseen rename puts the file back, so the top directory looks as it did."""
    under, mount = fuse_mount
    out = tmp_path / "out.jsonl"
    (under / "sub").mkdir()
    (under / "f").write_bytes(b"content")
    rule = {"name": "share", "paths": [str(mount)], "poll": "1s", "recursive": True,
            "events": ["close_write", "moved_to", "delete"],
            "actions": [{"command": recorder(out)}]}
    process = daemon(write_rules(json.dumps({"rules": [rule]})))
    process.wait_log("first start: what is there is recorded")
    now = polls(process)
    wait_for(lambda: polls(process) >= now + 2, what="two polls that find the tree as it was")
    os.rename(mount / "f", mount / "sub" / "f")  # inotify tells it
    wait_for(lambda: told(out), what="the live rename's run")
    assert told(out) == [("moved_to", "f", "f", "0")]
    os.rename(under / "sub" / "f", under / "f")  # inotify cannot tell it
    wait_for(lambda: len(told(out)) == 2, what="the poll's run for the file back on top")
    assert told(out)[1] == ("moved_to", "f", "f", "1")
    assert env_of(records(out)[1])["WATCHD_SRC_PATH"] == os.fsencode(mount / "sub" / "f")
    process.wait_log("polled: changes inotify did not tell")  # said once its walk has ended
    assert process.log().count("polled: changes inotify did not tell") == 1


def polls(process) -> int:
    """The polls made so far, as SIGUSR1's counters say."""
    return counters(process)["polls"]


@pytest.mark.slow  # several polls: make test runs it, make check does not
def test_a_share_that_cannot_be_read_for_a_while_is_not_told_deleted_nor_new(
        tmp_path, write_rules, daemon):
    """The FUSE server dies (the mount answers ENOTCONN, as a hung sshfs or a stale NFS handle
    answers their own errors), then the share is mounted again, nothing in it changed. The
    poll read the broken mount as empty: it told every file deleted, forgot their records and
    acted on each one as new once the share was back."""
    under, mount, out = tmp_path / "under", tmp_path / "mount", tmp_path / "out.jsonl"
    under.mkdir()
    mount.mkdir()
    for name in ("a", "b"):
        (under / name).write_bytes(b"kept")

    def serve() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(["bindfs", "-f", str(under), str(mount)])
        wait_for(lambda: os.path.ismount(mount), what="the bindfs mount")
        return server

    server = serve()
    try:
        rule = {"name": "share", "paths": [str(mount)], "poll": "1s",
                "events": ["close_write", "moved_to", "delete"],
                "actions": [{"command": recorder(out)}]}
        process = daemon(write_rules(json.dumps({"rules": [rule]})))
        process.wait_log("first start: what is there is recorded")
        server.kill()
        server.wait()
        process.wait_log("1 directory of the tree cannot be read: Transport endpoint is not "
                         "connected")
        now = polls(process)
        wait_for(lambda: polls(process) >= now + 2, what="two polls of the broken mount")
        subprocess.run(["fusermount", "-u", "-z", str(mount)], check=True, timeout=30)
        server = serve()
        now = polls(process)
        wait_for(lambda: polls(process) >= now + 2, what="two polls of the mount back")
        assert told(out) == []
        assert process.log().count("cannot be read") == 1, process.log()
        process.wait_log("can be read again")
    finally:
        server.kill()
        server.wait()
        subprocess.run(["fusermount", "-u", "-z", str(mount)], check=False, timeout=30)


@pytest.mark.slow  # several polls: make test runs it, make check does not
def test_a_share_unmounted_for_a_while_is_not_told_deleted_nor_new(
        tmp_path, write_rules, daemon, fuse_mount):
    """``umount`` of the share, then mounted again: the polls in between walked the empty
    directory under the mount point, told every file deleted, and every one new once the
    share was back."""
    under, mount = fuse_mount
    out = tmp_path / "out.jsonl"
    for name in ("a", "b"):
        (under / name).write_bytes(b"kept")
    rule = {"name": "share", "paths": [str(mount)], "poll": "1s",
            "events": ["close_write", "moved_to", "delete"],
            "actions": [{"command": recorder(out)}]}
    process = daemon(write_rules(json.dumps({"rules": [rule]})))
    process.wait_log("first start: what is there is recorded")
    subprocess.run(["fusermount", "-u", str(mount)], check=True, timeout=30)
    process.wait_log("not polled: the tree's root was a mount point and is not now")
    now = polls(process)
    wait_for(lambda: polls(process) >= now + 2, what="two polls of the mount point alone")
    subprocess.run(["bindfs", str(under), str(mount)], check=True, timeout=30)
    process.wait_log("polled again: a file system is mounted at the tree's root again")
    (under / "new").write_bytes(b"written past inotify")
    wait_for(lambda: told(out), what="the poll's run for the new file")
    assert told(out) == [("close_write", "new", "", "1")]
    assert process.log().count("not polled") == 1
