"""Uploads through the real sftp-server: a rename by link() and unlink() is an arrival."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import env_of, recorder, records, wait_for

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
pytestmark = pytest.mark.skipif(not (os.path.exists(SFTP_SERVER) and shutil.which("sftp")),
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


def test_a_slow_direct_put_fires_once_complete(tmp_path, write_rules, daemon):
    _, out = drop_box(write_rules, daemon, tmp_path)
    sftp(tmp_path, "cd drop", "put upload.bin slow.bin", limit_kbit=800)  # about 2 s
    wait_for(lambda: told(out))
    assert told(out) == [("close_write", "slow.bin", "")]
    (record,) = records(out)
    assert int(env_of(record)["RECORD_SIZE"]) == SIZE


def test_a_file_made_in_place_is_not_taken_for_a_link(tmp_path, write_rules, daemon):
    """A hard link is an arrival; a file created and written is told by its close_write."""
    drop, out = drop_box(write_rules, daemon, tmp_path)
    (tmp_path / "elsewhere.bin").write_bytes(b"complete")
    os.link(tmp_path / "elsewhere.bin", drop / "linked.bin")
    (drop / "written.bin").write_bytes(b"w")
    wait_for(lambda: len(told(out)) == 2)
    assert sorted(told(out)) == [("close_write", "written.bin", ""),
                                 ("moved_to", "linked.bin", "")]
