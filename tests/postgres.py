"""A throwaway PostgreSQL cluster on 127.0.0.1 for the integration tests (MLflow and Prefect on PostgreSQL).

`postgres_server(base)` runs initdb into a fresh directory, starts the server with pg_ctl on a free port, yields a
`PostgresServer` that creates databases and hands out SQLAlchemy URLs, and on exit stops the server (also when the
body raised) and deletes the cluster. PostgreSQL itself is installed by scripts/ensure_postgres.sh (`make setup`).

Why the server runs as the `postgres` OS user under root: initdb and the postgres server refuse to run as root.
When the tests run as root (CI containers, this dev machine) every server command (initdb, pg_ctl) is run as the
`postgres` user that Debian's package creates, through `runuser -u postgres --` (or `su`), and the cluster's
directory is owned by that user; otherwise they run as the current user.

Why durability is off (`fsync=off`, `synchronous_commit=off`, `full_page_writes=off`): the cluster lives for one
test and is deleted afterwards, so a crash-safe WAL buys nothing and costs seconds per test. The cluster trusts
every connection (`initdb -A trust`): it only listens on 127.0.0.1, holds nothing but test data, and lives only as
long as the test. Never point these settings at a cluster whose data matters.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port

USER = "ragtune"  # the cluster's superuser (initdb -U), no password (trust authentication)
HOST = "127.0.0.1"
SERVER_OS_USER_UNDER_ROOT = "postgres"  # created by Debian's postgresql-common package
NOT_INSTALLED = ("PostgreSQL is not installed: run scripts/ensure_postgres.sh (make setup does) "
                 "or apt-get install postgresql")
START_ATTEMPTS = 3  # a free port can be taken between picking it and the server binding it: retry on another one


def initdb_path() -> Path | None:
    """initdb on PATH first, then the highest version in /usr/lib/postgresql/*/bin (Debian keeps it off PATH)."""
    if found := shutil.which("initdb"):
        return Path(found)
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if os.access(p, os.X_OK)]
    return max(candidates, key=_version, default=None)


def _version(initdb: Path) -> list[int]:
    """/usr/lib/postgresql/9.6/bin/initdb -> [9, 6]: numeric, so that 15 sorts above 9.6."""
    return [int(n) for n in re.findall(r"\d+", initdb.parent.parent.name)]


def accepts_connections(port: int, host: str = HOST) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
        return True
    return False


def _clean_env() -> dict[str, str]:
    """The environment without PG* variables (PGDATA, PGPORT, PGHOST, PGUSER...), which would override ours."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    bin_dir: Path
    data_dir: Path
    log: Path

    def url(self, name: str) -> str:
        """SQLAlchemy URL with the psycopg2 driver, for MLflow's backend store (--backend-store-uri).

        The driver is named: since SQLAlchemy 2.1 a bare `postgresql://` means psycopg 3 (`psycopg`), not psycopg2.
        """
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{name}"

    def async_url(self, name: str) -> str:
        """SQLAlchemy URL with the asyncpg driver, for PREFECT_API_DATABASE_CONNECTION_URL."""
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{name}"

    def dsn(self, name: str) -> str:
        """libpq connection URI, for the drivers and tools themselves (psycopg2.connect, asyncpg.connect, psql)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name` (over TCP as the cluster's superuser); returns `url(name)`."""
        # createdb is a client: it connects over TCP with trust authentication, so it needs no OS user switch.
        _run([str(self.bin_dir / "createdb"), "-h", self.host, "-p", str(self.port), "-U", self.user, name],
             as_user=None, cwd=self.data_dir.parent)
        return self.url(name)


def _server_os_user() -> str | None:
    """The OS user to run initdb/pg_ctl as: None for the current user, `postgres` when running as root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_OS_USER_UNDER_ROOT)
    except KeyError:
        raise RuntimeError(f"running as root, and PostgreSQL refuses to run as root, but there is no "
                           f"'{SERVER_OS_USER_UNDER_ROOT}' OS user to run it as (Debian's postgresql package creates "
                           f"it: apt-get install postgresql)") from None
    return SERVER_OS_USER_UNDER_ROOT


def _as_user(command: list[str], user: str | None) -> list[str]:
    if user is None:
        return command
    if runuser := shutil.which("runuser"):
        return [runuser, "-u", user, "--", *command]
    # su runs the command with the user's login shell, which may be nologin: name /bin/sh explicitly.
    return ["su", "-s", "/bin/sh", user, "-c", shlex.join(command)]


def _run(command: list[str], as_user: str | None, cwd: Path, timeout_s: float = 120) -> str:
    result = subprocess.run(_as_user(command, as_user), cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                            timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def _make_cluster_dir(base: Path, os_user: str | None) -> Path:
    """A fresh directory for the cluster (data dir, socket, log), owned by and reachable for the server's OS user.

    As the current user it goes under `base`. As root it goes in a fresh tempfile.mkdtemp() in the system temp
    directory instead: the `postgres` user must be able to traverse every parent directory, and pytest's
    tmp_path parents (/tmp/pytest-of-root, 0700) are not traversable for it; chmod-ing them would open the other
    tests' files to other users. The system temp directory (/tmp, 1777) is traversable by everyone; mkdtemp makes
    the new directory 0700, and chown gives it to `postgres`, so only postgres (and root) can read the cluster.
    A short path also keeps the Unix socket path under its 107-byte limit.
    """
    if os_user is None:
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="ragtune-pg-", dir=base))
    cluster = Path(tempfile.mkdtemp(prefix="ragtune-pg-"))
    entry = pwd.getpwnam(os_user)
    os.chown(cluster, entry.pw_uid, entry.pw_gid)
    check = subprocess.run(_as_user(["test", "-w", str(cluster), "-a", "-x", str(cluster)], os_user), check=False,
                           cwd="/", env=_clean_env())
    if check.returncode != 0:
        shutil.rmtree(cluster, ignore_errors=True)
        raise RuntimeError(f"the '{os_user}' OS user cannot use {cluster}: is every parent directory traversable "
                           f"for it (the system temp directory is {tempfile.gettempdir()}, set by TMPDIR)?")
    return cluster


@contextlib.contextmanager
def postgres_server(base: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL cluster on 127.0.0.1 and a free port, stopped and deleted on exit; its log is kept in `base`."""
    initdb = initdb_path()
    if initdb is None:
        raise RuntimeError(NOT_INSTALLED)
    bin_dir = initdb.resolve().parent  # /usr/local/bin/initdb may be a symlink; pg_ctl and createdb sit beside it
    os_user = _server_os_user()
    cluster = _make_cluster_dir(base, os_user)
    data, log = cluster / "data", cluster / "postgres.log"
    pg_ctl = str(bin_dir / "pg_ctl")
    started = False
    try:
        # --no-locale: the C locale exists everywhere (an unset or uninstalled LANG would make initdb fail).
        _run([str(initdb), "-D", str(data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-locale", "--no-sync"],
             os_user, cwd=cluster)
        for attempt in range(1, START_ATTEMPTS + 1):
            port = free_port()
            # pg_ctl passes -o through a shell: quote the path.
            options = (f"-h {HOST} -p {port} -k {shlex.quote(str(cluster))} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            try:
                started = True  # from here on, stop on exit: pg_ctl may fail after the postmaster started
                _run([pg_ctl, "-w", "-t", "60", "-D", str(data), "-o", options, "-l", str(log), "start"], os_user,
                     cwd=cluster)
                break
            except RuntimeError as error:
                log_text = log.read_text(errors="replace") if log.exists() else ""
                if attempt == START_ATTEMPTS or "could not bind" not in log_text:
                    raise RuntimeError(f"{error}\nserver log {log}:\n{log_text[-3000:]}") from None
        yield PostgresServer(host=HOST, port=port, user=USER, bin_dir=bin_dir, data_dir=data, log=log)
    finally:
        try:
            if started and (data / "postmaster.pid").exists():
                try:
                    _run([pg_ctl, "-w", "-t", "60", "-D", str(data), "-m", "fast", "stop"], os_user, cwd=cluster)
                except (RuntimeError, subprocess.TimeoutExpired):
                    _run([pg_ctl, "-w", "-t", "30", "-D", str(data), "-m", "immediate", "stop"], os_user, cwd=cluster)
        finally:
            if log.exists():  # keep the server's log next to the test's other files, for failures
                with contextlib.suppress(OSError):
                    base.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(log, base / "postgres.log")
            shutil.rmtree(cluster, ignore_errors=True)
