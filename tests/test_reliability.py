"""Never deaf, never flooded: bursts, vanished mounts, limits and permissions, on a real daemon."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import (
    counters,
    env_of,
    inotify_limit,
    kernel_watches,
    recorder,
    records,
    wait_for,
)

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def tree_rule(tree: Path, out: Path) -> str:
    return (f"rules: [{{name: tree, paths: [{tree}], recursive: true, "
            f"actions: [{{command: {recorder(out)}}}]}}]\n")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def fast_dir():
    """A directory on tmpfs, where 100,000 files are made in about a second."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix="watchd-test-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow  # tens of seconds: make test runs it, make check does not
def test_a_burst_of_100000_files_while_actions_are_slow(fast_dir, tmp_path, write_rules, daemon):
    watched = fast_dir / "in"
    watched.mkdir()
    config = write_rules(f"""\
        settings: {{workers: 1, queue_size: 200000, stop_grace: 0s}}
        rules:
          - name: burst
            paths: [{watched}]
            recursive: true
            events: [create]
            actions: [{{command: [/bin/sleep, "60"]}}]
        """)
    process = daemon(config)
    code = ("import os, sys\nd = sys.argv[1]\nfor i in range(100000):\n"
            "    os.close(os.open(f'{d}/f{i}', os.O_CREAT | os.O_WRONLY, 0o644))")
    subprocess.run([sys.executable, "-c", code, str(watched)], check=True)
    # Every file matched exactly once, by its own event or by an overflow's rescan; none dropped.
    wait_for(lambda: counters(process)["matched"] >= 100000, timeout=120)
    seen = counters(process)
    assert seen["matched"] == 100000 and seen["dropped"] == 0
    assert seen["queued"] == 100000 - 1  # one is running: actions are slow, intake is not
    # Memory is the queue's and the ledger's writer's: bounded by queue_size, about 1.5 KiB a
    # job at the peak of the burst (docs/performance.md).
    assert rss_kib(process.pid) < 256 * 1024
    print(f"burst: {seen['overflows']} overflow(s), RSS {rss_kib(process.pid) // 1024} MiB")


@ROOT_ONLY
def test_a_root_unmounted_and_mounted_again_is_watched_again(tmp_path, write_rules, daemon):
    mount_point, out = tmp_path / "mnt", tmp_path / "out.jsonl"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "watchd-test", mount_point], check=True)
    try:
        config = write_rules(f"""\
            rules:
              - name: mounted
                paths: [{mount_point}]
                actions: [{{command: {recorder(out)}}}]
            """)
        process = daemon(config)
        (mount_point / "one").write_bytes(b"1")
        wait_for(lambda: len(records(out)) == 1)
        subprocess.run(["umount", mount_point], check=True)
        process.wait_log("was mounted or unmounted at a watched path")
        (mount_point / "underneath").write_bytes(b"on the directory the mount covered")
        wait_for(lambda: len(records(out)) == 2, what="the directory under the mount watched")
        subprocess.run(["mount", "-t", "tmpfs", "watchd-test", mount_point], check=True)
        process.wait_log("was mounted or unmounted at a watched path", count=2)
        (mount_point / "two").write_bytes(b"2")
        wait_for(lambda: len(records(out)) == 3, what="the new mount watched")
        assert len(kernel_watches(process.pid)) == 1  # the old watches are gone
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", mount_point], check=True, capture_output=True)


def root_inotify_usage() -> tuple[int, int]:
    """(instances, watches) that root's processes hold now, read from /proc."""
    instances = watches = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != 0:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                    instances += 1
                    info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                    watches += info.count("inotify wd:")
        except OSError:
            continue
    return instances, watches


@ROOT_ONLY
def test_the_watch_limit_is_reported_and_the_rest_is_served(tmp_path, write_rules, daemon,
                                                            notify_socket):
    tree, out = tmp_path / "tree", tmp_path / "out.jsonl"
    for index in range(30):
        (tree / f"d{index:02}").mkdir(parents=True)
    config = write_rules(tree_rule(tree, out))
    # One watch more than the tree gets: the daemon's own, on its state directory.
    with inotify_limit("max_user_watches", root_inotify_usage()[1] + 12):
        process = daemon(config, env=notify_socket.env())
        process.wait_log("inotify watch limit reached")
        assert "sysctl -w fs.inotify.max_user_watches=" in process.log()
        status = notify_socket.wait("READY")[0]["STATUS"]
        assert "DEGRADED: 20 directories not watched (inotify watch limit)" in status
        assert len(kernel_watches(process.pid)) == 11
        # What is watched is served.
        (tree / "at-the-root").write_bytes(b"x")
        wait_for(lambda: records(out))
    # The limit raised, a reload watches the rest.
    process.signal(signal.SIGHUP)
    process.wait_log("reloaded")
    assert len(kernel_watches(process.pid)) == 31
    assert "DEGRADED" not in notify_socket.messages()[-1]["STATUS"]


