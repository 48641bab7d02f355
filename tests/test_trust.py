"""watchd.trust on real files: where a watched path leads; a program's trust kept."""

from __future__ import annotations

import os

import pytest

from watchd.security.trust import ProgramTrust, Untrusted, check_program, resolve_watched

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


def trusted_program(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)


def test_a_programs_relative_symlink_is_followed_where_the_kernel_goes(tmp_path):
    # tmp/link -> real/bin, and real/bin/tool -> ../share/t: execve runs real/share/t.
    (tmp_path / "real" / "bin").mkdir(parents=True)
    (tmp_path / "link").symlink_to("real/bin")
    (tmp_path / "real" / "bin" / "tool").symlink_to("../share/t")
    trusted_program(tmp_path / "share" / "t")  # what reading the path as text would check
    trusted_program(tmp_path / "real" / "share" / "t")
    (tmp_path / "real" / "share" / "t").chmod(0o757)
    with pytest.raises(Untrusted, match=f"program {tmp_path}/real/share/t is writable"):
        check_program(f"{tmp_path}/link/tool")


def test_each_symlink_of_a_chain_of_directories_is_checked(tmp_path):
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    trusted_program(tmp_path / "real" / "prog")
    (tmp_path / "open" / "hop").symlink_to(tmp_path / "real")  # others may swap this one
    (tmp_path / "first").symlink_to(tmp_path / "open" / "hop")
    with pytest.raises(Untrusted, match=f"directory {tmp_path}/open is writable by group"):
        check_program(f"{tmp_path}/first/prog")


def test_names_others_may_replace_are_watch_points(tmp_path):
    (tmp_path / "home" / "drop").mkdir(parents=True)
    os.chown(tmp_path / "home", 65534, 65534)  # a user's directory: they may rename drop
    resolution = resolve_watched(f"{tmp_path}/home/drop")
    assert resolution.links == (f"{tmp_path}/home/drop",)
    assert resolution.untrusted is None
