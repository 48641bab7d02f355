"""watchd.source.snapshot: a directory's state and the difference between two, as values.

No inotify here: states are written out as values, and one real directory shows that what
a listing makes of it is what ``diff`` expects.
"""

from __future__ import annotations

import os

import pytest

from watchd.source.snapshot import (
    DIRECTORY,
    NO_FILES,
    OTHER,
    UNSEEN,
    Changed,
    Created,
    Deleted,
    Found,
    Moved,
    compare,
    diff,
    file_state,
    found_from,
    found_in,
    listed,
    looked_at,
    looking_in,
    state_found,
)

SINCE = 1_000
BEFORE_SINCE, AFTER_SINCE = SINCE - 1, SINCE + 1


def file(inode: int, size: int = 1, mtime: int = 5, ctime: int = BEFORE_SINCE) -> Found:
    return Found((inode, size, mtime), ctime)


def entries(path):
    with os.scandir(os.fsencode(path)) as listing:
        return sorted(listing, key=lambda entry: entry.name)


def found_now(path, listing=None):
    """``found_in`` of the directory at ``path`` (of ``listing``, if given)."""
    with looking_in(os.fsencode(path)) as directory:
        return found_in(entries(path) if listing is None else listing, directory)


# --- Making states -------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """A directory holding one of each kind: a file, a directory, a symlink to a directory."""
    (tmp_path / "file").write_bytes(b"content")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    return tmp_path


def test_a_listing_makes_a_state_of_kinds_without_looking_at_any_file(tree):
    assert listed(entries(tree)) == {b"dir": DIRECTORY, b"file": UNSEEN, b"link": OTHER}


def test_an_empty_listing_makes_the_shared_empty_state(tmp_path):
    assert listed(entries(tmp_path)) is NO_FILES
    assert listed([]) is NO_FILES


def test_a_directory_found_now_has_each_regular_file_looked_at(tree):
    info = os.lstat(tree / "file")
    assert found_now(tree) == {
        b"dir": Found(DIRECTORY),
        b"file": Found((info.st_ino, info.st_size, info.st_mtime_ns), info.st_ctime_ns),
        b"link": Found(OTHER),  # a symlink is not followed, to a directory or anywhere
    }
    assert file_state(info) == (info.st_ino, 7, info.st_mtime_ns)


def test_a_directory_found_from_lstat_pairs_is_the_one_found_by_listing_it(tree):
    stats = [(name, os.lstat(os.path.join(os.fsencode(tree), name)))
             for name in (b"dir", b"file", b"link")]
    assert found_from(stats) == found_now(tree)


def test_a_file_gone_between_the_listing_and_its_lstat_is_found_unseen(tree):
    listing = entries(tree)
    (tree / "file").unlink()
    assert found_now(tree, listing)[b"file"] == Found(UNSEEN)


def test_the_state_found_is_the_one_to_compare_the_next_listing_with(tree):
    found = found_now(tree)
    assert state_found(found) == {name: each.state for name, each in found.items()}
    assert diff(state_found(found), found, since_ns=0) == ()
    assert state_found({}) is NO_FILES


# --- The difference between two states -----------------------------------------------------


def test_nothing_changed_is_no_change():
    assert diff({b"a": (1, 1, 5), b"d": DIRECTORY}, {b"a": file(1), b"d": Found(DIRECTORY)},
                SINCE) == ()
    assert diff(NO_FILES, {}, SINCE) == ()


def test_a_new_name_is_created_with_whether_it_is_a_directory():
    after = {b"f": file(1), b"d": Found(DIRECTORY), b"l": Found(OTHER), b"u": Found(UNSEEN)}
    assert diff(NO_FILES, after, SINCE) == (
        Created(b"f", False), Created(b"d", True), Created(b"l", False), Created(b"u", False))


def test_a_gone_name_is_deleted_with_whether_it_was_a_directory():
    before = {b"f": (1, 1, 5), b"d": DIRECTORY, b"u": UNSEEN, b"l": OTHER}
    assert diff(before, {}, SINCE) == (
        Deleted(b"f", False), Deleted(b"d", True), Deleted(b"u", False), Deleted(b"l", False))


