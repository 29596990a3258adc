"""One writer per store: a lock object inside the store recording who holds it.

The record names the holder's host, pid and start time, a token, and, where the platform
tells them (Linux, from ``/proc``), the host's boot id (``/proc/sys/kernel/random/boot_id``),
the holder's pid namespace (``/proc/self/ns/pid``) and the process's own start time (field 22
of ``/proc/<pid>/stat``, clock ticks since boot); each is ``None`` where it cannot be read.

A lock whose holder is *provably gone* is taken over without ``force``, with a warning that
names the old holder. Its holder is provably gone when the record's host is this host
(``socket.gethostname()``), its boot id is this boot's (both known), its pid namespace is not
known to differ from ours, and its pid is not running (or is a zombie), or is running with a
start time other than the recorded one (the pid was reused). Otherwise:

* a holder that is a running process on this host is never taken over, with or without
  ``force``;
* a lock from another host, from an earlier boot of this host, from another pid namespace
  (another container) or with an unreadable record needs ``force``;
* a lock on this host without a boot id (written by an older ``dr``) whose process is gone is
  *stale*: reported as such, and ``force`` takes it over.

Local stores create the lock with ``O_CREAT | O_EXCL`` (atomic), and take one over by renaming
the judged record away (atomic) before creating theirs, so two builds taking over the same lock
do not both win. On object stores (fsspec URLs) the lock is written only if absent; S3 offers
no atomic create through s3fs, so two builds started within the same instant can both win:
start one build per store (see the README).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any

from dr.errors import StoreError
from dr.urls import Location

__all__ = ["StoreLock", "StoreLockedError", "LOCK_NAME"]

LOCK_NAME = ".dr-build.lock"

log = logging.getLogger(__name__)


class StoreLockedError(StoreError):
    """Another build holds (or a dead build left) the store's writer lock."""


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def boot_id() -> str | None:
    """This host's boot id (a UUID per boot, Linux), or ``None`` where it cannot be read."""
    text = _read_text("/proc/sys/kernel/random/boot_id")
    if text is None:
        return None
    return text.strip() or None


def _pid_namespace() -> str | None:
    """This process's pid namespace (``pid:[4026531836]`` on Linux), or ``None``."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks since boot)`` of a process from ``/proc/<pid>/stat``
    (fields 3 and 22), or ``None`` where it cannot be read."""
    text = _read_text(f"/proc/{pid}/stat")
    if text is None:
        return None
    try:
        fields = text.rsplit(")", 1)[1].split()  # the name (field 2) may hold spaces and parentheses
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or ``None``."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid)
    return stat is None or stat[0] not in ("Z", "X")  # a zombie has exited: only its parent has not reaped it


def _int(value: Any, default: int = -1) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


