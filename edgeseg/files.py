"""File helpers every command shares: hashing, and writes that never leave half a file behind."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgeseg.errors import EdgesegError


def cache_root() -> Path:
    """Where built artefacts are kept between runs (TensorRT engines, OpenVINO's compiled blobs):
    $EDGESEG_CACHE, else ~/.cache/edgeseg."""
    return Path(os.environ.get("EDGESEG_CACHE", Path.home() / ".cache" / "edgeseg"))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_writable(path: str | Path, force: bool = False) -> Path:
    """Refuse an existing output without ``force`` and a missing parent folder, before any work."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise EdgesegError("exists and is not a regular file (a folder, device or pipe); choose another output "
                           "name", path)
    if path.exists() and not force:
        raise EdgesegError("already exists; pass --force to overwrite it", path)
    if not path.parent.is_dir():
        raise EdgesegError(f"output folder {path.parent} does not exist; create it first", path)
    if not os.access(path.parent, os.W_OK):
        raise EdgesegError(f"output folder {path.parent} is not writable; choose another -o", path)
    return path


def check_folder(folder: Path | None, force: bool = False) -> None:
    """Refuse an output folder that is something else, or that already holds files, without ``force``."""
    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise EdgesegError("exists and is not a folder; choose another output folder", folder)
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise EdgesegError("already holds files; pass --force to write over them or choose another folder", folder)


def write_problem(folder: Path) -> str | None:
    """None when files can be created in ``folder`` (made if missing), else why not (the OS's words):
    tried with a real file, since permission bits do not show a read-only or full filesystem."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        return e.strerror or str(e)
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], object], force: bool = False) -> Path:
    """Call ``write(tmp_path)`` in the target folder, fsync it, rename it onto ``path`` and fsync the
    folder: readers see the old file or the whole new one, also after a power cut."""
    path = check_writable(path, force)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise EdgesegError(f"cannot create a file here ({e.strerror}); choose another output folder", path) from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        write(Path(tmp))
        _fsync(tmp)  # on a device a power cut after the rename must not leave an empty file
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as e:  # a full disk (ENOSPC), a quota, a folder gone read-only
        Path(tmp).unlink(missing_ok=True)
        raise EdgesegError(f"could not write it ({e.strerror}); nothing was written: free space or choose "
                           "another output", path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.edgeseg-lock")


def _holder(path: Path) -> int | None:
    """The pid of a live edgeseg process writing ``path``, or None (no lock, or a stale one)."""
    try:
        pid = int(_lock_path(path).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return None if pid == os.getpid() else pid


def check_unclaimed(path: Path) -> None:
    if (pid := _holder(path)) is not None:
        raise EdgesegError(f"is being written by another edgeseg process (pid {pid}); wait for it or choose another "
                           "output", path)


@contextlib.contextmanager
def claim(paths: list[Path]):
    """Hold each output for this process (a lock file beside it, with our pid) so that two runs never
    write into the same folder or file; a lock left by a process that is gone is taken over."""
    held: list[Path] = []
    try:
        for path in paths:
            lock = _lock_path(path)
            for _ in range(2):
                try:
                    lock.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    check_unclaimed(path)
                    lock.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                except OSError as e:
                    raise EdgesegError(f"cannot write here ({e.strerror}); choose another output folder",
                                       path.parent) from None
                with os.fdopen(fd, "w") as f:
                    f.write(str(os.getpid()))
                held.append(lock)
                break
            else:
                check_unclaimed(path)
        yield
    finally:
        for lock in held:
            lock.unlink(missing_ok=True)
