"""Which Prefect server a command line's run goes to, settled before the run starts.

In order: the one PREFECT_API_URL names (in the environment, or in a Prefect profile); a server kept on this machine
(`make server`) when it answers at once; else a temporary server for this run only, as Prefect itself would start
(the same command and settings), but started first thing, so its seconds of start-up pass while the command line
imports Prefect and checks its plan, instead of after.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextvars import ContextVar

from agentbox.errors import ConfigError
from agentbox.host import free_port, wait_until
from tasks.compat import temporary_server_command

LOCAL_SERVER_SETTING = "AGENTBOX_PREFECT_SERVER"  # where `make server` listens; empty: never look for it
LOCAL_SERVER = "http://127.0.0.1:4200/api"
STARTUP_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
# A first run on a fresh PREFECT_HOME migrates the temporary server's database: Prefect's 20 s is tight on a busy
# machine. A value the user set wins.
EPHEMERAL_STARTUP_SECONDS = 120
PORT_IN_USE = 3  # uvicorn's exit code when it cannot bind


def local_server() -> str | None:
    """The API of a Prefect server kept on this machine (`make server`), when no PREFECT_API_URL names one in the
    environment and it answers at once: runs then go there and show in its UI."""
    url = os.environ.get(LOCAL_SERVER_SETTING, LOCAL_SERVER).rstrip("/")
    if not url or os.environ.get("PREFECT_API_URL"):
        return None
    import httpx

    try:
        return url if httpx.get(f"{url}/health", timeout=0.5).status_code == 200 else None
    except httpx.HTTPError:
        return None


class TemporaryServer:
    """Prefect's temporary server (its API without the UI, on a free loopback port), started without importing
    Prefect; it stops when the process exits, after Prefect has sent its last logs and events."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self._spawn()
        atexit.register(self.stop)

    def _spawn(self) -> None:
        self.port = free_port()
        argv, env = temporary_server_command(self.port)
        self.process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self, timeout: float) -> str:
        """Its API URL once it answers; a ConfigError when it cannot start."""
        import httpx

        with httpx.Client(timeout=2) as http:

            def settled() -> bool:
                """It answers, or it exited for good (one that lost its port to another process starts again)."""
                code = self.process.poll()
                if code == PORT_IN_USE:
                    self._spawn()
                    return False
                if code is not None:
                    return True
                with contextlib.suppress(httpx.HTTPError):
                    return http.get(f"{self.api}/health").status_code == 200
                return False

            if wait_until(settled, timeout, interval=0.05) and self.process.poll() is None:
                return self.api
        code = self.process.poll()
        raise ConfigError(
            f"Prefect's temporary server did not start ({f'exit code {code}' if code is not None else 'no answer'} "
            f"within {timeout:.0f} s).",
            "Run `make server` and run again, or set PREFECT_API_URL to a Prefect server.",
        )

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


class ServerChoice:
    """The run's server, chosen in two steps. `ServerChoice()`, first thing, without Prefect: the environment's
    PREFECT_API_URL, else a kept server that answers, else a temporary server, started now. `settle()`, once Prefect's
    settings are imported: a Prefect profile or prefect.toml may name a server too, and wins. `entered()`, when the
    flow starts: says which in one line and points the flow run at it, waiting for a temporary one to answer."""

    def __init__(self) -> None:
        self.kept = local_server()
        allowed = os.environ.get("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true").lower() not in ("false", "0")
        wanted = not self.kept and not os.environ.get("PREFECT_API_URL") and allowed
        self.temporary = TemporaryServer() if wanted else None
        self.settled = False

    def settle(self) -> None:
        if self.settled:
            return
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

        if PREFECT_API_URL.value():  # a profile names a server: that one
            self.kept = None
        if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
            self.drop_temporary()
        self.settled = True

    def drop_temporary(self) -> None:
        """Stop the temporary server, if one was started: the run goes elsewhere (a profile's server, or a re-run of
        the command in a network namespace of its own, which starts its own)."""
        if self.temporary is not None:
            self.temporary.stop()
            self.temporary = None

    def ui(self) -> str | None:
        """Where a person can see the run and answer its approvals: a kept or configured server's UI; None on a
        temporary server (it has no UI, and goes with the process)."""
        from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

        self.settle()
        if self.kept:
            return self.kept.removesuffix("/api")
        return PREFECT_UI_URL.value() or PREFECT_API_URL.value() or None

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        from prefect.settings import PREFECT_API_URL, temporary_settings
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP_TIMEOUT

        self.settle()
        user_set = STARTUP_SETTING in os.environ
        startup = STARTUP_TIMEOUT.value() if user_set else EPHEMERAL_STARTUP_SECONDS
        # should Prefect start a temporary server of its own after all, it gets as long
        updates = {} if user_set else {STARTUP_TIMEOUT: EPHEMERAL_STARTUP_SECONDS}
        if self.kept:
            print(f"Prefect: the server at {self.kept.removesuffix('/api')} (its UI shows this run).", file=sys.stderr)
        elif self.temporary:
            print("Prefect: a temporary server, for this run only (`make server` keeps one, with its UI).",
                  file=sys.stderr)
        api = self.kept or (self.temporary.wait(startup) if self.temporary else None)
        if api:
            updates[PREFECT_API_URL] = api
        with temporary_settings(updates=updates):
            yield


server_choice: ContextVar[ServerChoice | None] = ContextVar("server_choice", default=None)
