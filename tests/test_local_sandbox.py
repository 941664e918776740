"""The local backend: real bubblewrap sandboxes, their isolation, commands, TTL and teardown."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from agentbox.errors import SandboxCommandTimeout, SandboxError
from agentbox.sandboxes.local import LocalSandboxes
from tests.support import PROJECT, SANDBOX_ROOT, sandbox_dirs

pytestmark = pytest.mark.usefixtures("no_leftovers")


@pytest.fixture
def backend(tmp_path):
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"idle": {"command": ["sleep", "600"]}}))
    return LocalSandboxes(SANDBOX_ROOT, catalog)


@pytest.fixture
def sandbox(backend):
    handle = asyncio.run(backend.create({"idle": {}}, {"FROM_CREATE": "create-value"}, 120, {"purpose": "test"}))
    yield handle
    asyncio.run(backend.kill(handle.id))


def run(backend, handle, command, **kwargs):
    return asyncio.run(backend.run(handle, command, timeout=kwargs.pop("timeout", 30), **kwargs))


def test_the_sandbox_is_isolated(backend, sandbox):
    def out(command: str) -> str:
        return run(backend, sandbox, command).stdout.strip()

    assert out("id -u") == "1000"  # not root inside, as on E2B
    assert out("hostname") == "agentbox"
    assert int(out("echo $$")) < 10  # its own pid namespace
    assert out("echo $HOME") == "/home/user"
    assert "Read-only file system" in out("touch /usr/forbidden 2>&1")
    assert set(out(f"ls -A {PROJECT}").split()) == {".venv", "node_modules", "agentbox"}  # .env and the rest hidden
    root_home = set(out("ls -A /root").split())  # only what the Python install needs, if it lives there
    assert root_home <= {".pyenv", ".local"}, root_home
    assert out(f"ls -A {SANDBOX_ROOT} | wc -l") == "0"  # other sandboxes' state (tokens, configs) is invisible
    assert out("cat /etc/shadow | wc -c") == "0"


def test_files_and_environment(backend, sandbox):
    asyncio.run(backend.write_file(sandbox, "/home/user/dir/note.txt", "héllo\n"))
    result = run(backend, sandbox, 'cat ~/dir/note.txt; echo "$FROM_CREATE $FROM_RUN"; echo oops >&2; exit 7',
                 envs={"FROM_RUN": "run-value"})
    assert result.exit_code == 7
    assert result.stdout == "héllo\ncreate-value run-value\n"
    assert result.stderr == "oops\n"
    with pytest.raises(SandboxError, match="Write under /home/user or /tmp"):
        asyncio.run(backend.write_file(sandbox, "/etc/passwd", "x"))
    with pytest.raises(SandboxError):
        asyncio.run(backend.write_file(sandbox, "/home/user/../../etc/passwd", "x"))


def test_tmp_is_private_to_each_sandbox(backend, sandbox):
    other = asyncio.run(backend.create({"idle": {}}, {}, 120, {"purpose": "other"}))
    try:
        run(backend, sandbox, "echo mine > /tmp/mark")
        assert run(backend, other, "test -e /tmp/mark").exit_code == 1
        assert run(backend, sandbox, "cat /tmp/mark").stdout == "mine\n"
    finally:
        asyncio.run(backend.kill(other.id))


def test_output_streams_while_the_command_runs(backend, sandbox):
    seen: list[str] = []

    async def scenario():
        def on_stdout(chunk: str) -> None:
            seen.append(chunk)
            if "waiting" in "".join(seen):
                (Path(SANDBOX_ROOT) / sandbox.id / "home" / "go").write_text("")

        # The command only finishes once the test has seen its first line: no streaming, no finish.
        return await backend.run(sandbox, "echo waiting; while [ ! -f ~/go ]; do sleep 0.05; done; echo done",
                                 timeout=20, on_stdout=on_stdout)

    result = asyncio.run(scenario())
    assert result.exit_code == 0 and result.stdout == "waiting\ndone\n"


def test_multibyte_output_survives_chunking(backend, sandbox):
    result = run(backend, sandbox, "python3 -c \"import sys; sys.stdout.write('日本語✓' * 50000)\"")
    assert result.stdout == "日本語✓" * 50000


def test_a_command_past_its_timeout_is_killed(backend, sandbox):
    started = time.monotonic()
    with pytest.raises(SandboxCommandTimeout, match="ran past its 0.5 s timeout"):
        run(backend, sandbox, "sleep 300", timeout=0.5)
    assert time.monotonic() - started < 10
    assert "sleep 300" not in run(backend, sandbox, "ps -eo args").stdout  # gone (this is a fresh pid namespace)


def test_list_by_metadata_and_idempotent_kill(backend, sandbox):
    other = asyncio.run(backend.create({"idle": {}}, {}, 120, {"purpose": "other", "run": "42"}))
    assert [s.id for s in asyncio.run(backend.list({"purpose": "test"}))] == [sandbox.id]
    assert [s.id for s in asyncio.run(backend.list({"run": "42"}))] == [other.id]
    assert {s.id for s in asyncio.run(backend.list())} == {sandbox.id, other.id}
    assert asyncio.run(backend.kill(other.id)) is True
    assert asyncio.run(backend.kill(other.id)) is False
    assert asyncio.run(backend.kill("local-000000000000")) is False
    with pytest.raises(SandboxError, match="not running"):
        run(backend, other, "true")


def test_the_ttl_kills_a_sandbox_nobody_asked_to_kill(backend):
    handle = asyncio.run(backend.create({"idle": {}}, {}, 2, {"purpose": "ttl"}))
    assert asyncio.run(backend.list({"purpose": "ttl"}))
    deadline = time.monotonic() + 20
    while handle.id in sandbox_dirs() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert handle.id not in sandbox_dirs()
    assert asyncio.run(backend.list({"purpose": "ttl"})) == []


def test_missing_bubblewrap_is_explained(backend, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError, match="bubblewrap .* not installed.*apt-get install bubblewrap"):
        asyncio.run(backend.create({"idle": {}}, {}, 60, {}))


def test_a_warm_spare_gateway_serves_the_next_sandbox_and_holds_no_secret():
    """LOCAL_WARM_GATEWAY: a kill leaves a warm spare (a gateway that imported and waits: no sandbox, nothing lists
    it, no secret in it); the next create claims it and its gateway serves that sandbox's own config behind that
    sandbox's token; a spare nobody claims stops when discarded and leaves nothing."""
    from agentbox.errors import GatewayAuthError
    from agentbox.gateway.probe import wait_until_ready
    from agentbox.sandboxes.local.spare import CLAIMABLE_MARKER

    backend = LocalSandboxes(SANDBOX_ROOT, warm_spare=True)  # the built-in catalog: GitHub's real MCP server
    expected = {"githubOfficial": ["create_issue"]}

    def config(token: str) -> dict:
        return {"githubOfficial": {"githubPersonalAccessToken": token}}

    def spare_states(deadline: float = 60) -> list[Path]:
        end = time.monotonic() + deadline
        while not (found := [m.parent for m in SANDBOX_ROOT.glob(f"local-*/{CLAIMABLE_MARKER}")]):
            assert time.monotonic() < end, "no warm spare was made"
            time.sleep(0.05)
        return found

    first = asyncio.run(backend.create(config("ghp-first-secret"), {}, 120, {}))
    asyncio.run(backend.kill(first.id))
    (spare,) = spare_states()
    assert asyncio.run(backend.list()) == []  # a spare is no sandbox: janitors and limits never see it
    gateway_pid = int((spare / "gateway.pid").read_text())
    assert not any(b"ghp-" in f.read_bytes() for f in spare.rglob("*") if f.is_file())
    assert b"ghp-" not in Path(f"/proc/{gateway_pid}/environ").read_bytes()

    second = asyncio.run(backend.create(config("ghp-second-secret"), {}, 120, {}))
    try:
        assert second.id == spare.name  # claimed, not made
        token = asyncio.run(backend.gateway_token(second))
        ready = asyncio.run(wait_until_ready(second.gateway_url, token, expected, deadline_seconds=60))
        assert "create_issue" in ready.tools
        with pytest.raises(GatewayAuthError):
            asyncio.run(wait_until_ready(second.gateway_url, "not-its-token", expected, deadline_seconds=10))
        assert run(backend, second, "echo inside").stdout == "inside\n"
        assert [s.id for s in asyncio.run(backend.list())] == [second.id]
    finally:
        asyncio.run(backend.kill(second.id))
    (fresh,) = spare_states()
    assert fresh != spare
    assert backend.discard_spares() == 1
    assert not SANDBOX_ROOT.exists() or sandbox_dirs() == []


