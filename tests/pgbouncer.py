"""A real PgBouncer (Debian's package) of the tests' own, in front of the session's PostgreSQL.

:func:`shared_bouncers` starts one in transaction mode and one in session mode,
once per test run: the process that starts them puts their ports in the
environment, so the processes the tests start (a psycopg2 run of the suite,
servers) reach the same ones, and stops them when it exits. They listen on
free ports of 127.0.0.1 and lend at most :data:`SERVER_POOL_SIZE` server
sessions per database: few enough that every one of them is reached.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from django_pool.testservers import PostgresServer

#: The environment variable carrying the ports: ``transaction_port,session_port``.
PORTS_VARIABLE = "DJANGO_POOL_TEST_PGBOUNCER_PORTS"
#: Server sessions PgBouncer opens per database and user.
SERVER_POOL_SIZE = 2


@dataclass
class PgBouncer:
    """One PgBouncer: where it listens, and its admin console."""

    pool_mode: str
    port: int
    user: str
    process: subprocess.Popen[bytes] | None = None
    folder: Path | None = None

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run ``command`` on the admin console (database ``pgbouncer``)."""
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="pgbouncer", autocommit=True
        ) as conn:
            cursor = conn.execute(command, prepare=False)
            return cursor.fetchall() if cursor.description else []

    def queries(self, database: str) -> int:
        """Queries PgBouncer has forwarded to ``database``'s server sessions so far."""
        for row in self.admin("SHOW STATS"):
            if row[0] == database:
                return int(row[2])  # total_query_count
        return 0

    def disconnect(self, database: str) -> None:
        """Close every client and server connection PgBouncer has on ``database``."""
        with contextlib.suppress(psycopg.Error):  # not known to PgBouncer: nothing to close
            self.admin(f"KILL {database}")
        with contextlib.suppress(psycopg.Error):
            self.admin(f"RESUME {database}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def connect(host: str, port: int, user: str, password: str | None, dbname: str) -> Any:
    """A psycopg 3 connection in autocommit mode, never preparing statements.

    The tests' own clients, also in runs where the Django settings hide
    psycopg 3 from Django (``DJANGO_POOL_TEST_PG_DRIVER=psycopg2``): this
    module imported it before.
    """
    return psycopg.connect(
        host=host, port=port, user=user, password=password or None, dbname=dbname,
        autocommit=True, prepare_threshold=None,
    )  # fmt: skip


def unavailable_reason() -> str | None:
    """Why no PgBouncer can be started here, or None."""
    if shutil.which("pgbouncer") is None:
        return "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
    if os.geteuid() == 0 and _unprivileged_user() is None:
        return "running as root, and no user 'postgres' or 'nobody' to run PgBouncer as"
    return None


def shared_bouncers(pg: PostgresServer) -> dict[str, PgBouncer] | None:
    """The run's PgBouncers by pool mode; None if unavailable.

    Started at the first call in a pytest process only: a server or script
    the tests start (gunicorn, uvicorn, a management command) uses those of
    the environment, or none. It must not start its own: they would be its
    children, and tests count a server's children.
    """
    ports = os.environ.get(PORTS_VARIABLE)
    if ports:
        transaction_port, session_port = (int(port) for port in ports.split(","))
        return {
            "transaction": PgBouncer("transaction", transaction_port, pg.user),
            "session": PgBouncer("session", session_port, pg.user),
        }
    if "pytest" not in sys.modules or unavailable_reason() is not None:
        return None
    bouncers = {mode: start(pg, mode) for mode in ("transaction", "session")}
    os.environ[PORTS_VARIABLE] = f"{bouncers['transaction'].port},{bouncers['session'].port}"
    owner = os.getpid()

    def stop_all() -> None:
        if os.getpid() == owner:  # not in a forked child
            for bouncer in bouncers.values():
                bouncer.stop()

    atexit.register(stop_all)
    return bouncers


def start(pg: PostgresServer, pool_mode: str) -> PgBouncer:
    """Start a PgBouncer in ``pool_mode`` in front of ``pg``, ready for connections."""
    folder = Path(tempfile.mkdtemp(prefix="django_pool_pgbouncer_"))
    port = _free_port()
    password = f" password={pg.password}" if pg.password else ""
    (folder / "users.txt").write_text(f'"{pg.user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={pg.host} port={pg.port} user={pg.user}{password}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"admin_users = {pg.user}\npool_mode = {pool_mode}\n"
        f"default_pool_size = {SERVER_POOL_SIZE}\nmax_client_conn = 200\n"
        # A test that waits on a server session fails in seconds, not minutes.
        "query_wait_timeout = 30\n"
        "ignore_startup_parameters = extra_float_digits\nlogfile =\npidfile =\n"
    )
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
    log = (folder / "pgbouncer.log").open("wb")
    process = subprocess.Popen(
        ["pgbouncer", str(folder / "pgbouncer.ini")],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_drop_root_and_die_with_parent,
    )
    log.close()
    bouncer = PgBouncer(pool_mode, port, pg.user, process, folder)
    deadline = time.monotonic() + 10
    while True:
        try:
            bouncer.admin("SHOW VERSION")
            return bouncer
        except psycopg.Error:
            if process.poll() is not None or time.monotonic() > deadline:
                output = (folder / "pgbouncer.log").read_text(errors="replace")
                bouncer.stop()
                raise RuntimeError(f"PgBouncer did not start:\n{output}") from None
            time.sleep(0.05)


def _unprivileged_user() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    return None


def _drop_root_and_die_with_parent() -> None:
    # PgBouncer refuses to run as root. The parent-death signal is set after
    # the switch, which would clear it: PgBouncer ends with the test run.
    if os.geteuid() == 0:
        user = _unprivileged_user()
        assert user is not None
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
