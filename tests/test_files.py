"""armini.files: atomic writes with normal permissions, and stale temporaries cleaned up."""
import os
import stat
import subprocess
import sys

import pytest

from armini.files import atomic_write, remove_stale_temporaries


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_writes_and_uses_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.txt", "w") as f:
            f.write("hello\n")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "hello\n"
    assert mode(tmp_path / "a.txt") == 0o644  # not tempfile's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_write_keeps_an_existing_files_permissions(tmp_path):
    target = tmp_path / "b.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    with atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and mode(target) == 0o600


def test_a_failure_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "c.bin"
    target.write_bytes(b"precious")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin"]


def test_missing_folder_and_folder_target_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_write(tmp_path / "no" / "x.json", "w"):
            pass
    with pytest.raises(IsADirectoryError, match="folder"):
        with atomic_write(tmp_path, "w"):
            pass


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    target = tmp_path / "model.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".model.pt.{dead_pid}.abcd.tmp"
    old_style = tmp_path / ".model.pt.k2j4h5.tmp"  # armini before pids were in the name
    live = tmp_path / f".model.pt.{os.getpid()}.efgh.tmp"  # this process: may be writing it now
    other = tmp_path / ".other.pt.123.tmp"
    for p in (stale, old_style, live, other):
        p.write_bytes(b"x")
    removed = remove_stale_temporaries(target)
    assert sorted(removed) == sorted([stale, old_style])
    assert live.exists() and other.exists()
    with atomic_write(target) as f:  # the next write cleans up too
        f.write(b"ok")
    assert not stale.exists()