@pytest.mark.parametrize("now", [(1, 2, 5), (1, 1, 6), (2, 1, 5)], ids=["size", "mtime", "inode"])
def test_a_file_whose_state_differs_from_the_one_known_changed(now):
    found = Found(now, BEFORE_SINCE)  # its ctime does not matter: its state is known
    assert diff({b"a": (1, 1, 5)}, {b"a": found}, SINCE) == (Changed(b"a", now),)


@pytest.mark.parametrize(("ctime", "changed"),
                         [(BEFORE_SINCE, False), (SINCE, True), (AFTER_SINCE, True)])
def test_a_file_never_looked_at_changed_if_its_ctime_is_since_or_later(ctime, changed):
    found = file(1, ctime=ctime)
    assert diff({b"a": UNSEEN}, {b"a": found}, SINCE) == ((Changed(b"a", found.state),)
                                                          if changed else ())


def test_past_the_limit_nothing_is_known_so_only_the_ctime_tells_and_nothing_is_new_or_gone():
    after = {b"old": file(1), b"new": file(2, ctime=SINCE), b"d": Found(DIRECTORY)}
    assert diff(None, after, SINCE) == (Changed(b"new", (2, 1, 5)),)


def test_a_file_that_could_not_be_looked_at_tells_nothing():
    assert diff({b"a": (1, 1, 5), b"u": UNSEEN}, {b"a": Found(UNSEEN), b"u": Found(UNSEEN)},
                SINCE) == ()


def test_a_directory_or_other_replaced_by_a_file_changed_but_not_the_other_way():
    after = {b"was-dir": file(1), b"was-link": file(2), b"now-dir": Found(DIRECTORY),
             b"now-link": Found(OTHER)}
    before = {b"was-dir": DIRECTORY, b"was-link": OTHER, b"now-dir": (3, 1, 5),
              b"now-link": (4, 1, 5)}
    assert diff(before, after, SINCE) == (Changed(b"was-dir", (1, 1, 5)),
                                          Changed(b"was-link", (2, 1, 5)))


def test_changes_come_in_the_listings_order_then_deletions_in_the_states():
    before = {b"z-gone": (9, 1, 5), b"b": (2, 1, 5), b"a-gone": DIRECTORY}
    after = {b"c": file(3), b"b": file(2, size=7), b"a": file(1)}
    assert diff(before, after, SINCE) == (
        Created(b"c", False), Changed(b"b", (2, 7, 5)), Created(b"a", False),
        Deleted(b"z-gone", False), Deleted(b"a-gone", True))


def test_only_a_file_is_told_changed_and_never_as_a_directory():
    assert Changed(b"a", (1, 1, 5)).is_dir is False
    assert Moved(b"a", b"b", (1, 1, 5)).is_dir is False


# --- Moves --------------------------------------------------------------------------------


def test_a_file_renamed_is_deleted_and_created_unless_moves_are_asked_for():
    before, after = {b"old": (7, 1, 5)}, {b"new": file(7)}
    assert diff(before, after, SINCE) == (Created(b"new", False), Deleted(b"old", False))
    assert diff(before, after, SINCE, moves=True) == (Moved(b"new", b"old", (7, 1, 5)),)


def test_a_file_renamed_over_another_moved_there_instead_of_changing_it():
    before = {b"old": (7, 1, 5), b"target": (8, 3, 5)}
    assert diff(before, {b"target": file(7)}, SINCE, moves=True) == (
        Moved(b"target", b"old", (7, 1, 5)),)


def test_a_file_renamed_then_written_moved_then_changed():
    assert diff({b"old": (7, 1, 5)}, {b"new": file(7, size=9)}, SINCE, moves=True) == (
        Moved(b"new", b"old", (7, 9, 5)), Changed(b"new", (7, 9, 5)))


