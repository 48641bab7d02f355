"""execute_problem: whether a rule's user could execute its program, with real users and files.

Every verdict is also put to the kernel: the program (a copy of true) is run as that identity,
and it must start exactly when execute_problem says it can.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from watchd.security.access import execute_problem

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="real users and ownership need root")

TRUE = os.path.realpath(shutil.which("true") or "/bin/true")
# On a /tmp mounted noexec nothing there runs, whatever the modes: the kernel cannot be asked.
TMP_IS_NOEXEC = bool(os.statvfs("/tmp").f_flag & os.ST_NOEXEC)


@pytest.fixture
def group():
    """A real group the user is not in unless a test says so, removed after the test."""
    name = f"wdta{uuid.uuid4().hex[:8]}"
    subprocess.run(["groupadd", name], check=True)
    yield grp.getgrnam(name)
    subprocess.run(["groupdel", name], check=False)


@pytest.fixture
def tree():
    """A fresh directory in /tmp that anyone may search, removed after the test."""
    top = Path(tempfile.mkdtemp(prefix="watchd-access-", dir="/tmp"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top)


def directory(path: Path, mode: int = 0o755, owner: int = 0, group: int = 0) -> Path:
    """A new directory; any missing above it are made open (0755), whatever the umask."""
    if not path.parent.exists():
        directory(path.parent)
    path.mkdir()
    os.chown(path, owner, group)
    path.chmod(mode)
    return path


def program(path: Path, mode: int = 0o755, owner: int = 0, group: int = 0) -> Path:
    """A copy of true: a binary runs without read permission, so only the x bits decide."""
    if not path.parent.exists():
        directory(path.parent)
    shutil.copyfile(TRUE, path)
    os.chown(path, owner, group)
    path.chmod(mode)
    return path


def kernel_runs(path: Path | str, uid: int, gid: int, groups: Sequence[int]) -> bool:
    try:
        subprocess.run([str(path)], user=uid, group=gid, extra_groups=list(groups), cwd="/",
                       check=True)
    except OSError:
        return False
    return True


def verdict(path: Path | str, uid: int, gid: int, groups: Sequence[int] = (),
            user_name: str | None = None) -> str | None:
    """execute_problem's answer, once the kernel is shown to agree with it."""
    problem = execute_problem(str(path), uid, gid, groups, user_name=user_name)
    if not TMP_IS_NOEXEC:
        assert kernel_runs(path, uid, gid, groups) == (problem is None), problem
    return problem


def as_user(path: Path | str, user: pwd.struct_passwd, groups: Sequence[int] = ()) -> str | None:
    return verdict(path, user.pw_uid, user.pw_gid, groups)


def as_root(path: Path) -> str | None:
    return verdict(path, 0, 0)


# -- directories on the way --------------------------------------------------------------------

def test_a_world_executable_program_in_open_directories_is_allowed(tree, user):
    assert as_user(program(tree / "opt" / "bin" / "prog"), user) is None


def test_a_directory_only_root_may_search_stops_the_user_and_is_named(tree, user):
    private = directory(tree / "private", 0o700)
    prog = program(private / "bin" / "prog")
    assert as_user(prog, user) == (
        f"user {user.pw_name} cannot search directory {private} "
        f"(mode 0700, owner root, group root)"
    )
    assert as_root(prog) is None


def test_a_directory_the_users_group_could_search_says_the_user_is_not_in_it(tree, user, group):
    staff = directory(tree / "staff", 0o750, group=group.gr_gid)
    prog = program(staff / "prog")
    assert as_user(prog, user) == (
        f"user {user.pw_name} cannot search directory {staff} "
        f"(mode 0750, owner root, group {group.gr_name}; {user.pw_name} is not in group "
        f"{group.gr_name})"
    )
    assert as_user(prog, user, [group.gr_gid]) is None


def test_a_file_on_the_way_that_is_no_directory_is_named(tree, user):
    prog = program(tree / "prog")
    assert as_user(prog / "more", user) == f"{prog} is not a directory"
    assert as_user(f"{prog}/", user) == f"{prog} is not a directory"


# -- the program's own mode: owner, group, other -----------------------------------------------

def test_a_program_only_root_may_execute_is_refused_to_the_user_and_fine_for_root(tree, user):
    prog = program(tree / "prog", 0o700)
    assert as_user(prog, user) == (
        f"user {user.pw_name} cannot execute {prog} (mode 0700, owner root, group root)"
    )
    assert as_root(prog) is None


def test_the_owner_bits_alone_count_for_the_owner_even_when_the_group_bits_would_allow(
        tree, user):
    prog = program(tree / "prog", 0o070, owner=user.pw_uid, group=user.pw_gid)
    assert as_user(prog, user) == (
        f"user {user.pw_name} cannot execute {prog} (mode 0070, owner {user.pw_name}, "
        f"group {user.pw_name}; {user.pw_name} owns it, so only the owner bits count)"
    )


