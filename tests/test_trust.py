"""watchd.trust on real files: where a watched path leads; a program's trust kept."""

from __future__ import annotations

import os

import pytest

from watchd.trust import ProgramTrust, Untrusted, resolve_watched

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="ownership needs root")
pytestmark = ROOT_ONLY


def test_a_path_without_symlinks_is_itself(tmp_path):
    (tmp_path / "a").mkdir()
    assert resolve_watched(f"{tmp_path}/a") == resolve_watched(f"{tmp_path}/./a/../a")
    resolution = resolve_watched(f"{tmp_path}/a")
    assert (resolution.path, resolution.links, resolution.untrusted) == (f"{tmp_path}/a", (), None)


def test_trusted_symlinks_are_followed_and_named(tmp_path):
    (tmp_path / "releases" / "2" / "uploads").mkdir(parents=True)
    (tmp_path / "current").symlink_to("releases/2")
    (tmp_path / "absolute").symlink_to(tmp_path / "current")
    resolution = resolve_watched(f"{tmp_path}/absolute/uploads")
    assert resolution.path == f"{tmp_path}/releases/2/uploads"
    assert resolution.links == (f"{tmp_path}/absolute", f"{tmp_path}/current")
    assert resolution.untrusted is None


def test_a_missing_part_leaves_the_rest_as_written(tmp_path):
    (tmp_path / "current").symlink_to("releases/3")  # not made yet
    resolution = resolve_watched(f"{tmp_path}/current/uploads")
    assert resolution.path == f"{tmp_path}/releases/3/uploads"
    assert resolution.links == (f"{tmp_path}/current",)


def test_a_symlink_owned_by_a_user_is_not_followed(tmp_path):
    (tmp_path / "private").mkdir()
    (tmp_path / "drop").symlink_to(tmp_path / "private")
    os.lchown(tmp_path / "drop", 65534, 65534)
    resolution = resolve_watched(f"{tmp_path}/drop/sub")
    assert resolution.path == f"{tmp_path}/drop/sub"
    assert resolution.links == (f"{tmp_path}/drop",)
    assert resolution.untrusted == f"symlink {tmp_path}/drop is owned by uid 65534, not by root"


def test_a_root_symlink_in_a_directory_others_may_write_is_not_followed(tmp_path):
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    (tmp_path / "open" / "drop").symlink_to("/etc")
    untrusted = resolve_watched(f"{tmp_path}/open/drop").untrusted
    assert untrusted is not None
    assert f"symlink {tmp_path}/open/drop is in an untrusted place" in untrusted
    assert "writable by group or others (mode 0777)" in untrusted


def test_a_symlink_loop_ends(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    assert "too many levels of symlinks" in (resolve_watched(f"{tmp_path}/a").untrusted or "")


def test_a_kept_verdict_ends_with_any_change_to_what_was_checked(tmp_path):
    (tmp_path / "bin").mkdir()
    program = tmp_path / "bin" / "prog"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    trust = ProgramTrust()
    trust.check(str(program))
    trust.check(str(program))  # the kept verdict
    (tmp_path / "bin").chmod(0o775)
    with pytest.raises(Untrusted, match="is writable by group or others"):
        trust.check(str(program))
    (tmp_path / "bin").chmod(0o755)
    trust.check(str(program))
    os.chown(program, 65534, -1)
    with pytest.raises(Untrusted, match="is owned by uid 65534"):
        trust.check(str(program))
    os.chown(program, 0, -1)
    replacement = tmp_path / "bin" / "new"
    replacement.write_text("#!/bin/sh\n")
    replacement.chmod(0o757)
    replacement.rename(program)  # another file under the same name
    with pytest.raises(Untrusted, match="is writable by group or others"):
        trust.check(str(program))
