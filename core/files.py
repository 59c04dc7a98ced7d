"""Writing files so that nothing is ever half-written, and one writer per folder.

Atomic writes (:func:`write_text_atomic`, :func:`write_bytes_atomic`, :func:`atomic_path`):
the content goes to a temporary file in the same folder, is flushed and fsynced, then
``os.replace`` puts it in place and the folder itself is fsynced (where the file system
allows). A kill or a full disk at any moment leaves either the old file or the new one,
never a mix; a failed write removes its temporary file and raises a one-line
:class:`FileWriteError`.

:class:`DirectoryLock`: an exclusive lock file (``raresynth.lock``: PID, host, start
time) in a folder that one process writes, a training run's directory or a
benchmark's ``out_dir``. It is created with ``O_CREAT | O_EXCL`` and held with
``fcntl.flock`` for as long as the writer runs. A lock whose process is gone (on this
host: its ``flock`` is free, or its PID no longer runs) is taken over with a warning;
a second writer while the first runs gets a one-line :class:`LockError` naming it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from .errors import FileWriteError, LockError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the PID check alone
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "raresynth.lock"

# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Replace ``path`` by ``text`` atomically."""
    write_bytes_atomic(path, text.encode(encoding))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically."""
    with atomic_path(path) as temporary:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (safetensors' ``save_file``, PIL).

    When the ``with`` block ends without an exception, the temporary file is fsynced and
    replaces ``path``; otherwise it is removed and ``path`` is left as it was. The
    writer must not infer the format from the name (PIL: pass ``format="PNG"``).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        _fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise FileWriteError(write_error_message(path, exc)) from None
        raise
    _fsync_folder(path.parent)


def write_error_message(path: Path, exc: OSError) -> str:
    """``path: could not write it (reason); what to do`` in one line."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = {
        errno.ENOSPC: "the disk is full: free some space and run again",
        errno.EDQUOT: "the disk quota is used up: free some space and run again",
        errno.EACCES: f"no permission to write in {path.parent}",
        errno.EPERM: f"no permission to write in {path.parent}",
        errno.EROFS: f"{path.parent} is on a read-only file system",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EFBIG: "the file is larger than this process may write (ulimit -f)",
    }.get(exc.errno or 0, "check the folder and run again")
    kept = "; the previous version is unchanged" if path.exists() else ""
    return f"{path}: could not write it ({reason}){kept}; {hint}"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable; some file systems cannot open or fsync a folder (then it is skipped)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# One writer per folder
# ---------------------------------------------------------------------------


def pid_runs(pid: int) -> bool:
    """Whether a process with this PID runs on this host (a zombie counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class DirectoryLock:
    """An exclusive lock on ``folder`` for one writer (``what``: "trainer", "benchmark", ...).

    ``acquire()`` creates the folder if needed; ``release()`` removes the lock file (and
    the folder, if this lock created it and nothing else was written there). Usable as a
    context manager. The lock belongs to one process: a child process does not hold it.
    """

    def __init__(self, folder: str | Path, what: str = "writer"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._fd: int | None = None
        self._created_folder = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "since": _utc_now(), "what": self.what,
                "command": " ".join(sys.argv[:3])}

    def acquire(self) -> Self:
        if self._fd is not None:
            return self
        if self.folder.exists() and not self.folder.is_dir():
            raise LockError(f"{self.folder}: is a file, not a folder; choose another folder")
        try:
            self._created_folder = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LockError(f"{self.folder}: cannot create the folder ({exc.strerror or exc})") from None
        for _ in range(5):  # the lock file may be replaced under us by another taker; then look again
            fd = self._try_take()
            if fd is not None:
                self._fd = fd
                return self
        raise LockError(f"{self.path}: the lock keeps changing hands; another {self.what} is starting here, try again later")

    def _try_take(self) -> int | None:
        """The locked file descriptor; None when the lock file changed meanwhile (look again)."""
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            created = True
        except FileExistsError:
            try:
                fd = os.open(self.path, flags)
            except FileNotFoundError:
                return None  # released meanwhile: create it again
            created = False
        except OSError as exc:
            raise LockError(f"{self.path}: cannot create the lock file ({exc.strerror or exc})") from None
        owned = False  # whether this process may remove the file on failure
        try:
            flocked = _flock(fd)
            if flocked is False:
                if created:  # another taker opened the new file first: it decides
                    os.close(fd)
                    return None
                raise LockError(self._held_message(_read_lock(fd)))
            owned = created
            if not created:
                if not _same_file(fd, self.path):
                    os.close(fd)
                    return None
                holder = _read_lock(fd)
                if not self._stale(holder, flocked):
                    raise LockError(self._held_message(holder))
                print(f"warning: {self.folder}: taking over the lock of {_describe(holder)}, which no longer runs", file=sys.stderr)
                owned = True
            payload = (json.dumps(self.info()) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, payload, 0)
            os.fsync(fd)
            return fd
        except BaseException:
            if owned:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    def _stale(self, holder: dict[str, Any], flocked: bool | None) -> bool:
        """Whether the writer named in an existing lock file is gone (decidable on this host only)."""
        host = holder.get("host")
        if flocked and host in (None, socket.gethostname()):
            return True  # nobody holds the flock: the writer ended (also when its PID was reused since)
        if host != socket.gethostname():
            return False
        pid = holder.get("pid")
        return isinstance(pid, int) and not pid_runs(pid)

    def _held_message(self, holder: dict[str, Any]) -> str:
        message = f"{self.folder}: another {holder.get('what') or 'process'} writes here ({_describe(holder)})"
        if holder.get("host") != socket.gethostname():
            return message + f"; wait for it to end, or, if nothing runs there any more, delete {self.path}"
        return message + "; wait for it to end or stop it"

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _same_file(fd, self.path):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)
        if self._created_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty: a run that failed before writing anything


def _flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this file system has no flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP, EINVAL: decide by the PID alone


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_lock(fd: int) -> dict[str, Any]:
    try:
        content = json.loads(os.pread(fd, 65536, 0).decode("utf-8", "replace") or "{}")
    except ValueError:
        return {}
    return content if isinstance(content, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that left no details"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