def test_the_group_bits_apply_through_a_supplementary_group(tree, user, group):
    prog = program(tree / "prog", 0o710, group=group.gr_gid)
    assert as_user(prog, user, [group.gr_gid]) is None
    assert as_user(prog, user) == (
        f"user {user.pw_name} cannot execute {prog} (mode 0710, owner root, "
        f"group {group.gr_name}; {user.pw_name} is not in group {group.gr_name})"
    )


def test_the_group_bits_apply_through_the_primary_group(tree, user):
    prog = program(tree / "prog", 0o710, group=user.pw_gid)
    assert as_user(prog, user) is None


def test_the_group_bits_alone_count_for_a_member_even_when_the_other_bits_would_allow(
        tree, user, group):
    prog = program(tree / "prog", 0o701, group=group.gr_gid)
    assert as_user(prog, user, [group.gr_gid]) == (
        f"user {user.pw_name} cannot execute {prog} (mode 0701, owner root, "
        f"group {group.gr_name}; {user.pw_name} is in group {group.gr_name}, so only the group "
        f"bits count)"
    )


def test_the_other_bits_apply_to_a_user_neither_owner_nor_in_the_group(tree, user):
    prog = program(tree / "prog", 0o701)
    assert as_user(prog, user) is None


def test_owners_without_names_are_given_by_number_and_the_user_by_the_name_passed(tree, user):
    unnamed = next(number for number in range(4_000_000, 4_001_000) if not _has_name(number))
    prog = program(tree / "prog", 0o700, owner=unnamed, group=unnamed)
    assert verdict(prog, user.pw_uid, user.pw_gid, user_name="ingest") == (
        f"user ingest cannot execute {prog} (mode 0700, owner {unnamed}, group {unnamed})"
    )


def _has_name(number: int) -> bool:
    """Whether ``number`` names a user or a group."""
    try:
        pwd.getpwuid(number)
    except KeyError:
        try:
            grp.getgrgid(number)
        except KeyError:
            return False
    return True


# -- symlinks -----------------------------------------------------------------------------------

def test_a_symlink_to_a_program_in_a_searchable_place_is_allowed(tree, user):
    program(tree / "real" / "prog")
    link = directory(tree / "bin") / "prog"
    link.symlink_to("../real/prog")
    assert as_user(link, user) is None


def test_a_symlinked_directory_on_the_way_is_followed(tree, user):
    program(tree / "real" / "prog")
    (tree / "alias").symlink_to(tree / "real")
    assert as_user(tree / "alias" / "prog", user) is None


@pytest.mark.parametrize("linked", ["file", "directory"])
def test_a_symlink_through_an_unsearchable_directory_is_refused_naming_it(tree, user, linked):
    private = directory(tree / "private", 0o700)
    program(private / "lib" / "prog")
    link = directory(tree / "bin") / "link"
    if linked == "file":
        link.symlink_to(private / "lib" / "prog")
        path = link
    else:
        link.symlink_to("../private/lib")
        path = link / "prog"
    assert as_user(path, user) == (
        f"user {user.pw_name} cannot search directory {private} "
        f"(mode 0700, owner root, group root), reached through symlink {link}"
    )
    assert as_root(path) is None


def test_a_symlink_loop_is_refused(tree, user):
    (tree / "a").symlink_to("b")
    (tree / "b").symlink_to("a")
    problem = as_user(tree / "a", user)
    assert problem is not None
    assert problem.startswith("too many levels of symlinks (more than 40) at ")


# -- what is there to execute --------------------------------------------------------------------

def test_a_missing_program_is_named(tree, user):
    assert as_user(tree / "nothing", user) == f"{tree / 'nothing'} does not exist"
    assert as_user(tree / "no" / "prog", user) == f"{tree / 'no'} does not exist"


def test_a_dangling_symlink_names_where_it_leads(tree, user):
    (tree / "prog").symlink_to(tree / "gone")
    assert as_user(tree / "prog", user) == (
        f"{tree / 'gone'} does not exist, reached through symlink {tree / 'prog'}"
    )


def test_a_directory_is_not_a_program(tree, user):
    bin_dir = directory(tree / "bin")
    expected = f"{bin_dir} is not a regular file (it is a directory)"
    assert as_user(bin_dir, user) == expected
    assert as_root(bin_dir) == expected


# -- root -----------------------------------------------------------------------------------------

def test_root_may_not_execute_a_file_without_any_x_bit(tree):
    prog = program(tree / "prog", 0o600)
    assert as_root(prog) == (
        f"user root cannot execute {prog} (mode 0600, owner root, group root; "
        f"root needs at least one x bit)"
    )


def test_root_may_execute_a_file_with_only_the_owners_x_bit(tree):
    prog = program(tree / "prog", 0o100, owner=12345)
    assert as_root(prog) is None


def test_a_relative_program_is_a_callers_mistake():
    with pytest.raises(ValueError, match="absolute"):
        execute_problem("bin/true", 0, 0, [])
