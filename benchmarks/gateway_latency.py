"""Benchmark: what the gateway adds to a tools/call, against the same MCP server asked directly, in one run.

    .venv/bin/python benchmarks/gateway_latency.py [--calls 300] [--kb 10]

The feature server (tests/servers/feature_server.py) is asked directly over stdio (its own process, as the gateway
itself speaks to it) and over Streamable HTTP; two gateways sit in front of their own copies of it over stdio, as a
sandbox's gateway does: one with the credential patterns on (the default), one with `--no-secret-patterns`. One
client session each calls `repeat` with an ordinary text of about 10 kB (issue bodies, no credential), so the
gateway scans the arguments and the answer. The calls go in turn (each way once, then again), so a slower moment of
the machine slows them all. Prints medians and p95, and what the gateway adds at the median against the server over
stdio (the HTTP hop included) and over HTTP, beside the target (under 5 ms with the scanner on); asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp_types import PaginatedRequestParams  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from agentbox.gateway.probe import wait_until_ready  # noqa: E402
from agentbox.host import free_port, wait_until_async  # noqa: E402

SERVER = [sys.executable, str(ROOT / "tests" / "servers" / "feature_server.py")]
TOKEN = "benchmark-token"


def ordinary_text(kb: int) -> str:
    texts = json.loads((ROOT / "tests" / "data" / "issue_texts.json").read_text())
    text = "\n\n".join(texts)
    while len(text) < kb * 1000:
        text += "\n\n" + text
    return text[: kb * 1000]


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Session:
    """One MCP client session, kept open, that times tools/call: over HTTP to `url`, or over stdio (no url)."""

    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url, self.token, self.times = url, token, []
        self.stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Session:
        if self.url is None:
            streams = await self.stack.enter_async_context(
                stdio_client(StdioServerParameters(command=SERVER[0], args=SERVER[1:])))
        else:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            http = await self.stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=60))
            streams = await self.stack.enter_async_context(streamable_http_client(self.url, http_client=http))
        self.session = await self.stack.enter_async_context(ClientSession(streams[0], streams[1]))
        await self.session.initialize()
        cursor = None
        while True:  # every page, so the session knows `repeat` (the feature server pages its lists by two)
            page = await self.session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
            if not (cursor := page.next_cursor):
                return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()

    async def call(self, text: str) -> None:
        started = time.perf_counter()
        result = await self.session.call_tool("repeat", {"text": text})
        self.times.append(time.perf_counter() - started)
        assert result.content[0].text == text, "the answer changed on its way"


async def main(calls: int, kb: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="gateway-latency-"))
    (work / "catalog.json").write_text(json.dumps({"features": {"command": SERVER, "tools": ["repeat"]}}))
    direct_port, on_port, off_port = free_port(), free_port(), free_port()
    processes = [
        start([*SERVER, "--http", str(direct_port)], {}, work / "direct.log"),
        *(start([sys.executable, "-m", "agentbox.gateway", "--config", '{"features": {}}', "--port", str(port),
                 "--catalog", str(work / "catalog.json"), *extra], {"GATEWAY_ACCESS_TOKEN": TOKEN},
                work / f"gateway-{port}.log")
          for port, extra in ((on_port, []), (off_port, ["--no-secret-patterns"]))),
    ]
    try:
        if not await wait_until_async(lambda: listening(direct_port), 30):
            raise RuntimeError(f"the feature server does not listen on port {direct_port}")
        for port in (on_port, off_port):
            await wait_until_ready(f"http://127.0.0.1:{port}/mcp", TOKEN, {"features": ["repeat"]},
                                   deadline_seconds=60)
        text = ordinary_text(kb)
        async with (Session() as stdio, Session(f"http://127.0.0.1:{direct_port}/mcp") as direct,
                    Session(f"http://127.0.0.1:{on_port}/mcp", TOKEN) as scanned,
                    Session(f"http://127.0.0.1:{off_port}/mcp", TOKEN) as unscanned):
            sessions = {"the server directly, stdio": stdio, "the server directly, HTTP": direct,
                        "through the gateway": scanned, "through the gateway, patterns off": unscanned}
            for _ in range(20):  # warm-up, not counted
                for session in sessions.values():
                    await session.call(text)
            for session in sessions.values():
                session.times.clear()
            for _ in range(calls):
                for session in sessions.values():
                    await session.call(text)
    finally:
        for process in processes:
            process.kill()
            process.wait()

    print(f"tools/call of `repeat` with a {len(text)}-character argument (and as long an answer), {calls} calls each")
    for name, session in sessions.items():
        ms = sorted(t * 1000 for t in session.times)
        print(f"  {name:36s} median {statistics.median(ms):6.2f} ms   p95 {ms[int(len(ms) * 0.95)]:6.2f} ms")
    def median_ms(session: Session) -> float:
        return statistics.median(session.times) * 1000

    scanner = median_ms(scanned) - median_ms(unscanned)
    print(f"  the gateway adds {median_ms(scanned) - median_ms(stdio):.2f} ms at the median against the server over "
          f"stdio (its HTTP hop included), {median_ms(scanned) - median_ms(direct):.2f} ms against it over HTTP "
          f"(target: under 5 ms); the credential patterns' share: {scanner:.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--kb", type=int, default=10)
    options = parser.parse_args()
    asyncio.run(main(options.calls, options.kb))