@ROOT_ONLY
def test_directories_refused_by_the_watch_limit_are_polled_and_watched_when_it_rises(
        tmp_path, write_rules, daemon, notify_socket):
    """Degraded, never deaf: a file written in a directory left unwatched is acted on by the
    degraded poll; once the limit is raised the directories are watched, with no reload."""
    tree, out = tmp_path / "tree", tmp_path / "out.jsonl"
    for index in range(30):
        (tree / f"d{index:02}").mkdir(parents=True)
    config = write_rules("settings: {degraded_poll: 1s}\n" + tree_rule(tree, out))
    with inotify_limit("max_user_watches", root_inotify_usage()[1] + 12):
        process = daemon(config, env=notify_socket.env())
        process.wait_log("inotify watch limit reached")
        unwatched = {os.stat(tree / name).st_ino for name in os.listdir(tree)} - set(
            kernel_watches(process.pid).values())
        assert len(unwatched) == 20
        deaf = next(tree / name for name in sorted(os.listdir(tree))
                    if os.stat(tree / name).st_ino in unwatched)
        # Listed soon after the refusal: what is written after that is a change.
        wait_for(lambda: counters(process)["degraded_polled"] == 20, what="the trees listed")
        (deaf / "while-deaf").write_bytes(b"x")
        wait_for(lambda: any(env_of(r)["WATCHD_PATH"].endswith(b"while-deaf")
                             for r in records(out)), what="the degraded poll's run")
        process.wait_log("degraded poll: changes in directories")  # said once all are listed
        assert [env_of(r)["WATCHD_EVENT"] for r in records(out)] == [b"close_write"]
    # The limit restored (raised): watched again at the next poll, with no reload.
    process.wait_log("watched again: 20 director")
    assert "reloaded" not in process.log()
    wait_for(lambda: len(kernel_watches(process.pid)) == 31, what="every directory watched")
    wait_for(lambda: "DEGRADED" not in notify_socket.messages()[-1]["STATUS"])
    runs = len(records(out))
    (deaf / "watched-now").write_bytes(b"y")
    wait_for(lambda: len(records(out)) == runs + 1)
    assert env_of(records(out)[-1])["WATCHD_EVENT"] == b"close_write"


def sizes_rule(tree: Path, out: Path) -> str:
    """Polled every second when out of watches; each run appends its file's name and size."""
    script = f'echo "$1 $(wc -c < "$0")" >> {out}'
    return ("settings: {degraded_poll: 1s}\n"
            f"rules: [{{name: tree, paths: [{tree}], recursive: true, "
            f"actions: [{{command: [/bin/sh, -c, '{script}', '{{path}}', '{{name}}']}}]}}]\n")


def sizes_told(out: Path) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


@ROOT_ONLY
def test_what_is_made_in_a_directory_the_watch_limit_refuses_is_acted_on(tmp_path, write_rules,
                                                                       daemon):
    # Its first listing, to know what it held, was taken as the state to compare with: what
    # was made in it before was never told (a directory made while out of watches).
    tree, out = tmp_path / "tree", tmp_path / "out"
    tree.mkdir()
    with inotify_limit("max_user_watches", root_inotify_usage()[1] + 2):  # its root, its state
        process = daemon(write_rules(sizes_rule(tree, out)))
        (tree / "new" / "sub").mkdir(parents=True)
        (tree / "new" / "f").write_bytes(b"x")
        (tree / "new" / "sub" / "g").write_bytes(b"yy")
        process.wait_log("inotify watch limit reached")
        wait_for(lambda: len(sizes_told(out)) >= 2, what="the degraded poll's runs")
        assert sorted(sizes_told(out)) == ["f 1", "g 2"]


@ROOT_ONLY
def test_the_degraded_poll_tells_a_file_closed_once_its_writer_has_closed_it(
        tmp_path, write_rules, daemon):
    # A file still open for writing was told close_write, and again once it was written.
    tree, out = tmp_path / "tree", tmp_path / "out"
    (tree / "unwatched").mkdir(parents=True)
    with inotify_limit("max_user_watches", root_inotify_usage()[1] + 2):
        process = daemon(write_rules(sizes_rule(tree, out)))
        process.wait_log("inotify watch limit reached")
        wait_for(lambda: counters(process)["degraded_polled"] == 1, what="the tree listed")
        with open(tree / "unwatched" / "upload", "wb") as upload:
            upload.write(b"half")
            upload.flush()
            # A poll found it (its create was told), and left its close_write to the close.
            wait_for(lambda: counters(process)["polled"] >= 1, what="a poll finding it")
            upload.write(b"rest")
        (tree / "unwatched" / "after").write_bytes(b"x")  # told by a poll after the close
        wait_for(lambda: "after 1" in sizes_told(out) and counters(process)["running"] == 0
                 and counters(process)["queued"] == 0, what="the polls after the close")
        assert sorted(sizes_told(out)) == ["after 1", "upload 8"]


