"""A real, throwaway PostgreSQL server for the distributed-search tests.

Debian's server binaries (``initdb``, ``pg_ctl``) create a cluster in a temporary
directory and start it on a free port of 127.0.0.1, with ``trust`` authentication (it
listens on loopback only and lives for the test session). PostgreSQL refuses to run as
root, so as root the binaries run as the ``postgres`` user (created by Debian's package;
created here with ``useradd`` when missing). ``scripts/install-test-deps.sh`` installs the
``postgresql`` package where it is missing. When no server can be started, :func:`start`
raises :class:`Unavailable` with the reason, and the tests skip with it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass


class Unavailable(Exception):
    """No PostgreSQL server can be started here; the message says why."""


def find_bin(name: str) -> str | None:
    """``name`` on PATH, else in the newest ``/usr/lib/postgresql/*/bin``."""
    found = shutil.which(name)
    if found:
        return found
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: [int(x) for x in d.split("/")[4].split(".") if x.isdigit()])
    for d in reversed(dirs):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    root: str
    port: int
    user: str
    pg_ctl: str
    run_as: list[str]

    def url(self, database: str = "automl") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(self.run_as + [self.pg_ctl, "-D", os.path.join(self.root, "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        made = subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], capture_output=True, text=True)
        if made.returncode != 0:
            raise Unavailable(f"running as root and no 'postgres' user to run PostgreSQL as: {made.stderr.strip()}")
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--"]
    raise Unavailable("running as root and 'runuser' is missing: cannot run PostgreSQL as the postgres user")


def start(timeout: float = 60.0) -> Server:
    """Start a server; raises :class:`Unavailable` with the reason when it cannot."""
    try:
        import psycopg2  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"psycopg2 is not installed ({exc}); pip install 'automl-vision[postgres]'") from exc
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise Unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin; "
                          "install Debian's 'postgresql' package (scripts/install-test-deps.sh does)")
    run_as = _run_as()
    root = tempfile.mkdtemp(prefix="automl-vision-pg-")
    if run_as:
        shutil.chown(root, "postgres")
    data = os.path.join(root, "data")
    user = "postgres" if run_as else (os.environ.get("USER") or "postgres")
    init = subprocess.run(run_as + [initdb, "-D", data, "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
                          capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise Unavailable(f"initdb failed: {init.stderr.strip()[-500:]}")
    port = free_port()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off -c max_connections=100"
    started = subprocess.run(run_as + [pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(root, "log"), "-w", "-t", str(int(timeout)), "start"],
                             capture_output=True, text=True, timeout=timeout + 30)
    server = Server(root, port, user, pg_ctl, run_as)
    if started.returncode != 0:
        log = ""
        try:
            with open(os.path.join(root, "log")) as fh:
                log = fh.read()[-500:]
        except OSError:
            pass
        server.stop()
        raise Unavailable(f"pg_ctl start failed: {started.stderr.strip()[-300:]} {log}")
    deadline = time.time() + timeout
    while True:
        try:
            import psycopg2

            psycopg2.connect(host="127.0.0.1", port=port, user=user, dbname="postgres").close()
            return server
        except Exception as exc:
            if time.time() > deadline:
                server.stop()
                raise Unavailable(f"PostgreSQL started but does not accept connections: {exc}") from exc
            time.sleep(0.3)
