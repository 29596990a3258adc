"""One writer per store: a lock object inside the store recording host, pid and start time.

Local stores create the lock with ``O_CREAT | O_EXCL`` (atomic). A lock whose host is this
machine and whose process is gone is *stale*; it is reported as such and ``force=True``
takes it over. On object stores (fsspec URLs) the lock is written only if absent; S3 offers
no atomic create through s3fs, so two builds started within the same instant can both win:
start one build per store (see the README).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any

from dr.errors import StoreError

__all__ = ["StoreLock", "StoreLockedError", "LOCK_NAME"]

LOCK_NAME = ".dr-build.lock"


class StoreLockedError(StoreError):
    """Another build holds (or a dead build left) the store's writer lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """The writer lock of the store at ``url`` (a path or an fsspec URL)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = str(url)
        self.remote = "://" in self.url and not self.url.startswith("file://")
        self.storage_options = dict(storage_options or {})
        self.token = uuid.uuid4().hex
        self.held = False

    # -- io --------------------------------------------------------------------------------
    def _fs(self) -> tuple[Any, str]:
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return fs, f"{root.rstrip('/')}/{LOCK_NAME}"

    def _path(self) -> str:
        return os.path.join(self.url, LOCK_NAME)

    def holder(self) -> dict[str, Any] | None:
        """The current lock record, or ``None`` if the store is unlocked."""
        try:
            if self.remote:
                fs, key = self._fs()
                if not fs.exists(key):
                    return None
                raw = fs.cat_file(key)
            else:
                with open(self._path(), "rb") as f:
                    raw = f.read()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
            return record if isinstance(record, dict) else {"corrupt": True}
        except ValueError:
            return {"corrupt": True}

    def _write(self, record: dict[str, Any], exclusive: bool) -> bool:
        data = json.dumps(record).encode()
        if self.remote:
            fs, key = self._fs()
            if exclusive and fs.exists(key):
                return False
            fs.pipe_file(key, data)
            return True
        os.makedirs(self.url, exist_ok=True)
        if exclusive:
            try:
                fd = os.open(self._path(), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        tmp = f"{self._path()}.{self.token}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self._path())
        return True

    # -- api -------------------------------------------------------------------------------
    def is_stale(self, record: Mapping[str, Any]) -> bool:
        """True when the holder ran on this host and its process no longer exists."""
        if record.get("corrupt"):
            return True
        return record.get("host") == socket.gethostname() and not _pid_alive(int(record.get("pid", -1)))

    def is_live_here(self, record: Mapping[str, Any]) -> bool:
        """True when the holder is another process on this host that is still running."""
        if record.get("corrupt") or record.get("host") != socket.gethostname():
            return False
        pid = int(record.get("pid", -1))
        return pid != os.getpid() and _pid_alive(pid)

    def check(self, *, force: bool = False) -> None:
        """Raise :class:`StoreLockedError` if another build holds the lock. ``force`` takes over
        a lock left by a build on another host (or a stale one), never one whose holder is a
        running process on this host."""
        record = self.holder()
        if record is None or record.get("token") == self.token:
            return
        who = f"pid {record.get('pid')} on host {record.get('host')!r}, started {record.get('started')}"
        if force and self.is_live_here(record):
            raise StoreLockedError(
                f"store {self.url!r} is being written by a running build ({who}): --force never takes over a lock whose "
                f"holder is alive on this host. Stop that process (kill {record.get('pid')}) or wait for it; if pid "
                f"{record.get('pid')} is not a dr build (a reused pid), remove the lock file {self._path()!r}"
            )
        if force:
            return
        if self.is_stale(record):
            raise StoreLockedError(
                f"store {self.url!r} has a stale writer lock left by {who}, which is no longer running: rerun with --force to take it over"
            )
        raise StoreLockedError(
            f"store {self.url!r} is being written by another build ({who}); wait for it, or if it is dead on another host, rerun with --force"
        )

    def acquire(self, *, force: bool = False) -> None:
        """Take the lock; ``force`` takes over a stale (or any) existing lock."""
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": self.token}
        if self._write(record, exclusive=True):
            self.held = True
            return
        self.check(force=force)
        self._write(record, exclusive=False)
        self.held = True

    def release(self) -> None:
        """Remove the lock if this object holds it."""
        if not self.held:
            return
        record = self.holder()
        if record is not None and record.get("token") == self.token:
            if self.remote:
                fs, key = self._fs()
                fs.rm_file(key)
            else:
                try:
                    os.remove(self._path())
                except FileNotFoundError:
                    pass
        self.held = False

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
