"""A private PostgreSQL server for tests, from Debian's packages.

``initdb`` into a temporary directory owned by ``postgres`` (PostgreSQL refuses
to run as root; by default in the system's temporary folder, not under pytest's,
whose top folder another pytest run may reset to 0700), ``pg_ctl start`` on a
free 127.0.0.1 port with its socket in the data directory, and a fresh database
per :meth:`Postgres.new_database`.
``kill()`` stops it the way a crash would (``pg_ctl -m immediate``);
``close()`` stops it and removes the directory, also after a failed start.

    with Postgres(tmp_path) as pg:
        url = pg.new_database()     # postgresql://postgres@127.0.0.1:PORT/t1
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

USER = "postgres"


class PostgresError(RuntimeError):
    """The test server could not be set up or started."""


def server_bin(name: str) -> str:
    """A PostgreSQL server tool (``initdb``, ``pg_ctl``): Debian keeps them off PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise PostgresError(f"{name} not found under /usr/lib/postgresql/*/bin: install Debian's "
                        "postgresql (scripts/setup.sh does)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """One PostgreSQL server in a temporary directory, run as the ``postgres`` user."""

    def __init__(self, parent: Path | None = None) -> None:
        self._parent = parent
        self.dir: Path | None = None
        self.port = 0
        self.host = "127.0.0.1"
        self._names = itertools.count(1)
        self._running = False
        try:
            self._uid = pwd.getpwnam(USER).pw_uid
            self._gid = pwd.getpwnam(USER).pw_gid
        except KeyError as err:
            raise PostgresError(f"no {USER} user: install Debian's postgresql") from err

    # -- lifecycle --------------------------------------------------------------------------

    def _as_postgres(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", USER, "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout,
                              check=False, cwd="/")

    @property
    def data(self) -> Path:
        assert self.dir is not None
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "server.log"

    def start(self) -> Postgres:
        try:
            if self.dir is None:
                self.dir = Path(tempfile.mkdtemp(prefix="xunfang-pg-", dir=self._parent))
                # postgres must reach its data directory through every folder above it.
                for folder in (self.dir, *self.dir.parents):
                    if folder == Path("/"):
                        break
                    mode = folder.stat().st_mode
                    if mode & 0o011 != 0o011:
                        folder.chmod(mode | 0o011)
                os.chown(self.dir, self._uid, self._gid)
                done = self._as_postgres(server_bin("initdb"), "-D", str(self.data), "-A",
                                         "trust", "-U", USER, "-E", "UTF8", "--locale=C.UTF-8",
                                         "--no-sync")
                if done.returncode != 0:
                    raise PostgresError(f"initdb failed: {done.stderr.strip()[-2000:]}")
            # A restart keeps its port: clients reconnect to the URL they were given.
            self.port = self.port or _free_port()
            opts = (f"-p {self.port} -k {self.data} -c listen_addresses={self.host}"
                    " -c fsync=on -c max_connections=200")
            done = self._as_postgres(server_bin("pg_ctl"), "-D", str(self.data), "-l",
                                     str(self.log_path), "-o", opts, "-w", "-t", "60", "start")
            if done.returncode != 0:
                raise PostgresError(f"pg_ctl start failed: {done.stderr.strip()}\n"
                                    f"{self.log_tail()}")
            self._running = True
        except BaseException:
            self.close()
            raise
        return self

    def kill(self) -> None:
        """Stop at once, as a crash would: no checkpoint, clients cut off."""
        if self._running:
            self._as_postgres(server_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate",
                              "-w", "stop")
            self._running = False

    def stop(self) -> None:
        if self._running:
            self._as_postgres(server_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                              "stop")
            self._running = False

    def close(self) -> None:
        """Stop (if running) and remove the directory."""
        try:
            if self.dir is not None and (self.data / "postmaster.pid").exists():
                self._running = True
                self.kill()
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Postgres {self.host}:{self.port} {'running' if self._running else 'stopped'}>"

    # -- databases --------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{database}"

    def new_database(self, prefix: str = "t") -> str:
        """A new, empty database; its URL."""
        name = f"{prefix}{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""
        return "\n".join(text.splitlines()[-lines:])


class LedgerDatabases:
    """Ledger databases of one backend for one test: ``target(name)`` is a SQLite path in
    the test's folder or the URL of a fresh PostgreSQL database, the same for one name."""

    def __init__(self, backend: str, folder: Path, server: Postgres | None) -> None:
        self.backend, self.folder, self.server = backend, folder, server
        self._made: dict[str, str] = {}

    def target(self, name: str = "ledger") -> str:
        if name not in self._made:
            if self.server is None:
                self._made[name] = str(self.folder / f"{name}.db")
            else:
                self._made[name] = self.server.new_database()
        return self._made[name]

    def __repr__(self) -> str:
        return f"<LedgerDatabases {self.backend}>"
