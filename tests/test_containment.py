"""Containment attacks against the sandbox itself, on every backend through the shared world: what a hijacked agent
that may run commands tries first. Every target lives on this machine; nothing here leaves it.

The host's filesystem is an allow-list: programs see the system directories, the runtime, the venv and node_modules,
and a sandbox-private home, /tmp and identity files; a file anywhere else on the host does not exist for them. The
network is the egress proxy's: the model API, the gateway and the policy's hosts, nothing else; no secret is inside.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prefect.settings import PREFECT_API_URL

from agentbox.sandboxes import get_backend
from agentbox.sandboxes.base import Network
from agentbox.settings import load_settings
from tests.support import PROJECT, SANDBOX_ROOT
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


# -- the network: Claude and its commands reach only what the policy allows, through the egress proxy ----------


@pytest.fixture
def listeners():
    """Loopback HTTP listeners standing for the host's services and for hosts on the internet: each answers GET
    with its own canary. (name -> (port, canary)); stopped afterwards."""
    servers, found = [], {}
    for name in ("service", "allowed", "forbidden"):
        canary = f"canary-{name}-{uuid.uuid4().hex}"

        class Answer(http.server.BaseHTTPRequestHandler):
            body = canary.encode()

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(self.body)))
                self.end_headers()
                self.wfile.write(self.body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        found[name] = (server.server_address[1], canary)
    try:
        yield found
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def netsandbox(world, network: Network):
    """A sandbox whose network is `network` (names pinned as its `resolve` says, on either backend)."""
    world.play([{"text": "unused"}])
    if world.e2b:
        world.e2b.pin(network.resolve)
    sandboxes = get_backend(load_settings(), world.backend)
    return sandboxes, asyncio.run(sandboxes.create(MCP, {}, 120, {"app": "containment"}, network=network))


def blocked(world, sandbox_id: str) -> list[tuple[str, int]]:
    return [(e["host"], e["port"]) for e in world.egress_log(sandbox_id) if e["decision"] == "blocked"]


def test_the_hosts_loopback_services_are_out_of_reach(world, listeners, prefect_api):
    """The host's loopback services (a canary service, the test's Prefect API): through the proxy they are
    refused with the policy's message and logged; directly, the sandbox's network has no route to them."""
    port, canary = listeners["service"]
    prefect = urlsplit(PREFECT_API_URL.value())
    assert prefect.hostname in ("127.0.0.1", "localhost"), prefect  # the test's own API server
    sandbox = netsandbox(world, Network())
    try:
        for url in (f"http://127.0.0.1:{port}/", f"http://localhost:{port}/", f"{prefect.scheme}://{prefect.netloc}/api/health"):
            through_proxy = inside(sandbox, f"curl -s -m 10 {url}")
            assert canary not in through_proxy and "Blocked by policy: do not retry." in through_proxy, url
            direct = inside(sandbox, f"curl -s -m 5 --noproxy '*' {url}; echo exit=$?")
            assert canary not in direct and "exit=7" in direct, (url, direct)  # 7: could not connect
        raw = inside(sandbox, f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 3)' 2>&1")
        assert "Connection refused" in raw
        assert ("127.0.0.1", port) in blocked(world, sandbox[1].id)
        assert ("127.0.0.1", prefect.port) in blocked(world, sandbox[1].id)
    finally:
        asyncio.run(sandbox[0].kill(sandbox[1].id))


def test_only_the_allowed_host_is_reached(world, listeners):
    """Two hosts named through the proxy's resolver (both loopback listeners): the allowed one answers, the other
    is refused and logged; a name that resolves to loopback without being pinned is refused too."""
    allowed_port, allowed_canary = listeners["allowed"]
    forbidden_port, forbidden_canary = listeners["forbidden"]
    rule = "allowed.test" if world.backend == "e2b" else f"allowed.test:{allowed_port}"  # E2B allows hosts, not ports
    network = Network(allow=[rule, "localhost"], resolve={"allowed.test": "127.0.0.1", "forbidden.test": "127.0.0.1"})
    sandbox = netsandbox(world, network)
    try:
        assert inside(sandbox, f"curl -s -m 10 http://allowed.test:{allowed_port}/") == allowed_canary
        refused = inside(sandbox, f"curl -s -m 10 http://forbidden.test:{forbidden_port}/")
        assert forbidden_canary not in refused and "Blocked by policy: do not retry." in refused
        https = inside(sandbox, f"curl -s -m 10 https://forbidden.test:{forbidden_port}/; echo exit=$?")
        assert "exit=56" in https  # CONNECT refused: curl's "failure receiving data"
        rebound = inside(sandbox, f"curl -s -m 10 http://localhost:{forbidden_port}/")
        assert forbidden_canary not in rebound and "Blocked by policy" in rebound
        assert {("forbidden.test", forbidden_port), ("localhost", forbidden_port)} <= set(blocked(world, sandbox[1].id))
    finally:
        asyncio.run(sandbox[0].kill(sandbox[1].id))


def test_no_secret_is_inside(world, monkeypatch):
    """The model key (added by the egress proxy, or by E2B's egress rules) and the gateway's token and config are
    nowhere in the sandbox: not in its environment, any process's /proc, or its files."""
    world.play([{"text": "unused"}])
    monkeypatch.setenv("E2B_MODEL_KEY_VIA_RULES", "true")
    sandboxes = get_backend(load_settings(), world.backend)
    key = CREDENTIALS["ANTHROPIC_API_KEY"]
    handle = asyncio.run(sandboxes.create(MCP, {"ANTHROPIC_API_KEY": key}, 120, {"app": "containment"}))
    sandbox = (sandboxes, handle)
    try:
        token = asyncio.run(sandboxes.gateway_token(handle))
        secrets = [key, token, CREDENTIALS["NOTION_INTEGRATION_TOKEN"]]
        seen = inside(sandbox, "env; cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'; "
                               "grep -r -a -h -e . /home /tmp /etc /run 2>/dev/null | head -c 2000000")
        assert "ANTHROPIC_API_KEY" in seen  # the placeholder is there
        for secret in secrets:
            assert secret not in seen
        assert "No such file" in inside(sandbox, "cat /etc/mcp-gateway/.token") or \
            "Permission denied" in inside(sandbox, "cat /etc/mcp-gateway/.token")
    finally:
        asyncio.run(sandboxes.kill(handle.id))


def test_writes_stay_in_home_and_tmp(sandbox):
    out = inside(sandbox, "for p in /usr/x /etc/x /x /bin/x /run/agentbox-net/x /var/x; do touch $p 2>&1 || true; done")
    assert out.count("Read-only file system") + out.count("Permission denied") + out.count("No such file") >= 6, out
    for path in ("/usr/x", "/etc/x", "/x", "/bin/x", "/var/x"):
        assert not Path(path).exists()


def test_processes_outside_cannot_be_signalled(sandbox):
    outside = subprocess.Popen(["sleep", "60"])
    try:
        out = inside(sandbox, f"kill -9 {outside.pid} 2>&1; ls /proc | grep -c '^[0-9]'")
        assert "No such process" in out
        assert outside.poll() is None  # still running
        assert int(out.split()[-1]) < 20  # a pid namespace of its own: only the sandbox's processes
    finally:
        outside.kill()
        outside.wait()


def test_another_sandboxs_files_are_out_of_reach(world, sandbox):
    other = netsandbox(world, Network())
    try:
        marker = f"marker-{uuid.uuid4().hex}"
        inside(other, f"echo {marker} > /home/user/{marker} && echo {marker} > /tmp/{marker}")
        # Every directory but the host's read-only system and runtime trees (large, the same for all sandboxes,
        # and not where any sandbox's state lives): a whole-root walk takes over 30 s on a cold cache.
        shared = ["/proc", "/sys", "/dev", "/usr", sys.base_prefix, sys.prefix, str(PROJECT / "node_modules")]
        assert not any(SANDBOX_ROOT.resolve().is_relative_to(Path(p).resolve()) for p in shared)
        prune = " -o ".join(f"-path {p}" for p in shared)
        found = inside(sandbox, f"ls /home/user /tmp; find / \\( {prune} \\) -prune -o -name '{marker}' -print "
                                f"2>/dev/null | head")
        assert marker not in found
        assert marker in inside(other, f"find / \\( {prune} \\) -prune -o -name '{marker}' -print 2>/dev/null")
    finally:
        asyncio.run(other[0].kill(other[1].id))


# -- who the sandbox is outside, and how much of the host it may take ---------------------------------------------


def host_uid_of(sandbox, seconds: float) -> int:
    """The host uid of a process running inside `sandbox`: a `sleep` of a unique length, found in the host's /proc
    while it runs."""
    label = f"{seconds:.6f}"
    runner = threading.Thread(target=inside, args=(sandbox, f"sleep {label}"))
    runner.start()
    try:
        deadline = time.monotonic() + seconds - 0.5
        while time.monotonic() < deadline:
            for proc in Path("/proc").iterdir():
                try:
                    if proc.name.isdigit() and (proc / "cmdline").read_bytes() == f"sleep\0{label}\0".encode():
                        status = (proc / "status").read_text()
                        return int(status.split("\nUid:")[1].split()[0])
                except OSError:
                    continue
            time.sleep(0.05)
        raise AssertionError(f"the sandbox's sleep {label} never showed in the host's /proc")
    finally:
        runner.join()


def test_the_sandboxs_user_is_nobody_outside(world, sandbox):
    """Run as root (as CI does), each sandbox's commands run as a uid of its own on the host, not root's."""
    other = netsandbox(world, Network())
    try:
        uids = [host_uid_of(box, 4 + random.random()) for box in (sandbox, other)]
        assert 0 not in uids, uids
        if os.geteuid() == 0:
            assert uids[0] != uids[1]  # one per sandbox: its processes count against its own limit
        files = inside(sandbox, "touch /home/user/mine /tmp/mine && stat -c '%u' /home/user/mine /tmp/mine")
        assert files.split() == ["1000", "1000"]  # inside it is still "user"
    finally:
        asyncio.run(other[0].kill(other[1].id))


FLOOD = 3000  # processes a hijacked agent tries to start; the sandbox's cap is 1024
FLOOD_SCRIPT = f"""
import os, time
started = 0
for _ in range({FLOOD}):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(12)  # every child ends by itself, whatever happens to the test
        os._exit(0)
    started += 1
print("started", started, flush=True)
time.sleep(4)  # hold them while another sandbox works
"""


def test_a_process_flood_ends_in_its_own_sandbox(world, sandbox):
    other = netsandbox(world, Network())
    try:
        inside(sandbox, f"cat > /tmp/flood.py <<'EOF'\n{FLOOD_SCRIPT}\nEOF")
        out: list[str] = []
        flood = threading.Thread(target=lambda: out.append(inside(sandbox, "python3 /tmp/flood.py")))
        flood.start()
        time.sleep(3)
        assert inside(other, "echo still-here").strip() == "still-here"  # the other sandbox still starts processes
        flood.join(timeout=40)
        started = int(out[0].split("started")[1].split()[0])
        if os.geteuid() == 0:
            assert started < 1024, out  # the cap cut it short
        else:
            assert started <= FLOOD
        assert inside(sandbox, "echo after").strip() == "after"  # and the sandbox itself lives on
    finally:
        asyncio.run(other[0].kill(other[1].id))


def test_a_memory_hog_ends_with_its_own_process(sandbox):
    """6 GiB, touched 256 MiB at a time (so a limit that failed would really take it): cut at the per-process
    address-space cap (4 GiB)."""
    hog = ("python3 -c \"import sys\nheld = []\ntry:\n    for _ in range(24):\n        held.append(b'x' * (256 << 20))"
           "\nexcept MemoryError:\n    print('cut at', len(held) * 256, 'MiB')\""
           )
    out = inside(sandbox, hog)
    assert "cut at" in out, out
    assert int(out.split("cut at")[1].split()[0]) < 4096
    assert inside(sandbox, "echo after").strip() == "after"
