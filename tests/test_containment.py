"""Containment attacks against the sandbox itself, on every backend through the shared world: what a hijacked agent
that may run commands tries first. Every target lives on this machine; nothing here leaves it.

The host's filesystem is an allow-list: programs see the system directories, the runtime, the venv and node_modules,
and a sandbox-private home, /tmp and identity files; a file anywhere else on the host does not exist for them.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from agentbox.sandboxes import get_backend
from agentbox.settings import load_settings
from tests.worlds import CREDENTIALS

MCP = {"notion": {"internalIntegrationToken": CREDENTIALS["NOTION_INTEGRATION_TOKEN"]}}
HOST_ONLY = ["/srv", "/opt", "/mnt", "/media", "/boot"]  # host directories no program needs


@pytest.fixture
def sandbox(world):
    world.play([{"text": "unused"}])
    sandboxes = get_backend(load_settings(), world.backend)
    handle = asyncio.run(sandboxes.create(MCP, {}, 120, {"app": "containment"}))
    try:
        yield sandboxes, handle
    finally:
        asyncio.run(sandboxes.kill(handle.id))


def inside(sandbox, command: str) -> str:
    sandboxes, handle = sandbox
    result = asyncio.run(sandboxes.run(handle, command, timeout=30))
    return result.stdout + result.stderr


@pytest.fixture
def canaries():
    """Files in host directories a sandbox must not see (removed afterwards)."""
    secret, name = f"canary-{uuid.uuid4().hex}", f"agentbox-canary-{uuid.uuid4().hex}"
    paths = [Path("/var/tmp") / name, Path("/srv") / name]
    for path in paths:
        path.parent.mkdir(exist_ok=True)
        path.write_text(secret)
    try:
        yield secret, paths
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def test_a_file_in_a_host_directory_does_not_exist_inside(sandbox, canaries):
    secret, paths = canaries
    for path in paths:
        assert secret not in inside(sandbox, f"cat {path} 2>&1; ls {path.parent} 2>&1")
        assert "No such file or directory" in inside(sandbox, f"cat {path}")


def test_only_what_programs_need_is_visible(sandbox):
    top = set(inside(sandbox, "ls -A /").split())
    assert not top & {p.strip("/") for p in HOST_ONLY}, top
    for name in ("farm", "old_root", "container_info.json", "lost+found"):
        assert name not in top
    assert inside(sandbox, "ls -A /var").split() == ["tmp"]  # /var/tmp is the sandbox's own /tmp
    for host_file in ("/etc/shadow", "/etc/gshadow", "/etc/npmrc", "/etc/pip.conf", "/etc/ssh", "/etc/machine-id"):
        assert "No such file or directory" in inside(sandbox, f"ls {host_file}"), host_file


def test_the_password_file_names_only_the_sandbox_users(sandbox):
    users = {line.split(":")[0] for line in inside(sandbox, "cat /etc/passwd").splitlines() if line}
    assert users <= {"root", "user"}, users
    assert inside(sandbox, "id -un").strip() in {"root", "user"}


def test_the_allowed_path_still_works(sandbox):
    assert inside(sandbox, "python3 -c 'print(6 * 7)'").strip() == "42"
    assert inside(sandbox, "node -e 'console.log(6 * 7)'").strip() == "42"
    assert inside(sandbox, "claude --version").strip().startswith("2.")
    assert inside(sandbox, "echo ok > /home/user/f && cat /home/user/f && echo ok > /tmp/f && cat /tmp/f") == "ok\nok\n"
