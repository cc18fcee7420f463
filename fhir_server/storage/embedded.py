"""The embedded MongoDB-wire-compatible database (SecantusDB), run as a child process (docs/architecture.md).

SecantusDB is GPL-2.0: it is only ever started as a separate process and spoken to over the wire
protocol, never imported.

One process at a time owns a storage directory: `start()` takes an exclusive lock on
`<storage>/owner.pid` (which names the owner's pid) and, once the database answers, writes its URI
to `<storage>/mongodb.uri` so that other commands (`fhir-server audit verify`) use the running
database instead of failing on its files; `stop()` removes both. The lock is an `flock`, released
by the kernel when its owner dies, so a pid file left by a killed server is recognised as stale and
taken over. The child runs in a session of its own (a terminal's Ctrl+C reaches only the server,
which closes its connections before stopping the database) and, on Linux, is sent SIGTERM if its
owner dies without stopping it. Its pid is kept in `<storage>/database.pid`: a database a killed
owner left running (frozen, or slow to stop) is stopped by the next owner before it starts its own,
since two databases cannot open the same files.

`respawn()` starts a new database on the same directory and port after the child died, so the
published URI stays right and the driver reconnects by itself (storage/supervisor.py decides when).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
OWNER_FILE = "owner.pid"
URI_FILE = "mongodb.uri"
DATABASE_PID_FILE = "database.pid"
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("fhir_server")


class DataDirectoryInUse(RuntimeError):
    """Another live process owns the storage directory; `uri` is its database once it answers."""

    def __init__(self, storage_path: Path, pid: int | None, uri: str | None) -> None:
        owner = f"pid {pid}" if pid is not None else "another process"
        super().__init__(
            f"the data directory {storage_path} is in use by {owner} (fhir-server serve or audit verify); "
            "stop it first, or set FHIR_DATA_DIR to another directory"
        )
        self.pid = pid
        self.uri = uri


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def _read_pid(path: Path) -> int | None:
    text = _read_text(path)
    return int(text) if text is not None and text.isdigit() else None


def _is_database_of(pid: int, storage: Path) -> bool:
    """Whether `pid` is a running SecantusDB on `storage` (Linux /proc; elsewhere: unknown, False)."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"secantus" in arguments and os.fsencode(storage) in arguments


def _gone(pid: int, storage: Path, *, within: float) -> bool:
    deadline = time.monotonic() + within
    while _is_database_of(pid, storage):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` asking Linux to SIGTERM the child when the thread that started it dies.

    Start the database from a thread that lives as long as its owner (the main thread or the event
    loop's), since Linux ties the signal to the starting thread, not the process.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def set_parent_death_signal() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_parent_death_signal


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedDatabase:
    """A SecantusDB process bound to loopback; `uri` is ready to hand to the driver once started."""

    storage_path: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _owner: IO[str] | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        # retryWrites=false: docs/architecture.md, the embedded server's insert rate collapses with them on.
        return f"mongodb://{self.host}:{self.port}/?directConnection=true&retryWrites=false"

    def start(self) -> EmbeddedDatabase:
        """Lock the storage directory, start the database and wait until it answers.

        Raises DataDirectoryInUse when another live process owns the directory.
        """
        self.storage_path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._stop_leftover()
            self.spawn()
            self.wait_until_ready()
        except BaseException:
            self.stop()
            raise
        (self.storage_path / URI_FILE).write_text(self.uri + "\n", encoding="utf-8")
        return self

    def exit_code(self) -> int | None:
        """The child's exit code once it has exited (reaped), None while it runs (or is frozen)."""
        return None if self.process is None else self.process.poll()

    def respawn(self) -> None:
        """Start a new database process on the same directory and port after the previous one exited.

        Returns once the process is started; its readiness is the caller's to wait for (pings).
        """
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the embedded database is still running")
        self.spawn()

    def _lock(self) -> None:
        owner_path = self.storage_path / OWNER_FILE
        owner = owner_path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            owner.close()
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise DataDirectoryInUse(
                self.storage_path, _read_pid(owner_path), _read_text(self.storage_path / URI_FILE)
            ) from None
        stale = _read_pid(owner_path)
        if stale is not None:
            log.warning(
                "%s was left by pid %d, which is no longer running (killed?): taking it over",
                owner_path,
                stale,
            )
        (self.storage_path / URI_FILE).unlink(missing_ok=True)
        owner.seek(0)
        owner.truncate()
        owner.write(f"{os.getpid()}\n")
        owner.flush()
        self._owner = owner

    def _stop_leftover(self) -> None:
        """Stop a database the previous owner of the directory left running.

        Its owner was killed (the directory's lock was free), and the parent-death SIGTERM either is
        still being handled or could not be (a frozen process): wait for it, then kill it.
        """
        pid_path = self.storage_path / DATABASE_PID_FILE
        pid = _read_pid(pid_path)
        database = self.storage_path / "db"
        if pid is None or not _is_database_of(pid, database):
            return
        log.warning(
            "the embedded database (pid %d) of a previous server on %s is still running: stopping it",
            pid,
            self.storage_path,
        )
        for signum in (signal.SIGCONT, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        if not _gone(pid, database, within=STOP_TIMEOUT_SECONDS):
            log.warning("pid %d ignored SIGTERM for %.0f s: killing it", pid, STOP_TIMEOUT_SECONDS)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not _gone(pid, database, within=STOP_TIMEOUT_SECONDS):
                raise RuntimeError(f"the embedded database (pid {pid}) of a previous server does not stop")
        pid_path.unlink(missing_ok=True)

    def spawn(self) -> None:
        """Start the database process (not waiting for it to answer) and record its pid."""
        log_file = (self.storage_path / "secantus.log").open("ab")
        command = [
            sys.executable, "-m", "secantus",
            "--host", self.host,
            "--port", str(self.port),
            "--storage-path", str(self.storage_path / "db"),
            "--log-level", "WARNING",
            "--sync-on-commit",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),  # only calls prctl, async-signal-safe
        )
        log_file.close()
        (self.storage_path / DATABASE_PID_FILE).write_text(f"{self.process.pid}\n", encoding="utf-8")

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"embedded database exited with code {self.process.returncode}; "
                    f"see {self.storage_path / 'secantus.log'}"
                )
            with contextlib.suppress(PyMongoError):
                with MongoClient[dict[str, Any]](self.uri, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                return
            time.sleep(0.1)
        raise RuntimeError(f"embedded database did not answer within {STARTUP_TIMEOUT_SECONDS:.0f}s")

    def stop(self) -> None:
        """Stop the database and release the directory."""
        self.stop_process()
        if self._owner is not None:
            (self.storage_path / URI_FILE).unlink(missing_ok=True)
            self._owner.seek(0)
            self._owner.truncate()
            self._owner.close()
            self._owner = None

    def stop_process(self) -> None:
        """Stop the database process: SIGTERM (and SIGCONT, for a frozen one), SIGKILL after
        STOP_TIMEOUT_SECONDS. The directory stays locked."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            self.process.send_signal(signal.SIGCONT)  # a frozen database handles its SIGTERM too
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning(
                    "the embedded database ignored SIGTERM for %.0f s: killing it", STOP_TIMEOUT_SECONDS
                )
                self.process.kill()
                self.process.wait()
        self.process = None
        (self.storage_path / DATABASE_PID_FILE).unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedDatabase:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
