"""A private redis-server for one run: free loopback port, random password, no persistence.

The embedded default needs no set-up beyond Debian's `redis-server` binary. The server
lives in a temporary directory, is asked to die with its parent (PR_SET_PDEATHSIG), and
is stopped on context exit, at interpreter exit, or when the object is collected.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import redis

_SEARCH_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin")


class RedisServerNotFound(RuntimeError):
    """No redis-server binary: says how to install one."""


def find_redis_server() -> str:
    """Path of a redis-server binary (REDIS_SERVER env var, PATH, then Debian's locations)."""
    candidates = [os.environ.get("REDIS_SERVER"), shutil.which("redis-server")]
    candidates += [str(Path(d) / "redis-server") for d in _SEARCH_DIRS]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise RedisServerNotFound(
        "redis-server was not found on PATH or in /usr/bin, /usr/sbin, /usr/local/bin. "
        "Install it with `sudo apt-get install redis-server` (Debian/Ubuntu; scripts/setup.sh does this), "
        "or set REDIS_SERVER=/path/to/redis-server, or pass --redis-url to use a running server.")


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM the server if our process dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _stop(process: subprocess.Popen, workdir: str) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    shutil.rmtree(workdir, ignore_errors=True)


class EmbeddedRedis:
    """Start a password-protected redis-server on 127.0.0.1; use as a context manager.

    `maxmemory_bytes` (0 = unlimited) caps Redis itself with `noeviction`, so a full
    server refuses writes loudly instead of silently dropping keys; the replay's own
    FIFO capacity must stay below it. `appendonly` turns on AOF persistence.
    """

    def __init__(self, maxmemory_bytes: int = 0, appendonly: bool = False, startup_timeout_s: float = 10.0):
        self.binary = find_redis_server()
        self.maxmemory_bytes = maxmemory_bytes
        self.appendonly = appendonly
        self.startup_timeout_s = startup_timeout_s
        self.password = secrets.token_urlsafe(24)
        self.port = 0
        self.workdir = ""
        self.process: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> "EmbeddedRedis":
        self.workdir = tempfile.mkdtemp(prefix="masklam-redis-")
        self.port = _free_loopback_port()
        args = [self.binary, "-"]  # config from stdin keeps the password off the process list
        config = "\n".join([
            f"port {self.port}", "bind 127.0.0.1", "protected-mode yes", f'requirepass "{self.password}"',
            f"dir {self.workdir}", 'save ""', f"appendonly {'yes' if self.appendonly else 'no'}",
            f"maxmemory {self.maxmemory_bytes}", "maxmemory-policy noeviction", "loglevel warning",
            f"logfile {self.workdir}/redis.log", "daemonize no",
        ]) + "\n"
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.process.stdin.write(config.encode())
        self.process.stdin.close()
        self._finalizer = weakref.finalize(self, _stop, self.process, self.workdir)
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = Path(self.workdir, "redis.log")
                detail = log.read_text()[-2000:] if log.exists() else "(no log)"
                raise RuntimeError(f"redis-server exited at start (code {self.process.returncode}): {detail}")
            try:
                if client.ping():
                    client.close()
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on 127.0.0.1:{self.port} within {self.startup_timeout_s}s")

    def stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


REDIS_URL_ENV = "MASKLAM_REDIS_URL"


@contextlib.contextmanager
def redis_url_or_embedded(url: str | None, **embedded_options) -> Iterator[str]:
    """Yield the Redis URL to use: `url`, else $MASKLAM_REDIS_URL, else a private embedded server."""
    url = url or os.environ.get(REDIS_URL_ENV)
    if url:
        yield url
        return
    with EmbeddedRedis(**embedded_options) as server:
        yield server.url
