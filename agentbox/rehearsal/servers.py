"""The stand-ins as real HTTP servers on loopback, served from a thread of this process.

Their clients (notion-mcp-server, github-mcp-server, the `claude` binary) are separate processes that only speak
HTTP, so an in-process ASGI test client would not do: the stand-ins need real sockets.
"""

from __future__ import annotations

import errno
import random
import socket
import threading
import time
from typing import Any

import uvicorn


class BackgroundServer:
    """An ASGI app served by uvicorn in a daemon thread.

    The socket is bound here, before uvicorn starts, so that `port=0` gives the real port at once and a bind error
    (port 80 taken, say) is raised in the caller's thread instead of ending up in a log line.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        """Start serving; returns once uvicorn is up, so callers can connect straight away."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        self._socket = sock

        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # Hanging responses (timeout tests) must not block stop() forever.
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"rehearsal-server-{self.host}:{self.port}", daemon=True)
        self._thread.start()

        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._cleanup_socket()
                raise RuntimeError(f"server on {self.url} failed to start") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server on {self.url} did not start within {timeout}s")
            time.sleep(0.005)
        return self

    def _run(self) -> None:
        assert self._server is not None and self._socket is not None
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc

    def request_stop(self) -> None:
        """Ask uvicorn to exit, without waiting: servers asked together stop together (each takes 0.2 s)."""
        if self._server is not None:
            self._server.should_exit = True

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and wait for its thread; safe to call twice, or after a failed start."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
        self._cleanup_socket()
        self._thread = None
        self._server = None

    def _cleanup_socket(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            except OSError:
                pass
            self._socket = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_loopback_host_for_port80() -> str:
    """A 127.0.0.X whose port 80 is free; `PermissionError` when this process may not bind port 80 at all.

    github-mcp-server's `--gh-host` drops any port from the URL, so the GitHub stand-in must listen on port 80; a
    loopback address of its own, picked from a random start, keeps parallel runs apart.
    """
    candidates = list(range(2, 255))
    start = random.randrange(len(candidates))
    candidates = candidates[start:] + candidates[:start]
    last_error: OSError | None = None
    for last_octet in candidates:
        host = f"127.0.0.{last_octet}"
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, 80))
        except OSError as exc:
            last_error = exc
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise PermissionError("binding port 80 needs root or CAP_NET_BIND_SERVICE") from exc
            continue
        finally:
            probe.close()
        return host
    raise OSError("no 127.0.0.X address with a free port 80") from last_error