def test_a_warm_spare_whose_state_is_removed_stops_by_itself():
    """A spare left behind when its root goes (a test's or a benchmark's temporary directory) does not wait out its
    10 minutes: it stops within seconds, gateway included."""
    import shutil

    from agentbox.host import process_alive
    from agentbox.sandboxes.local.spare import CLAIMABLE_MARKER

    backend = LocalSandboxes(SANDBOX_ROOT, warm_spare=True)
    backend.make_spare()
    end = time.monotonic() + 60
    while not (markers := list(SANDBOX_ROOT.glob(f"local-*/{CLAIMABLE_MARKER}"))):
        assert time.monotonic() < end, "no warm spare was made"
        time.sleep(0.05)
    state = markers[0].parent
    pids = [int((state / name).read_text()) for name in ("supervisor.pid", "gateway.pid")]
    shutil.rmtree(state)
    end = time.monotonic() + 10
    while any(process_alive(pid, "") for pid in pids):
        assert time.monotonic() < end, "the spare outlived its state"
        time.sleep(0.1)


def test_a_warm_spare_is_claimed_only_from_its_own_network():
    """A rehearsal re-run in a private network (a normal user's) has its own loopback: a spare made outside it could
    not be reached from inside, so it must not be claimed there, nor one made inside by a create outside."""
    import shutil
    import subprocess
    import sys

    from agentbox.sandboxes.local.spare import spare_fingerprint

    code = "from agentbox.sandboxes.local.spare import spare_fingerprint; print(spare_fingerprint())"
    ours = spare_fingerprint()
    inside = subprocess.run([shutil.which("unshare"), "--user", "--map-root-user", "--net", "--", sys.executable,
                             "-c", code], capture_output=True, text=True, timeout=60, cwd=PROJECT)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.strip() != ours
    same = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=PROJECT)
    assert same.stdout.strip() == ours  # the same place and code: claimable
