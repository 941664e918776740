"""Every private API of a dependency that tasks/compat.py uses, checked against the installed versions: an upgrade
that changes one fails here, by name, instead of somewhere in a run."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

from tests.support import PROJECT


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_exit_without_teardown_joins_threads_runs_exit_hooks_and_keeps_the_code(tmp_path):
    """CPython's threading._shutdown (threads joined, threading._register_atexit hooks, where Prefect drains its
    logs and events) and atexit._run_exitfuncs, in that order, then the exit code."""
    script = textwrap.dedent(f"""
        import atexit, threading, time
        from pathlib import Path
        from tasks.compat import exit_without_teardown
        out = Path({str(tmp_path)!r})
        def late_thread():
            time.sleep(0.3)
            (out / "thread").write_text("joined")
        threading.Thread(target=late_thread).start()
        threading._register_atexit(lambda: (out / "order").write_text("threading hook;"))
        atexit.register(lambda: (out / "order").write_text((out / "order").read_text() + "atexit"))
        exit_without_teardown(3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert (tmp_path / "thread").read_text() == "joined"
    assert (tmp_path / "order").read_text() == "threading hook;atexit"


def test_prefect_starts_its_temporary_server_as_compat_does():
    from prefect.server.api.server import SubprocessASGIServer

    from tasks.compat import TEMPORARY_SERVER_ENV, TEMPORARY_SERVER_FACTORY, temporary_server_command

    prefect_own = inspect.getsource(SubprocessASGIServer._run_uvicorn_command)  # noqa: SLF001 - what compat copies
    for name, value in TEMPORARY_SERVER_ENV.items():
        assert f'"{name}": "{value}"' in prefect_own
    assert f'"{TEMPORARY_SERVER_FACTORY}"' in prefect_own
    argv, env = temporary_server_command(4321)
    assert argv[argv.index("--factory") + 1] == TEMPORARY_SERVER_FACTORY and argv[argv.index("--port") + 1] == "4321"
    assert all(env[name] == value for name, value in TEMPORARY_SERVER_ENV.items())


def test_prefect_concurrency_lease_functions_take_what_compat_passes():
    from prefect.concurrency._asyncio import aacquire_concurrency_slots_with_lease

    assert {"names", "slots", "lease_duration", "strict", "holder"} <= set(
        parameters(aacquire_concurrency_slots_with_lease))
    assert inspect.iscoroutinefunction(aacquire_concurrency_slots_with_lease)
    from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse

    assert "lease_id" in ConcurrencyLimitWithLeaseResponse.model_fields


def test_prefect_propose_state_takes_what_compat_passes():
    from prefect.utilities.engine import propose_state

    assert parameters(propose_state)[:2] == ["client", "state"]
    assert "flow_run_id" in parameters(propose_state)
    assert inspect.iscoroutinefunction(propose_state)