def test_a_gone_file_never_looked_at_or_directory_has_no_inode_to_move_by():
    before = {b"unseen": UNSEEN, b"dir": DIRECTORY}
    after = {b"new-file": file(5), b"new-dir": Found(DIRECTORY)}
    assert diff(before, after, SINCE, moves=True) == (
        Created(b"new-file", False), Created(b"new-dir", True),
        Deleted(b"unseen", False), Deleted(b"dir", True))


def test_a_gone_file_moves_to_one_name_only():
    before = {b"old": (7, 1, 5)}
    after = {b"first": file(7), b"second-link": file(7)}
    assert diff(before, after, SINCE, moves=True) == (
        Moved(b"first", b"old", (7, 1, 5)), Created(b"second-link", False))


def test_a_file_still_there_is_not_a_source_nor_an_unchanged_one_a_destination():
    # b"link" is a hard link to b"kept"'s inode, unchanged: neither moved anywhere.
    before = {b"kept": (7, 1, 5), b"link": (7, 1, 5), b"gone": (8, 1, 5)}
    after = {b"kept": file(7), b"link": file(7), b"new": file(9)}
    assert diff(before, after, SINCE, moves=True) == (
        Created(b"new", False), Deleted(b"gone", False))


# --- One real directory -------------------------------------------------------------------


def test_a_real_directory_found_then_changed_diffs_as_what_was_done(tmp_path):
    for name in ("kept", "written", "removed", "renamed"):
        (tmp_path / name).write_bytes(b"before")
    (tmp_path / "gone-dir").mkdir()
    before = state_found(found_now(tmp_path))

    # The new names first: made after the removals, one could get a removed file's inode,
    # which a diff with moves cannot tell from a rename.
    (tmp_path / "new-dir").mkdir()
    (tmp_path / "new").write_bytes(b"x")
    (tmp_path / "written").write_bytes(b"after, longer")
    (tmp_path / "removed").unlink()
    (tmp_path / "gone-dir").rmdir()
    (tmp_path / "renamed").rename(tmp_path / "moved")

    after = found_now(tmp_path)
    done = {Changed(b"written", after[b"written"].state), Deleted(b"removed", False),
            Deleted(b"gone-dir", True), Created(b"new-dir", True), Created(b"new", False)}
    # Every file's state is known: no ctime is compared with since_ns.
    assert set(diff(before, after, since_ns=0)) == done | {
        Deleted(b"renamed", False), Created(b"moved", False)}
    assert set(diff(before, after, since_ns=0, moves=True)) == done | {
        Moved(b"moved", b"renamed", before[b"renamed"])}


def test_compare_tells_what_diff_of_a_listing_tells_each_with_its_state(tmp_path):
    for name in ("kept", "written", "removed", "was-dir"):
        (tmp_path / name).write_bytes(b"before")
    (tmp_path / "gone-dir").mkdir()
    (tmp_path / "link").symlink_to("kept")
    before = state_found(found_now(tmp_path))
    (tmp_path / "new-dir").mkdir()
    (tmp_path / "new").write_bytes(b"x")
    (tmp_path / "written").write_bytes(b"after, longer")
    (tmp_path / "removed").unlink()
    (tmp_path / "gone-dir").rmdir()
    (tmp_path / "was-dir").unlink()
    (tmp_path / "was-dir").mkdir()  # a file become a directory

    after = found_now(tmp_path)
    with looking_in(os.fsencode(tmp_path)) as directory:
        compared = list(compare(before, looked_at(entries(tmp_path), directory)))
    # The same as diff, and the file become a directory deleted, then created (an overflow's
    # rescan tells that from the directory's own watch: test_notifier.py).
    replaced = [Deleted(b"was-dir", False, replaced=True), Created(b"was-dir", True)]
    assert [change for change, _ in compared if change.name == b"was-dir"] == replaced
    assert {change for change, _ in compared} == set(diff(before, after, since_ns=0)) | set(
        replaced)
    for change, state in compared:
        known = before[change.name] if isinstance(change, Deleted) else after[change.name].state
        assert state == known
