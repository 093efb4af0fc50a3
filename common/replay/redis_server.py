"""A private redis-server for one run: free loopback port, random password.

The embedded default needs no set-up beyond Debian's `redis-server` binary. The server
binds 127.0.0.1 only, is asked to die with its parent (PR_SET_PDEATHSIG), and is stopped
on context exit, at interpreter exit, or when the object is collected. By default it
lives in a temporary directory without persistence; with `data_dir` it keeps an
append-only file there, so a server started again on that folder (after a crash, a
kill -9, or in a resumed run) holds the replay it held. `for_replay` sizes its memory
cap to a replay's capacity.
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

from common.replay.client import ReplayConfig
from common.replay.safety import required_maxmemory

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


def free_loopback_port() -> int:
    """A loopback TCP port free right now (for servers we start ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM the server if our process dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _stop(process: subprocess.Popen, temporary_dir: str | None) -> None:
    """SIGTERM (Redis then flushes its AOF and exits), SIGKILL after 10 s; remove a temporary folder."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if temporary_dir:
        shutil.rmtree(temporary_dir, ignore_errors=True)


class EmbeddedRedis:
    """Start a password-protected redis-server on 127.0.0.1; use as a context manager.

    `maxmemory_bytes` (0 = unlimited) caps Redis itself with `noeviction`, so a full
    server refuses writes loudly instead of silently dropping keys; the replay's own
    FIFO capacity must stay below it (`for_replay` does that). `appendonly` turns on AOF
    persistence, fsynced every second: Redis writes the file before it replies, so a
    kill -9 of the server loses no acknowledged write (unless a slow disk made Redis
    postpone that write, by at most 2 s), a crash of the machine about the last second.
    It needs `data_dir`,
    the folder kept across restarts. `start()` again after `stop()` (or after the
    process died) restarts it on the same port with the same password. Start it from a
    thread that outlives it: Linux sends the parent-death signal when the starting
    thread ends, not the process.
    """

    def __init__(self, maxmemory_bytes: int = 0, appendonly: bool = False, data_dir: str | None = None,
                 startup_timeout_s: float = 10.0):
        if appendonly and not data_dir:
            raise ValueError("appendonly needs data_dir: a temporary folder would not outlive the server")
        self.binary = find_redis_server()
        self.maxmemory_bytes = maxmemory_bytes
        self.appendonly = appendonly
        self.data_dir = data_dir
        self.startup_timeout_s = startup_timeout_s
        self.password = secrets.token_urlsafe(24)
        self.port = 0
        self.workdir = ""
        self.process: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def for_replay(cls, replay: ReplayConfig) -> "EmbeddedRedis":
        """A server with room above the replay's capacity, persistent where it says so."""
        persist = replay.redis_persist_dir
        return cls(maxmemory_bytes=required_maxmemory(replay.capacity_bytes), appendonly=bool(persist),
                   data_dir=persist)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> "EmbeddedRedis":
        if self.running:
            raise RuntimeError(f"redis-server is already running on 127.0.0.1:{self.port}")
        self.stop()  # the leftovers of a server that died (its temporary folder)
        if self.data_dir:
            Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        self.workdir = self.data_dir or tempfile.mkdtemp(prefix="masklam-redis-")
        self.port = self.port or free_loopback_port()
        args = [self.binary, "-"]  # config from stdin keeps the password off the process list
        config = "\n".join([
            f"port {self.port}", "bind 127.0.0.1", "protected-mode yes", f'requirepass "{self.password}"',
            f'dir "{self.workdir}"', 'save ""', f"appendonly {'yes' if self.appendonly else 'no'}",
            "appendfsync everysec", f"maxmemory {self.maxmemory_bytes}", "maxmemory-policy noeviction",
            "loglevel warning", f'logfile "{self.workdir}/redis.log"', "daemonize no",
        ]) + "\n"
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.process.stdin.write(config.encode())
        self.process.stdin.close()
        self._finalizer = weakref.finalize(self, _stop, self.process, None if self.data_dir else self.workdir)
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
def redis_url_or_embedded(url: str | None, replay: ReplayConfig | None = None) -> Iterator[str]:
    """Yield the Redis URL to use: `url`, else $MASKLAM_REDIS_URL, else a private embedded
    server (sized and made persistent for `replay` when given; see `EmbeddedRedis.for_replay`)."""
    url = url or os.environ.get(REDIS_URL_ENV)
    if url:
        yield url
        return
    with EmbeddedRedis.for_replay(replay) if replay else EmbeddedRedis() as server:
        yield server.url