class StoreLock:
    """The writer lock of the store at ``url`` (a path, an fsspec URL or a :class:`~dr.urls.Location`)."""

    def __init__(self, url: str | Location, storage_options: Mapping[str, Any] | None = None) -> None:
        self.location = Location.of(url, storage_options)
        self.url = self.location.url
        self.remote = self.location.remote
        self.token = uuid.uuid4().hex
        self.held = False

    # -- io --------------------------------------------------------------------------------
    def _fs(self) -> tuple[Any, str]:
        fs, root = self.location.filesystem()
        return fs, f"{root.rstrip('/')}/{LOCK_NAME}"

    def _path(self) -> str:
        return os.path.join(self.location.path, LOCK_NAME)

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        try:
            record = json.loads(raw)
            return record if isinstance(record, dict) else {"corrupt": True}
        except ValueError:
            return {"corrupt": True}

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
        return self._parse(raw)

    def _write(self, record: dict[str, Any], exclusive: bool) -> bool:
        data = json.dumps(record).encode()
        if self.remote:
            fs, key = self._fs()
            if exclusive and fs.exists(key):
                return False
            fs.pipe_file(key, data)
            return True
        os.makedirs(self.location.path, exist_ok=True)
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

    def _replace(self, judged: Mapping[str, Any], record: dict[str, Any]) -> bool:
        """Replace the lock ``judged`` (the record the caller decided to take over) by ``record``;
        ``False`` if the lock changed meanwhile (another build took it over or released it)."""
        if self.remote:  # no atomic rename on object stores: overwrite (see the module docstring)
            return self._write(record, exclusive=False)
        path = self._path()
        aside = f"{path}.{self.token}.old"
        try:
            os.rename(path, aside)  # atomic: of two builds taking over one lock, one moves it
        except FileNotFoundError:
            return False
        try:
            with open(aside, "rb") as f:
                moved = self._parse(f.read())
            if moved != dict(judged):  # a lock another build wrote after we read ours: put it back
                try:
                    os.link(aside, path)
                except FileExistsError:
                    pass
                return False
        finally:
            os.remove(aside)
        return self._write(record, exclusive=True)

    def _record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "token": self.token,
            "boot_id": boot_id(),
            "pid_ns": _pid_namespace(),
            "pid_start": process_start(pid),
        }

    # -- judging a record --------------------------------------------------------------------
    @staticmethod
    def _same_boot(record: Mapping[str, Any]) -> bool | None:
        """``None`` for a record of another host or without a boot id (either side), else whether
        it was written during this boot of this host."""
        if record.get("corrupt") or record.get("host") != socket.gethostname():
            return None
        here, there = boot_id(), record.get("boot_id")
        if here is None or there is None:
            return None
        return bool(there == here)

    @staticmethod
    def _other_namespace(record: Mapping[str, Any]) -> bool:
        """True when the record's pid namespace is known and differs from ours (another container
        on this host: its pids mean nothing here)."""
        here, there = _pid_namespace(), record.get("pid_ns")
        return here is not None and there is not None and here != there

    @staticmethod
    def _reused(record: Mapping[str, Any]) -> bool:
        """True when the record's pid runs now with a start time other than the recorded one."""
        recorded = record.get("pid_start")
        if recorded is None:
            return False
        now = process_start(_int(record.get("pid")))
        return now is not None and now != _int(recorded)

    def is_gone(self, record: Mapping[str, Any]) -> bool:
        """True when the holder is provably gone: this host and this boot (both recorded), the
        same pid namespace (where known), and its pid not running or reused since."""
        if not self._same_boot(record) or self._other_namespace(record):
            return False
        pid = _int(record.get("pid"))
        return not _pid_alive(pid) or self._reused(record)

    def is_stale(self, record: Mapping[str, Any]) -> bool:
        """True when the record is unreadable, or its holder ran on this host, its process no
        longer exists, and the record cannot prove it (no boot id: an older ``dr``)."""
        if record.get("corrupt"):
            return True
        if record.get("host") != socket.gethostname() or self._same_boot(record) is not None:
            return False  # another host, or a record that proves what it says (see is_gone)
        return not _pid_alive(_int(record.get("pid")))

    def _running_here(self, record: Mapping[str, Any]) -> bool:
        """True when the holder is a running process on this host (this one included)."""
        if record.get("corrupt") or record.get("host") != socket.gethostname():
            return False
        if self._same_boot(record) is False or self._other_namespace(record):
            return False  # its pid is one of another boot or another container: not one of ours
        return _pid_alive(_int(record.get("pid"))) and not self._reused(record)

    def is_live_here(self, record: Mapping[str, Any]) -> bool:
        """True when the holder is another process on this host that is still running."""
        return _int(record.get("pid")) != os.getpid() and self._running_here(record)

    # -- api -------------------------------------------------------------------------------
    def _refuse(self, record: Mapping[str, Any], force: bool) -> None:
        """Raise :class:`StoreLockedError` unless ``record`` may be taken over (with ``force``)."""
        if record.get("token") == self.token or self.is_gone(record):
            return
        who = f"pid {record.get('pid')} on host {record.get('host')!r}, started {record.get('started')}"
        if force and self.is_live_here(record):
            raise StoreLockedError(
                f"store {self.url!r} is being written by a running build ({who}): --force never takes over a lock whose "
                f"holder is alive on this host. Stop that process (kill {record.get('pid')}) or wait for it; if pid "
                f"{record.get('pid')} is not a dr build (a reused pid), remove the lock file {self._path()!r}"
            )
        if not force and self._running_here(record):
            raise StoreLockedError(
                f"store {self.url!r} is being written by another build ({who}), which is running on this host; wait for it"
            )
        if force:
            return
        if record.get("corrupt"):
            raise StoreLockedError(
                f"store {self.url!r} has a stale writer lock whose record cannot be read ({self._path()!r}): rerun with --force "
                "to take it over"
            )
        if self.is_stale(record):
            raise StoreLockedError(
                f"store {self.url!r} has a stale writer lock left by {who}, which is no longer running; its record has no boot "
                "id to prove it (written by a dr older than boot records, or where none can be read): rerun with --force to take it over"
            )
        if self._same_boot(record) is False:
            raise StoreLockedError(
                f"store {self.url!r} has a writer lock left by {who} before this host last restarted (or by another machine "
                "of the same name); if no build is writing it, rerun with --force to take it over"
            )
        where = "in another container (pid namespace) on this host" if self._other_namespace(record) else "on another host"
        raise StoreLockedError(
            f"store {self.url!r} is being written by another build ({who}) {where}; wait for it, or if it is dead, rerun with "
            "--force (for a lock from another host, or one a crash left without a boot record)"
        )

    def refuse_if_held(self, *, force: bool = False) -> None:
        """Raise :class:`StoreLockedError` if another build holds the lock. A lock whose holder
        is provably gone (see the module docstring) passes; ``force`` takes over a lock left by a
        build on another host (or a stale one), never one whose holder is a running process on
        this host."""
        record = self.holder()
        if record is not None:
            self._refuse(record, force)

    def acquire(self, *, force: bool = False) -> None:
        """Take the lock: a lock whose holder is provably gone is taken over (with a warning),
        ``force`` takes over a stale one or one from another host, never one whose holder runs on
        this host."""
        mine = self._record()
        for _ in range(8):
            if self._write(mine, exclusive=True):
                self.held = True
                return
            record = self.holder()
            if record is None:  # released meanwhile
                continue
            gone = record.get("token") != self.token and self.is_gone(record)
            if not gone:
                self._refuse(record, force)
            if not self._replace(record, mine):  # another build moved it first: judge what is there now
                continue
            if gone:
                reused = _pid_alive(_int(record.get("pid")))
                log.warning(
                    "taking over the writer lock of store %r left by pid %s on this host (%s, started %s), %s (same boot)",
                    self.url,
                    record.get("pid"),
                    record.get("host"),
                    record.get("started"),
                    "whose pid now belongs to another process" if reused else "which is no longer running",
                )
            self.held = True
            return
        raise StoreLockedError(f"store {self.url!r}: other builds are taking its writer lock at the same time; start one build per store")

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
