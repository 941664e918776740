"""The egress proxy on its own: what it lets through, what it adds, what it refuses (everything on loopback)."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import pytest

from agentbox.policy import RunPolicy
from agentbox.sandboxes.local.egress import Egress, allowed


@pytest.mark.parametrize(
    ("rules", "host", "port", "expected"),
    [
        (["pypi.org"], "pypi.org", 443, True),
        (["pypi.org"], "pypi.org", 80, True),
        (["pypi.org"], "pypi.org", 8080, False),
        (["pypi.org:8080"], "pypi.org", 8080, True),
        (["pypi.org:8080"], "pypi.org", 443, False),
        (["*.github.com"], "api.github.com", 443, True),
        (["*.github.com"], "github.com", 443, False),
        (["*.github.com"], "evilgithub.com", 443, False),
        (["api.example.com:*"], "api.example.com", 5, True),
        ([], "pypi.org", 443, False),
    ],
)
def test_rules_match_by_host_and_port(rules, host, port, expected):
    assert allowed(rules, host, port) is expected


def test_the_policy_refuses_what_is_not_a_host_in_one_line():
    with pytest.raises(ValueError, match="not host\\[:port\\] names: 'http://x.org'"):
        RunPolicy(egress=["http://x.org"])
    assert RunPolicy(egress=["PyPI.org", "pypi.org", "x.org:8443"]).egress == ["pypi.org", "x.org:8443"]


async def _upstream(seen: list[bytes]):
    async def answer(reader, writer):
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\nok")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def _ask(path: Path, request: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def test_a_service_gets_its_credential_and_the_placeholder_is_dropped():
    async def scenario():
        seen: list[bytes] = []
        upstream = await _upstream(seen)
        port = upstream.sockets[0].getsockname()[1]
        with tempfile.TemporaryDirectory() as directory:
            egress = Egress({
                "directory": directory, "proxy": "proxy.sock", "log": f"{directory}/log.jsonl",
                "services": {"model API": {"socket": "model.sock", "upstream": f"http://127.0.0.1:{port}/base",
                                           "headers": {"x-api-key": "sk-real"}, "inside": "127.0.0.1:8788"}},
            })
            servers = await egress.start()
            try:
                direct = await _ask(Path(directory, "model.sock"),
                                    b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:8788\r\nx-api-key: placeholder\r\n"
                                    b"Content-Length: 0\r\n\r\n")
                proxied = await _ask(Path(directory, "proxy.sock"),
                                     b"GET http://127.0.0.1:8788/v1/models HTTP/1.1\r\nHost: 127.0.0.1:8788\r\n\r\n")
                log = [json.loads(line) for line in Path(directory, "log.jsonl").read_text().splitlines()]
            finally:
                for server in servers:
                    server.close()
        upstream.close()
        return seen, direct, proxied, log

    seen, direct, proxied, log = asyncio.run(scenario())
    for answer in (direct, proxied):
        assert answer.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in answer
        assert b"Keep-Alive" not in answer  # each request its own connection, so each gets its credential
    first, second = (head.decode() for head in seen)
    assert first.startswith("POST /base/v1/messages HTTP/1.1") and "x-api-key: sk-real" in first
    assert "placeholder" not in first
    assert second.startswith("GET /base/v1/models HTTP/1.1") and "x-api-key: sk-real" in second
    assert [e["decision"] for e in log] == ["allowed", "allowed"]
    assert "sk-real" not in json.dumps(log)


def test_a_host_outside_the_policy_gets_the_policys_message():
    async def scenario():
        with tempfile.TemporaryDirectory() as directory:
            egress = Egress({"directory": directory, "proxy": "proxy.sock", "allow": ["pypi.org"],
                             "log": f"{directory}/log.jsonl"})
            servers = await egress.start()
            try:
                answers = [await _ask(Path(directory, "proxy.sock"), request) for request in (
                    b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
                    b"GET http://pypi.org:8080/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n",
                    b"garbage\r\n\r\n",
                )]
                log = [json.loads(line) for line in Path(directory, "log.jsonl").read_text().splitlines()]
            finally:
                for server in servers:
                    server.close()
        return answers, log

    answers, log = asyncio.run(scenario())
    for answer in answers[:2]:
        assert answer.startswith(b"HTTP/1.1 403 Forbidden") and b"Blocked by policy: do not retry." in answer
    assert answers[2].startswith(b"HTTP/1.1 400")
    assert [(e["host"], e["port"], e["decision"]) for e in log] == [("evil.example", 443, "blocked"),
                                                                    ("pypi.org", 8080, "blocked")]
