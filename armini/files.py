"""Writing files so that nothing a learner has on disk is ever lost or left half-written.

Every file armini writes (checkpoints, downloads, notebooks, benchmark results) goes through
`atomic_write`: the bytes go to a temporary file in the same folder, which is flushed to disk
and then renamed over the target in one step (`os.replace`). A crash, a kill or a full disk
midway leaves either the old file or the new one, never half of one.

    from armini.files import atomic_write
    with atomic_write("runs/pixelcnn/metrics.json", "w") as f:
        json.dump(metrics, f)

Temporaries are named `.<target name>.<pid>.<random>.tmp`. A process killed before its rename
leaves one behind; `remove_stale_temporaries` (called by `atomic_write` itself) deletes those
whose process no longer runs, so stray files never pile up. New files get the user's normal
permissions (0666 minus the umask, as `open()` would give), not tempfile's private 0600.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "remove_stale_temporaries", "temporary_name_pattern"]


def _umask() -> int:
    """The process's umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_name_pattern(target: str | Path, suffix: str = ".tmp") -> re.Pattern:
    """Names of our temporaries for `target`: `.name.<pid>.<anything>.tmp` (older armini: `.name.<random>.tmp`)."""
    name = re.escape(Path(target).name)
    return re.compile(rf"^\.{name}\.(?:(?P<pid>\d+)\.)?[^/]*{re.escape(suffix)}$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(target: str | Path, suffix: str = ".tmp") -> list[Path]:
    """Delete temporaries left next to `target` by armini processes that died before renaming them.

    A temporary whose process is still running is left alone (it may be writing right now).
    Returns the paths removed."""
    target = Path(target)
    pattern = temporary_name_pattern(target, suffix)
    removed = []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if not match or not entry.is_file():
            continue
        pid = match.group("pid")
        if pid is not None and _alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", suffix: str = ".tmp", encoding: str | None = None):
    """Open a temporary file next to `path` for writing; on success rename it to `path`.

    mode: "wb" (bytes) or "w" (text, UTF-8 unless `encoding` says otherwise, no newline translation).
    If the block raises, the temporary is deleted and `path` is untouched (whatever it held before).
    The folder of `path` must exist: we never guess where a user meant to write."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write opens files for writing only: mode 'wb' or 'w', got {mode!r}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name inside it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist")
    remove_stale_temporaries(path, suffix)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=suffix)
    try:
        # the permissions the file had, or those open() would give a new one (not mkstemp's 0600)
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        opened = os.fdopen(fd, mode, encoding=encoding or ("utf-8" if mode == "w" else None),
                           **({"newline": ""} if mode == "w" else {}))
        with opened as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows: `path` is the old file or the new one
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
