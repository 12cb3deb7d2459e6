"""A throwaway local ``redis-server`` for tests, examples and docs snippets.

``LocalRedisServer`` starts the ``redis-server`` program (the Debian/Ubuntu package
``redis-server``; ``make install`` installs it where it can) on a random free port of
``127.0.0.1``, without persistence (``--save "" --appendonly no``), and kills it on exit::

    from async_batch_llm.testing.redis_server import LocalRedisServer

    with LocalRedisServer() as server:
        backend = RedisQuotaBackend(server.url)
        ...

:func:`redis_server_path` tells whether the program is installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from types import TracebackType

__all__ = ["INSTALL_HINT", "LocalRedisServer", "redis_server_path"]

INSTALL_HINT = (
    "redis-server is not installed: run `make install` as root (it installs the Debian "
    "package), or `apt-get install redis-server`"
)


def redis_server_path() -> str | None:
    """The ``redis-server`` executable (``$REDIS_SERVER``, then ``PATH``, then the Debian
    location), or ``None`` when it is not installed."""
    candidates = [os.environ.get("REDIS_SERVER"), shutil.which("redis-server")]
    candidates.append("/usr/bin/redis-server")
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalRedisServer:
    """One ``redis-server`` process on ``127.0.0.1`` (a random free port), no persistence.

    Args:
        password: require this password (``--requirepass``); ``None`` for none.
        startup_timeout: seconds to wait for the server to accept connections.

    Raises:
        RuntimeError: from :meth:`start` when ``redis-server`` is not installed or does not
            come up in time.
    """

    def __init__(self, *, password: str | None = None, startup_timeout: float = 10.0) -> None:
        self.password = password
        self.port = _free_port()
        self._timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (with the password, when one is required)."""
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> LocalRedisServer:
        """Start the server (on the same port as before, after :meth:`stop`) and wait for it."""
        executable = redis_server_path()
        if executable is None:
            raise RuntimeError(INSTALL_HINT)
        args = [
            executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.password is not None:
            args += ["--requirepass", self.password]
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self._timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._process.returncode} (port {self.port})"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server did not accept connections on port {self.port}"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server (its data is gone: no persistence) and wait for it to exit."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> None:
        """Kill the server and start a fresh one on the same port (every key is lost)."""
        self.stop()
        self.start()

    def __enter__(self) -> LocalRedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalRedisServer(port={self.port}, {state})"