@ROOT_ONLY
def test_a_file_made_in_a_refused_directory_before_its_first_listing_is_acted_on(
        tmp_path, write_rules, daemon):
    # The first listing, a second after the refusal, only recorded what it found: a file
    # written in between was taken for what was there at start, and never told.
    tree, out = tmp_path / "tree", tmp_path / "out"
    (tree / "unwatched").mkdir(parents=True)
    with inotify_limit("max_user_watches", root_inotify_usage()[1] + 2):  # its root, its state
        process = daemon(write_rules(sizes_rule(tree, out)))
        (tree / "unwatched" / "early").write_bytes(b"early")
        process.wait_log("inotify watch limit reached")
        wait_for(lambda: sizes_told(out), what="the degraded poll's run")
        assert sizes_told(out) == ["early 5"]


@ROOT_ONLY
def test_a_subdirectory_still_refused_when_its_parent_is_watched_again_loses_nothing(
        tmp_path, write_rules, daemon):
    # Watched again in part, a tree's records were dropped, and the subdirectory still
    # refused was listed afresh, only recording: what was written in it meanwhile was lost.
    tree, out = tmp_path / "tree", tmp_path / "out"
    (tree / "deep" / "sub").mkdir(parents=True)
    watches = root_inotify_usage()[1]
    with inotify_limit("max_user_watches", watches + 2):  # its root, its state: not deep
        process = daemon(write_rules(sizes_rule(tree, out)))
        process.wait_log("inotify watch limit reached")
        with inotify_limit("max_user_watches", watches + 3):  # deep, not deep/sub
            wait_for(lambda: counters(process)["watches"] == 2, what="deep watched again")
            (tree / "deep" / "sub" / "x").write_bytes(b"x")
            wait_for(lambda: sizes_told(out), what="the degraded poll's run")
            assert sizes_told(out) == ["x 1"]
            assert counters(process)["unwatched"] == 1  # deep/sub, polled still


@ROOT_ONLY
def test_the_watch_limit_is_logged_once_while_it_lasts(tmp_path, write_rules, daemon):
    # Each poll offers the refused directory a watch again; refused again, the only one, it
    # made the ERROR be logged again at every poll.
    tree, out = tmp_path / "tree", tmp_path / "out"
    (tree / "deep").mkdir(parents=True)
    watches = root_inotify_usage()[1]
    with inotify_limit("max_user_watches", watches + 2):
        process = daemon(write_rules(sizes_rule(tree, out)))
        process.wait_log("inotify watch limit reached")
        wait_for(lambda: counters(process)["degraded_polled"] == 1, what="the tree listed")
        for name in ("a", "b"):  # b is written once a's poll is over: two polls at least
            (tree / "deep" / name).write_bytes(b"x")
            wait_for(lambda name=name: f"{name} 1" in sizes_told(out), what=f"{name}'s run")
        assert process.log().count("inotify watch limit reached") == 1
        with inotify_limit("max_user_watches", watches + 3):
            process.wait_log("watched again: 1 director")
        # Nothing refused since: the next refusal is a new shortage, and said.
        (tree / "new").mkdir()
        process.wait_log("inotify watch limit reached", count=2)


@ROOT_ONLY
def test_no_inotify_instance_left_is_a_clear_fatal_error(tmp_path, write_rules, daemon):
    config = write_rules(f"rules: [{{name: x, paths: [{tmp_path}], actions: "
                         "[{command: [/bin/true]}]}]\n")
    with inotify_limit("max_user_instances", root_inotify_usage()[0]):
        process = daemon(config, wait=False)
        assert process.process.wait(15) == 3
    log = process.log()
    assert "cannot start: " in log and "fs.inotify.max_user_instances=" in log
    assert "sysctl -w fs.inotify.max_user_instances=N" in log


@ROOT_ONLY
def test_a_directory_that_cannot_be_read_is_reported_once_and_the_rest_watched(
        tmp_path, write_rules, daemon):
    tree, out = tmp_path / "tree", tmp_path / "out.jsonl"
    (tree / "open").mkdir(parents=True)
    (tree / "closed" / "inner").mkdir(parents=True)
    shutil.chown(tree / "closed", "nobody")
    (tree / "closed").chmod(0o700)
    config = write_rules(tree_rule(tree, out))
    # Root without the capabilities that override file permissions: nobody's 0700 is closed.
    process = daemon(config, launcher=("setpriv",
                                       "--bounding-set=-dac_override,-dac_read_search"))
    (tree / "open" / "f").write_bytes(b"x")
    wait_for(lambda: records(out))
    process.signal(signal.SIGHUP)  # a reload walks again: still one warning
    process.wait_log("reloaded")
    assert process.log().count("cannot watch: Permission denied") == 1
    assert f"path={tree / 'closed'}" in process.log()
