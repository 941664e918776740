"""A sandbox's only way out: a host-side proxy that its programs reach over unix sockets bound into the sandbox.

The sandbox's programs live in a network namespace of their own (see `jailnet`); what they can reach is what this
proxy lets through, decided by host name:
- `services`: the model API and the MCP gateway (and, when the run is traced, its telemetry endpoint), each a reverse
  proxy that adds its credential (the model key, the gateway token, the endpoint's headers) to every request, so the
  sandbox holds only placeholders;
- the forward proxy (`HTTP_PROXY`/`HTTPS_PROXY` inside): `CONNECT host:port` or `GET http://host/...` to the hosts
  the run policy allows, and nothing else. A refusal is HTTP 403 with the policy's one message to the agent, and
  every decision is a line of the sandbox's egress log, so the run's artifact counts the blocks as violations (and,
  traced, a span of the run's trace: egress_spans.py).

A name the policy allows must resolve to a public address: one that resolves to loopback or a private network (a DNS
rebinding trick, or a typo) is refused unless the resolver pins it (`resolve`, like curl's --resolve). Standard
library only; run by a sandbox's supervisor as `python -I -S egress.py <config.json>`, which it deletes once read (it
holds the credentials).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__:  # imported as part of agentbox (by the tests)
    from agentbox.sandboxes.local.egress_spans import EgressSpans
else:  # run as a script (`python -I -S egress.py`): its own directory is not on the path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from egress_spans import EgressSpans

BLOCKED = "Blocked by policy: do not retry."  # agentbox.policy.BLOCKED; this module imports nothing of ours
CHUNK = 65536
HEAD_LIMIT = 64 * 1024
CONNECT_TIMEOUT = 30.0
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade"}


def split_host_port(target: str, default_port: int | None) -> tuple[str, int | None]:
    """`host[:port]` (IPv6 in brackets) as (lowercase host, port)."""
    target = target.strip().lower()
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif target.count(":") == 1:
        host, port = target.split(":")
    else:
        host, port = target, ""
    return host.rstrip("."), int(port) if port else default_port


def allowed(rules: list[str], host: str, port: int) -> bool:
    """Whether `host:port` matches a rule: `host` (ports 443 and 80), `host:port`, `host:*` (any port), `*.domain`
    (its subdomains) or `*` (any host)."""
    for rule in rules:
        any_port = rule.endswith(":*")
        name, rule_port = split_host_port(rule.removesuffix(":*"), None)
        if not any_port and port not in ({rule_port} if rule_port else {443, 80}):
            continue
        if name in ("*", host) or (name.startswith("*.") and host.endswith(name[1:])):
            return True
    return False


def public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_unspecified or ip.is_multicast
                or ip.is_reserved)


class Egress:
    """The proxy of one sandbox, from its config (`agentbox.sandboxes.local.network.egress_config` says what it
    holds)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.allow: list[str] = config.get("allow", [])
        self.resolve: dict[str, str] = {k.lower(): v for k, v in config.get("resolve", {}).items()}
        self.services: dict[str, dict[str, Any]] = config.get("services", {})
        self.inject: dict[str, dict[str, str]] = {k.lower(): v for k, v in config.get("inject", {}).items()}
        self.directory: str = config.get("directory", ".")
        self.proxy_socket: str = config["proxy"]
        self.log_path: str | None = config.get("log")
        self.spans = EgressSpans(config["telemetry"]) if config.get("telemetry") else None  # tracing on

    # -- the log ----------------------------------------------------------------------------------------------

    def record(self, headers: list[tuple[str, str]] = (), **entry: Any) -> dict[str, Any] | None:
        """Log a decision; when tracing, begin its span (under the request's `traceparent`, if it has one), ended at
        once for a refusal, else by `ended` when the connection is done. Telemetry's own exports get none."""
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps({"time": time.time(), **entry}) + "\n")
        if self.spans is None or entry.get("service") == "telemetry":
            return None
        parent = next((v for k, v in headers if k.lower() == "traceparent"), None)
        span = self.spans.start(f"egress {entry['decision']} {entry.get('service') or entry.get('host')}",
                                {f"agentbox.egress.{k}": v for k, v in entry.items()}, parent)
        if entry["decision"] != "allowed":
            self.spans.end(span, error=entry.get("detail") or entry["decision"])
        return span

    def ended(self, span: dict[str, Any] | None, sent: int, received: int) -> None:
        if span is not None:
            self.spans.end(span, **{"agentbox.egress.bytes_sent": sent, "agentbox.egress.bytes_received": received})

    # -- connections out --------------------------------------------------------------------------------------

    async def open_upstream(self, host: str, port: int, tls: bool = False):
        address = self.resolve.get(host)
        if address is None:
            try:
                ipaddress.ip_address(host)
                address = host  # a literal address the policy names itself
            except ValueError:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=1)
                addresses = [info[4][0] for info in infos]
                if not addresses or not all(public(a) for a in addresses):
                    raise PermissionError(f"{host} resolves to a non-public address")
                address = addresses[0]
        context = ssl.create_default_context() if tls else None
        return await asyncio.wait_for(
            asyncio.open_connection(address, port, ssl=context, server_hostname=host if tls else None),
            CONNECT_TIMEOUT,
        )

    # -- the two kinds of listener --------------------------------------------------------------------------

    async def start(self) -> list[asyncio.AbstractServer]:
        """Listen on every socket (names relative to `directory`); the servers, for the caller to close."""
        listeners = [(self.proxy_socket, self.forward_proxy)]
        listeners += [(s["socket"], lambda r, w, n=name: self.reverse_proxy(n, r, w))
                      for name, s in self.services.items()]
        return [await asyncio.start_unix_server(handler, sock=unix_listener(self.directory, name), limit=HEAD_LIMIT)
                for name, handler in listeners]

    async def serve(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        servers = await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        for server in servers:
            server.close()
        if self.spans:
            await asyncio.to_thread(self.spans.stop)

    async def reverse_proxy(self, name: str, reader, writer, head: bytes | None = None) -> None:
        """One request to a service, with its credential added and `Connection: close` both ways."""
        service = self.services[name]
        try:
            head = head or await reader.readuntil(b"\r\n\r\n")
            method, target, headers = parse_head(head)
            upstream = urlsplit(service["upstream"])
            tls = upstream.scheme == "https"
            host, port = split_host_port(upstream.netloc, 443 if tls else 80)
            injected = {k.lower(): v for k, v in service.get("headers", {}).items()}
            kept = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP | set(injected) | {"host"}]
            path = upstream.path.rstrip("/") + (target if target.startswith("/") else "/" + target)
            out = [f"{method} {path} HTTP/1.1", f"Host: {upstream.netloc}", *(f"{k}: {v}" for k, v in kept),
                   *(f"{k}: {v}" for k, v in service.get("headers", {}).items()), "Connection: close"]
            up_reader, up_writer = await self.open_upstream(host, port, tls)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            await refuse(writer, 400, "Bad request.")
            return
        except (OSError, asyncio.TimeoutError) as exc:
            self.record(kind="service", service=name, decision="error", detail=str(exc)[:200])
            await refuse(writer, 502, f"The {name} cannot be reached.")
            return
        span = self.record(headers, kind="service", service=name, method=method, decision="allowed")
        up_writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        self.ended(span, *await relay(reader, writer, up_reader, up_writer, rewrite_response=True))

    async def forward_proxy(self, reader, writer) -> None:
        """`CONNECT host:port` or an absolute-form request: to a service, to an allowed host, or refused."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, headers = parse_head(head)
            if method == "CONNECT":
                host, port = split_host_port(target, 443)
            else:
                url = urlsplit(target)
                if url.scheme != "http":
                    raise ValueError("not an absolute http URL")
                host, port = split_host_port(url.netloc, 80)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            await refuse(writer, 400, "Bad proxy request.")
            return
        service = next((n for n, s in self.services.items() if split_host_port(s["inside"], 80) == (host, port)),
                       None)
        if service:  # the sandbox's own model API or gateway, asked for through the proxy
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await self.reverse_proxy(service, reader, writer)
            else:
                await self.reverse_proxy(service, reader, writer,
                                         head=rebuild_head(method, origin_form(target), headers))
            return
        entry = {"kind": "egress", "method": method, "host": host, "port": port}
        if not allowed(self.allow, host, port):
            self.record(headers, **entry, decision="blocked", detail="not an allowed host")
            await refuse(writer, 403, f"{BLOCKED} {host}:{port} is not an allowed host of this run.")
            return
        try:
            up_reader, up_writer = await self.open_upstream(host, port)
        except PermissionError as exc:
            self.record(headers, **entry, decision="blocked", detail=str(exc))
            await refuse(writer, 403, f"{BLOCKED} {exc}.")
            return
        except (OSError, asyncio.TimeoutError) as exc:
            self.record(headers, **entry, decision="error", detail=str(exc)[:200])
            await refuse(writer, 502, f"{host}:{port} cannot be reached.")
            return
        span = self.record(headers, **entry, decision="allowed")
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            origin = origin_form(target)
            added = self.inject.get(host, {})  # E2B's egress rules: credentials added on the way out
            headers = [(k, v) for k, v in headers if k.lower() not in {a.lower() for a in added}] + list(added.items())
            up_writer.write(rebuild_head(method, origin, headers))
        self.ended(span, *await relay(reader, writer, up_reader, up_writer, rewrite_response=method != "CONNECT"))


def unix_listener(directory: str, name: str) -> socket.socket:
    """A listening unix socket `directory/name`, bound through /proc/self/fd so that a deep directory does not hit
    the 107-byte limit of a socket's path; anyone may connect (the sandbox's user is not this process's)."""
    path = os.path.join(directory, name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        short = f"/proc/self/fd/{fd}/{os.path.basename(path)}"
        sock.bind(short)
        os.chmod(short, 0o777)
    finally:
        os.close(fd)
    sock.listen(128)
    return sock


def origin_form(target: str) -> str:
    """An absolute-form request target (`http://host/path?q`) as the origin server expects it (`/path?q`)."""
    url = urlsplit(target)
    return (url.path or "/") + (f"?{url.query}" if url.query else "")


def parse_head(head: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError("not HTTP/1.x")
    headers = []
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError("bad header line")
            headers.append((name.strip(), value.strip()))
    return method.upper(), target, headers


def rebuild_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    kept = [f"{k}: {v}" for k, v in headers if k.lower() not in HOP_BY_HOP]
    return ("\r\n".join([f"{method} {target} HTTP/1.1", *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1")


async def refuse(writer, status: int, message: str) -> None:
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    body = (message + "\n").encode()
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    try:
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    writer.close()


async def relay(reader, writer, up_reader, up_writer, rewrite_response: bool) -> tuple[int, int]:
    """Bytes both ways until the upstream is done; with `rewrite_response`, the response says `Connection: close`
    (each request gets its own connection, so each gets its credential and its decision). The bytes relayed each
    way (request bodies after the head, responses whole)."""
    counts = [0, 0]

    async def client_to_upstream() -> None:
        await pipe(reader, up_writer, counts, 0)

    async def upstream_to_client() -> None:
        if rewrite_response:
            try:
                head = await up_reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError):
                return
            lines = head.decode("latin-1").split("\r\n")
            kept = [line for line in lines[1:] if line and line.partition(":")[0].strip().lower() not in HOP_BY_HOP]
            writer.write(("\r\n".join([lines[0], *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1"))
            counts[1] += len(head)
        await pipe(up_reader, writer, counts, 1)

    sending = asyncio.ensure_future(client_to_upstream())
    try:
        await upstream_to_client()
    finally:
        sending.cancel()
        for w in (writer, up_writer):
            w.close()
    return counts[0], counts[1]


async def pipe(reader, writer, counts: list[int] | None = None, index: int = 0) -> None:
    """Copy until end of file, adding what went through to `counts[index]`."""
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            if counts is not None:
                counts[index] += len(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError, asyncio.CancelledError):
        pass


def main() -> int:
    path = Path(sys.argv[1])
    config = json.loads(path.read_text())
    path.unlink()  # the credentials now live only in this process
    asyncio.run(Egress(config).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
