"""`E2BStandIn`: E2B's control plane and envd on loopback, in a background thread, for the real `e2b` SDK.

Why a stand-in and not mocks: the E2B backend must be tested through the SDK it ships with (its retries, its error
mapping, its `mcp-gateway` dance), offline and free. Both servers run uvicorn on 127.0.0.1 (free ports) in one event
loop of their own; the sandboxes' processes run under bubblewrap (see `jail.py`) and all die when their sandbox is
killed, reaches its TTL, or when the stand-in stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import fcntl
import os
import random
import secrets
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from agentbox.sandboxes.local.bwrap import check_bubblewrap
from tests.e2b_standin.control import ControlPlane
from tests.e2b_standin.envd import envd_app
from tests.e2b_standin.jail import reap_now
from tests.e2b_standin.state import CommandRecord, Fault, RecordedRequest, SandboxRecord, State

API_KEY = "e2b_standin_test_key"
BASE_PREFIX = "e2b-standin-tests-"
OWNER_LOCKS = Path(tempfile.gettempdir()) / ".e2b-standin-owners"
MCP_URL_TEMPLATE = "http://{domain}:{port}/mcp"

_REQUIRED = object()
# kind -> parameters (with defaults) `inject` accepts; `count=None` fires until `clear_faults`. Every kind but
# list_pages also takes `rate` (the chance a matching request is hit, thrown with the stand-in's seed) and `session`
# (a text the sandbox's metadata must contain: one session of a batch).
FAULT_KINDS: dict[str, dict[str, Any]] = {
    # POST /v2/sandboxes answers `status`; Should-Retry: false by default so the SDK does not retry (None: no header);
    # `retry_after` seconds as Retry-After (a 429's)
    "create_error": {"status": _REQUIRED, "message": "injected by the E2B stand-in", "should_retry": False,
                     "retry_after": None, "count": 1},
    # POST /v2/sandboxes takes `delay_seconds` longer before it answers
    "slow_create": {"delay_seconds": _REQUIRED, "count": 1},
    # any control-plane call: `path` exact, or a prefix when it ends with "/" (DELETE /sandboxes/: a kill failing)
    "api_error": {"method": _REQUIRED, "path": _REQUIRED, "status": _REQUIRED,
                  "message": "injected by the E2B stand-in", "should_retry": False, "retry_after": None, "count": 1},
    # `mcp-gateway` exits `exit_code` with `message` on stderr, no gateway started
    "gateway_error": {"message": "mcp-gateway: injected failure", "exit_code": 1, "count": 1},
    # a command whose command line contains `match` runs a silent `sleep infinity` instead: it never ends by itself
    "hang": {"match": _REQUIRED, "count": None},
    # when a command containing `match` has started, its sandbox is killed server-side (state "vanished")
    "vanish": {"match": _REQUIRED, "count": 1},
    # `after_seconds` after a command containing `match` started, its output stream breaks off (UNAVAILABLE), once,
    # while the command and its sandbox live on (what it prints meanwhile is not sent to a later Connect)
    "cut": {"match": _REQUIRED, "after_seconds": 0.5, "count": 1},
    # GET /v2/sandboxes answers at most `page_size` items a page (until clear_faults)
    "list_pages": {"page_size": _REQUIRED},
}
TARGETING = {"rate": 1.0, "session": None}


def claim_base() -> tuple[Path, int]:
    """A fresh state directory, /tmp/e2b-standin-tests-<hex>, owned through a lock held while this stand-in lives
    (taken before the directory exists, so a directory whose lock is free belongs to nobody)."""
    OWNER_LOCKS.mkdir(mode=0o700, exist_ok=True)
    while True:
        name = f"{BASE_PREFIX}{secrets.token_hex(4)}"
        fd = os.open(OWNER_LOCKS / name, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        base = Path(tempfile.gettempdir()) / name
        try:
            base.mkdir(mode=0o700)
        except FileExistsError:
            os.close(fd)
            continue
        return base, fd


def release_base(base: Path, fd: int | None) -> None:
    with contextlib.suppress(FileNotFoundError):
        (OWNER_LOCKS / base.name).unlink()
    if fd is not None:
        os.close(fd)


def sweep_stale() -> None:
    """Clean up after stand-ins whose process died without stopping (SIGKILL, a crashed test run): PR_SET_PDEATHSIG
    takes the outer bwraps with them, but a sandbox killed while bwrap was still setting it up can leave bwrap's
    pid 1 running; kill what is left under their directories and remove them."""
    for base in Path(tempfile.gettempdir()).glob(f"{BASE_PREFIX}*"):
        OWNER_LOCKS.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(OWNER_LOCKS / base.name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its stand-in is alive
            continue
        reap_now(base)
        shutil.rmtree(base, ignore_errors=True)
        release_base(base, fd)


class E2BStandIn:
    """An offline E2B for the real SDK. Use as a context manager, or `start()` / `stop()`.

    Point the SDK at it with `.env` (e.g. `monkeypatch.setenv` each item); read its books with `.sandboxes()`,
    `.alive()`, `.requests`, `.commands`; break it with `.inject(kind, **params)` (see `FAULT_KINDS`), `.vanish(id)`.
    """

    API_KEY = API_KEY
    MCP_URL_TEMPLATE = MCP_URL_TEMPLATE

    def __init__(self, catalog_file: str | None = None, page_size: int = 2, seed: int = 0) -> None:
        self.catalog_file = str(catalog_file) if catalog_file else None
        self.seed = seed
        self.page_size = page_size
        self._state: State | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ports: tuple[int, int] | None = None
        self._error: BaseException | None = None
        self._base: Path | None = None
        self._owner_lock: int | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> E2BStandIn:
        if self._thread is not None:
            raise RuntimeError("the E2B stand-in is already started")
        sweep_stale()
        self._base, self._owner_lock = claim_base()
        self._state = State(API_KEY, self._base, self.page_size, self.catalog_file)
        sockets = []
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        self._ports = (sockets[0].getsockname()[1], sockets[1].getsockname()[1])
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sockets, ready), name="e2b-standin", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.02):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                break
        if not ready.is_set() or self._error is not None:
            error = self._error
            self.stop()
            raise RuntimeError(f"the E2B stand-in did not start: {error!r}") from error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Kill every sandbox still running (state "stopped"), stop both servers, remove the state directory."""
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the E2B stand-in did not stop in time")
        self._thread = None
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            release_base(self._base, self._owner_lock)
            self._owner_lock = None

    def __enter__(self) -> E2BStandIn:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _run(self, sockets: list[socket.socket], ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(sockets, ready))
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
        finally:
            for sock in sockets:
                sock.close()

    async def _serve(self, sockets: list[socket.socket], ready: threading.Event) -> None:
        state = self._state
        await check_bubblewrap()  # SandboxError saying how to fix it, if bwrap cannot run
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        servers = [
            uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                          timeout_graceful_shutdown=2))
            for app in (ControlPlane(state).app(), envd_app(state))
        ]
        tasks = [asyncio.create_task(s.serve(sockets=[sock])) for s, sock in zip(servers, sockets)]
        try:
            while not all(s.started for s in servers):
                if any(t.done() for t in tasks):
                    await asyncio.gather(*tasks)
                    raise RuntimeError("a server exited at start")
                await asyncio.sleep(0.01)
            ready.set()
            await self._stopping.wait()
        finally:
            await state.kill_all("stopped")
            for server in servers:
                server.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)

    def _call(self, fn, *args):
        """Run `fn(*args)` (a plain or async function) on the stand-in's loop and return its result; directly once
        the stand-in has stopped (the books stay readable)."""
        if self._thread is None or self._loop is None or not self._thread.is_alive():
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result.close()
                raise RuntimeError("the E2B stand-in is not running")
            return result

        async def call():
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(60)

    # -- pointing the SDK at it ---------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._require_ports()[0]}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self._require_ports()[1]}"

    @property
    def env(self) -> dict[str, str]:
        """What the real SDK (and the product) need to use the stand-in. E2B_MCP_URL is a template for
        `sandbox_id`, `domain` (`sbx.sandbox_domain`: the sandbox's own 127.77.x.y) and `port` (50005)."""
        return {
            "E2B_API_URL": self.api_url,
            "E2B_SANDBOX_URL": self.sandbox_url,
            "E2B_API_KEY": API_KEY,
            "E2B_DEBUG": "false",
            "E2B_MCP_URL": MCP_URL_TEMPLATE,
        }

    def _require_ports(self) -> tuple[int, int]:
        if self._ports is None:
            raise RuntimeError("start the E2B stand-in first")
        return self._ports

    # -- the books ----------------------------------------------------------------------------------------------

    def sandboxes(self) -> dict[str, SandboxRecord]:
        """Every sandbox ever created, alive or not, by id (snapshots)."""
        return self._call(lambda: {sid: s.record() for sid, s in self._state.sandboxes.items()})

    def alive(self) -> dict[str, SandboxRecord]:
        """The sandboxes still running."""
        return {sid: rec for sid, rec in self.sandboxes().items() if rec.alive}

    @property
    def requests(self) -> list[RecordedRequest]:
        """Control-plane requests in the order they were answered (x-api-key redacted)."""
        return self._call(lambda: list(self._state.requests))

    @property
    def commands(self) -> list[CommandRecord]:
        """Processes started over envd, `mcp-gateway` included."""
        return self._call(lambda: list(self._state.commands))

    def gateway_log(self, sandbox_id: str) -> str:
        """What the sandbox's gateway printed (kept after the sandbox is gone), for failure messages."""
        return self._call(lambda: self._state.sandboxes[sandbox_id].gateway_log())

    def pin(self, names: dict[str, str]) -> None:
        """Make the sandboxes' egress resolve these names to these addresses (a test's stand-ins for hosts)."""
        self._call(lambda: self._state.resolve.update(names))

    def egress_log(self, sandbox_id: str) -> list[dict]:
        """What the sandbox's egress proxy decided, one dict per connection (kept after the sandbox is gone)."""
        path = self._state.egress_log_path(sandbox_id)
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def processes(self) -> dict[int, str]:
        """Pid -> command line of every live process of the stand-in's sandboxes (gateways and commands)."""
        return self._state.jail.processes()

    def wait_for_no_processes(self, timeout: float = 10.0) -> dict[int, str]:
        """The stand-in's processes still alive after `timeout`; empty is the good answer."""
        deadline = time.monotonic() + timeout
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left

    # -- breaking it ----------------------------------------------------------------------------------------------

    def inject(self, kind: str, **params: Any) -> Fault:
        """Arm a fault (see FAULT_KINDS for kinds and parameters); the returned Fault counts its `hits`."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        spec = FAULT_KINDS[kind] | (TARGETING if kind != "list_pages" else {})
        unknown = set(params) - set(spec)
        if unknown:
            raise ValueError(f"fault {kind!r} takes {', '.join(spec)}; not {', '.join(sorted(unknown))}")
        merged = {**spec, **params}
        missing = [name for name, value in merged.items() if value is _REQUIRED]
        if missing:
            raise ValueError(f"fault {kind!r} needs {', '.join(missing)}")
        if kind in ("create_error", "slow_create"):
            merged.update(method="POST", path="/v2/sandboxes")
        count, rate, session = merged.pop("count", None), merged.pop("rate", 1.0), merged.pop("session", None)
        fault = Fault(kind=kind, params=merged, count=count, rate=rate, session=session,
                      rng=random.Random(f"{self.seed}/{kind}/{len(self._state.faults)}"))

        def arm() -> Fault:
            if kind == "list_pages":
                self._state.page_size = int(merged["page_size"])
                fault.count, fault.hits = None, 0
            else:
                self._state.faults.append(fault)
            return fault

        return self._call(arm)

    def clear_faults(self) -> None:
        """Disarm every fault and restore the page size given at construction."""

        def clear() -> None:
            self._state.faults.clear()
            self._state.page_size = self._state.default_page_size

        self._call(clear)

    def use_catalog(self, catalog_file: str | None) -> None:
        """The catalog the sandboxes' `mcp-gateway` starts its servers from, for sandboxes created from now on (None:
        the one given at construction)."""
        self._call(lambda: setattr(self._state, "catalog_file", str(catalog_file) if catalog_file else self.catalog_file))

    def vanish(self, sandbox_id: str) -> bool:
        """Kill a sandbox server-side now, as if E2B lost it (state "vanished"); False if it was not running."""

        async def kill() -> bool:
            sbx = self._state.live(sandbox_id)
            return await self._state.kill(sbx, "vanished") if sbx else False

        return self._call(kill)

    def kill_all(self) -> int:
        """Kill every running sandbox (state "killed"); how many there were. For test cleanup."""
        return self._call(lambda: self._state.kill_all("killed"))
