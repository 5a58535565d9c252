"""Real services for the fault tests, each an instance of the test's own: a Redis server, a
throwaway PostgreSQL cluster, and the app's worker and API as subprocesses.

Everything here is started by the test and stopped by the test, by PID (PostgreSQL through
`pg_ctl` on its own data directory); nothing touches the shared servers. Ports are free ones
of 127.0.0.1 (bind to port 0), and every wait is bounded in time.
"""

from __future__ import annotations

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TypeVar

import redis

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
T = TypeVar("T")

# Settings the app reads from the environment; a subprocess gets only those a test gives it.
_APP_PREFIXES = (
    "DATABASE_",
    "CELERY_",
    "OPENAI_",
    "GEMINI_",
    "ANTHROPIC_",
    "LOCAL_MODEL_",
    "WORKER_",
    "RUNNER_",
    "LEASE_",
    "SWEEP_",
    "REDISPATCH_",
    "MAX_",
    "SHUTDOWN_",
    "PROVIDER_",
    "RETRY_",
    "CIRCUIT_",
    "MODEL_CATALOGUE",
    "ENCRYPTION_",
)
_APP_NAMES = {"ENVIRONMENT", "HOST", "PORT", "WORKERS", "LOG_LEVEL"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05
) -> T:
    """Call `probe` until it returns something other than None (or False); bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Process:
    """A subprocess of ours, its output in a log file, stopped by its PID."""

    def __init__(
        self, name: str, argv: list[str], *, log: Path, env: Mapping[str, str], cwd: Path
    ) -> None:
        self.name = name
        self.log = log
        self._log_file: IO[bytes] = log.open("ab")
        self.popen = subprocess.Popen(
            argv, env=dict(env), cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, then reap it."""
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, and SIGKILL if it has not exited within `timeout`."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()
        return self.popen.returncode

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


class RedisServer:
    """`redis-server` on a port of its own, without persistence: a restart empties it."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def start(self) -> RedisServer:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
        self.process = Process(
            f"redis-{self.port}",
            argv,
            log=self.workdir / f"redis-{self.port}.log",
            env=os.environ,
            cwd=self.workdir,
        )
        wait_for(self._pong, timeout=10, what=f"redis on {self.port} answering")
        return self

    def _pong(self) -> bool:
        if self.process is not None and not self.process.alive():
            raise RuntimeError(f"redis-server exited:\n{self.process.tail()}")
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=5)
            self.process = None
        wait_for(lambda: not _port_open(self.port), timeout=5, what="redis port closed")


class PostgresCluster:
    """A throwaway PostgreSQL 15 cluster: `initdb` as the postgres user in a temporary directory,
    `pg_ctl` to start and stop it on a port of its own, the directory removed at `destroy`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pm-faults-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.running = False
        # PostgreSQL refuses to run as root: as root, the cluster belongs to `postgres`.
        self._as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *argv: str, timeout: float = 60) -> None:
        """Run a PostgreSQL tool as the cluster's owner."""
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_root else []
        result = subprocess.run(
            [*prefix, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}):\n{result.stderr}")

    def init(self) -> PostgresCluster:
        self.socket_dir.mkdir()
        if self._as_root:
            owner = pwd.getpwnam("postgres")
            for path in (self.root, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "--no-instructions",
        )
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "30",
            "start",
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """`fast` rolls back open transactions and disconnects every client, as a restart does."""
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop"
        )
        self.running = False

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        if self.running or (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class Services:
    """What one test started, for its fixture to stop in reverse order whatever happens.
    The processes' logs are in `workdir`, removed at `close` unless PM_FAULTS_KEEP_LOGS is set
    (for debugging: the path is printed)."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="pm-faults-"))
        self.keep_logs = bool(os.environ.get("PM_FAULTS_KEEP_LOGS"))
        self._processes: list[Process] = []
        self._redis: list[RedisServer] = []
        self._clusters: list[PostgresCluster] = []
        self._count = 0

    def redis(self) -> RedisServer:
        server = RedisServer(self.workdir)
        self._redis.append(server)
        return server.start()

    def postgres(self) -> PostgresCluster:
        cluster = PostgresCluster()
        self._clusters.append(cluster)
        cluster.init().start()
        return cluster

    def app(self, command: str, env: Mapping[str, str]) -> Process:
        """`python -m app <command>` with exactly the app settings in `env`."""
        self._count += 1
        base = {
            k: v
            for k, v in os.environ.items()
            if k not in _APP_NAMES and not k.startswith(_APP_PREFIXES)
        }
        base["PYTHONPATH"] = str(ROOT)
        base["PYTHONUNBUFFERED"] = "1"
        name = f"{command}-{self._count}"
        # cwd is a directory of our own, so no `.env` file of the checkout leaks in.
        process = Process(
            name,
            [sys.executable, "-m", "app", command],
            log=self.workdir / f"{name}.log",
            env=base | dict(env),
            cwd=self.workdir,
        )
        self._processes.append(process)
        return process

    def worker(self, env: Mapping[str, str]) -> Process:
        """A worker; with no /healthz server unless `env` gives it a WORKER_HEALTH_PORT (the
        default port, 8001, would be taken by the first of several workers)."""
        return self.app("worker", {"WORKER_HEALTH_PORT": ""} | dict(env))

    def logs(self) -> str:
        """The tail of every process's output, for a failing test's report."""
        parts = [f"--- {p.name} (pid {p.pid}) ---\n{p.tail(30)}" for p in self._processes]
        for cluster in self._clusters:
            tail = "\n".join(cluster.log().splitlines()[-15:])
            parts.append(f"--- postgres on {cluster.port} ---\n{tail}")
        return "\n".join(parts)

    def close(self) -> None:
        for process in self._processes:  # all at once, then wait for each
            with contextlib.suppress(Exception):
                process.signal(signal.SIGTERM)
        for process in reversed(self._processes):
            with contextlib.suppress(Exception):
                process.stop(timeout=5)
        for server in reversed(self._redis):
            with contextlib.suppress(Exception):
                server.stop()
        for cluster in reversed(self._clusters):
            cluster.destroy()
        if self.keep_logs:
            print(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def worker_ready(process: Process, *, timeout: float = 30) -> float:
    """Wait for the Celery worker's `ready.` line; returns seconds since it was started."""

    def ready() -> bool:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited:\n{process.tail()}")
        return " ready." in process.output()

    wait_for(ready, timeout=timeout, what=f"{process.name} ready", interval=0.1)
    return time.monotonic() - process.started


def api_ready(process: Process, port: int, *, timeout: float = 30) -> float:
    def ready() -> bool:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited:\n{process.tail()}")
        return _port_open(port)

    wait_for(ready, timeout=timeout, what=f"{process.name} listening", interval=0.1)
    return time.monotonic() - process.started
