"""Every private API of a dependency this project uses, in one place (tests/test_compat.py fails loudly when a
dependency changes one). Each is pinned by its package's version in pyproject.toml; each says why no public API
does. Only the standard library is imported at the top: the command lines import this before Prefect.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from uuid import UUID

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.states import State


# -- CPython -------------------------------------------------------------------------------------------------------


def exit_without_teardown(code: int) -> NoReturn:
    """End the process as Python's own exit does, in its order, without the interpreter's teardown of every module
    and object that follows (about half a second after a flow run, serving nothing once the process ends): first
    threading's shutdown (it joins non-daemon threads and runs the hooks registered with threading's
    `_register_atexit`, where Prefect drains its log and event workers), then the atexit handlers (a temporary
    server stopped). Neither step has a public API short of `sys.exit`, which tears everything down."""
    threading._shutdown()  # noqa: SLF001
    atexit._run_exitfuncs()  # noqa: SLF001
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# -- Prefect: its temporary server --------------------------------------------------------------------------------

TEMPORARY_SERVER_FACTORY = "prefect.server.api.server:create_app"
# What Prefect's own temporary server (prefect.server.api.server.SubprocessASGIServer) is started with: an API
# without the UI that knows it is temporary and final. The variables are Prefect's private ones (double underscore).
TEMPORARY_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def temporary_server_command(port: int) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of Prefect's temporary server on a loopback port, as Prefect starts it itself, found
    without importing Prefect (a command line starts it first thing, alongside its imports)."""
    prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
            TEMPORARY_SERVER_FACTORY, "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
            "--lifespan", "on"]
    return argv, {**os.environ, **TEMPORARY_SERVER_ENV}


# -- Prefect: the concurrency limit's lease ------------------------------------------------------------------------


async def acquire_concurrency_slot(name: str, lease_seconds: float, holder: ConcurrencyLeaseHolder | None) -> UUID:
    """One slot of the global concurrency limit `name`, waited for as Prefect's `concurrency()` waits and strict (a
    missing limit raises ConcurrencySlotAcquisitionError): the id of its lease. Prefect's public `concurrency()`
    keeps that id to itself, and the session labels its sandbox with it so that whoever kills the sandbox after a
    crash frees the slot (the client's public `release_concurrency_slots_with_lease`)."""
    from prefect.concurrency._asyncio import aacquire_concurrency_slots_with_lease

    granted = await aacquire_concurrency_slots_with_lease(
        names=[name], slots=1, lease_duration=lease_seconds, strict=True, holder=holder)
    return granted.lease_id


# -- Prefect: a flow run's state, proposed from inside it ----------------------------------------------------------


async def propose_flow_run_state(client: PrefectClient, state: State, flow_run_id: UUID) -> State:
    """Propose a state for a flow run as Prefect's engine does (`pause_flow_run` included): the state the server
    settled on (a Pause or Abort is raised when it refuses). Public alternatives fall short: `pause_flow_run` fails a
    run nobody answered in time, and the client's `set_flow_run_state` leaves the server's WAIT and REJECT answers to
    the caller."""
    from prefect.utilities.engine import propose_state

    return await propose_state(client, state, flow_run_id=flow_run_id)
