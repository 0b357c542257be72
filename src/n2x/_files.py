"""Writing files so that an interrupted write never leaves a half-written file under the final name."""
from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an error, it replaces ``path``.

    The temporary file (``<name>.<random>.part`` in the same folder, so the rename is atomic) is removed on any
    error. Errors about the folder name ``path``, never the temporary file.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, _reason(exc, path), str(path)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise OSError(exc.errno, _reason(exc, path), str(path)) from None
    except OSError as exc:
        if exc.filename is not None and Path(str(exc.filename)) == Path(tmp):
            # Writing the temporary file failed (a full disk...): the user knows the path they gave, not ours.
            raise OSError(exc.errno, _reason(exc, path), str(path)) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _reason(exc: OSError, path: Path) -> str:
    """Why ``path`` cannot be written, in words that point at what to do."""
    folder = path.parent
    if not folder.exists():
        return f"the folder {folder} does not exist; create it or choose another output path"
    if not folder.is_dir():
        return f"{folder} is not a folder; choose another output path"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) or not os.access(folder, os.W_OK):
        return f"no permission to write in {folder}; choose a folder you can write to"
    if exc.errno == errno.ENOSPC:
        return f"the disk holding {folder} is full; free some space or choose another folder"
    return f"files cannot be written in {folder} ({exc.strerror or exc}); choose another output path"


def os_error_text(exc: OSError) -> str:
    """One line about an OSError for a user: the path it concerns and what to do, never a temporary file's name.

    Errors raised through :func:`atomic_path` already say it; others (a zarr store that cannot be created, a file
    that vanished) are worded here from their errno."""
    name = exc.filename
    text = exc.strerror or str(exc)
    if name is None:
        return text
    name = str(name)
    if Path(name).name.endswith(".part"):  # a temporary file of atomic_path (<name>.<random>.part): the final one
        name = str(Path(name).with_name(Path(name).name.rsplit(".", 2)[0]))
    if text.startswith(("the folder", "no permission", "the disk", "files cannot")) or name in text:
        return f"cannot write {name}: {text}"
    if exc.errno in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR):
        return f"cannot write {name}: {_reason(exc, Path(name))}"
    return f"{name}: {text}"


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


class OutputLock:
    """An exclusive claim on an output path for one job: the file ``.<name>.n2x-lock`` next to it, created
    atomically (``O_EXCL``) and holding the host, process id and start time of its job.

    A second job on the same output, in this process or any other that sees the folder, finds the file and is
    refused; a lock left by a killed process on this host is taken over. :meth:`release` is idempotent.
    """

    def __init__(self, path: str | os.PathLike):
        target = Path(path)
        self.path = target.parent / f".{target.name}.n2x-lock"
        self._held = False

    def holder(self) -> dict | None:
        """The running job that holds the lock (``host``, ``pid``, ``started``), or None (free, or stale)."""
        import json
        import socket

        try:
            info = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"host": "?", "pid": "?", "started": "?"}  # being written right now, or unreadable: held
        if info.get("host") == socket.gethostname() and not _process_alive(int(info.get("pid", -1))):
            return None
        return info

    def acquire(self) -> dict | None:
        """Take the lock; returns None, or the holder's record when another job holds it (nothing taken then). In a
    folder that does not exist yet, or cannot be written, nothing is taken and None is returned."""
        import json
        import socket
        import time

        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is not None:
                    return holder
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except OSError:
                # The folder is missing (created with the output) or not writable: the output's own write then
                # reports it in the user's words; no lock is held.
                return None
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            self._held = True
            return None
        return self.holder() or {"host": "?", "pid": "?", "started": "?"}

    def release(self) -> None:
        if self._held:
            self._held = False
            self.path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
