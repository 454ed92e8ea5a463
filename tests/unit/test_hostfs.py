"""Host directories and files on real files: escapes, attenuation, the kernel's O_APPEND."""
import fcntl
import os

import pytest

from supervisor.hostfs import Directory, File, FsError


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "granted"
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_text("hello")
    (tmp_path / "secret.txt").write_text("outside")
    return root


@pytest.mark.parametrize("path,reason", [
    ("../secret.txt", "contains '..'"),
    ("sub/../../secret.txt", "contains '..'"),
    ("/etc/passwd", "is absolute"),
])
def test_paths_that_cannot_be_beneath_are_refused(tree, path, reason):
    d = Directory.grant(str(tree))
    with pytest.raises(FsError, match=reason):
        d.open(path, "read")


def test_symlinks_planted_before_or_during_the_run_are_refused(tree):
    d = Directory.grant(str(tree))
    os.symlink(tree.parent / "secret.txt", tree / "planted")
    with pytest.raises(FsError, match="crosses a symbolic link"):
        d.open("planted", "read")
    os.symlink(tree.parent, tree / "sub" / "up")           # a link to a directory outside
    with pytest.raises(FsError, match="crosses a symbolic link"):
        d.open("sub/up/secret.txt", "read")
    with pytest.raises(FsError, match="crosses a symbolic link"):
        d.list("sub/up")
    # a rename racing an open: the directory itself is swapped for a symlink
    os.rename(tree / "sub", tree / "sub-old")
    os.symlink(tree.parent, tree / "sub")
    with pytest.raises(FsError, match="crosses a symbolic link"):
        d.open("sub/secret.txt", "read")


def test_read_only_carries_to_files_and_subdirectories(tree):
    d = Directory.grant(str(tree), read_only=True)
    assert d.open("notes.txt", "read")["file"].read(0, 100) == {"data": b"hello"}
    for attempt in (lambda: d.open("notes.txt", "write"), lambda: d.create("new"),
                    lambda: d.remove("notes.txt"), lambda: d.mkdir("x"),
                    lambda: d.subdir("sub")["dir"].create("y")):
        with pytest.raises(FsError, match="read-only"):
            attempt()
    f = d.open("notes.txt", "read")["file"]
    with pytest.raises(FsError, match="read-only"):
        f.write(0, b"x")
    assert (tree / "notes.txt").read_text() == "hello"


def test_append_only_cannot_overwrite_truncate_or_remove_and_the_kernel_agrees(tree):
    f = File.grant(str(tree / "notes.txt"), append_only=True)
    assert fcntl.fcntl(f.fd, fcntl.F_GETFL) & os.O_APPEND
    assert f.append(b" world") == {"offset": 5}
    with pytest.raises(FsError, match="append-only"):
        f.write(0, b"X")
    with pytest.raises(FsError, match="append-only"):
        f.truncate(0)
    os.pwrite(f.fd, b"!", 0)              # even a bug that writes at an offset only appends
    assert (tree / "notes.txt").read_text() == "hello world!"
    d = Directory.grant(str(tree), append_only=True)
    with pytest.raises(FsError, match="append-only"):
        d.remove("notes.txt")
    with pytest.raises(FsError, match="append-only"):
        d.open("notes.txt", "write")
    g = d.open("notes.txt", "append")["file"]
    assert fcntl.fcntl(g.fd, fcntl.F_GETFL) & os.O_APPEND


def test_directory_operations(tree):
    d = Directory.grant(str(tree))
    f = d.create("a.txt")["file"]
    f.append(b"abc")
    assert d.stat("a.txt")["info"]["size"] == 3
    with pytest.raises(FsError, match="already exists"):
        d.create("a.txt")
    d.mkdir("sub/deeper")
    assert d.list("") == {"entries": [{"name": "a.txt", "kind": "file"}, {"name": "notes.txt", "kind": "file"},
                                   {"name": "sub", "kind": "directory"}]}
    assert d.subdir("sub")["dir"].list("") == {"entries": [{"name": "deeper", "kind": "directory"}]}
    d.remove("a.txt")
    with pytest.raises(FsError, match="does not exist"):
        d.stat("a.txt")


def test_subdir_grant_and_write_quota_shared_by_what_it_opens(tree):
    d = Directory.grant(str(tree), subdir="sub", max_bytes_written=5)
    assert d.label.endswith("/sub")
    a, b = d.create("a")["file"], d.create("b")["file"]
    a.append(b"abc")
    with pytest.raises(FsError, match=r"write quota exhausted \(2 bytes left, 3 asked"):
        b.append(b"xyz")
    b.append(b"xy")
    assert (tree / "sub" / "a").read_bytes() == b"abc" and (tree / "sub" / "b").read_bytes() == b"xy"
    os.symlink(tree.parent, tree / "link")
    with pytest.raises(FsError, match="crosses a symbolic link"):
        Directory.grant(str(tree), subdir="link")


def test_rename_stays_beneath_and_respects_attenuation(tree):
    d = Directory.grant(str(tree))
    d.rename("notes.txt", "sub/moved.txt")
    assert (tree / "sub" / "moved.txt").read_text() == "hello" and not (tree / "notes.txt").exists()
    for src, dst, reason in (("sub/moved.txt", "../stolen.txt", "contains '..'"),
                             ("../secret.txt", "here.txt", "contains '..'"),
                             ("sub/moved.txt", "/tmp/x", "is absolute"),
                             ("missing.txt", "x.txt", "does not exist")):
        with pytest.raises(FsError, match=reason):
            d.rename(src, dst)
    (tree / "link").symlink_to(tree.parent / "secret.txt")
    with pytest.raises(FsError, match="symbolic link"):
        d.rename("link/x", "y")                       # no path through a link
    assert (tree.parent / "secret.txt").read_text() == "outside"
    for attenuation, code in (({"read_only": True}, "EROFS"), ({"append_only": True}, "EPERM")):
        with pytest.raises(FsError, match="cannot rename") as e:
            Directory.grant(str(tree), **attenuation).rename("sub/moved.txt", "back.txt")
        assert e.value.code == code
    assert (tree / "sub" / "moved.txt").exists()
