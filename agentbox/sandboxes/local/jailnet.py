"""Inside a sandbox with no network of its own: loopback ports that lead out through unix sockets, then a command.

Run by the local backend (and the E2B stand-in) as the first process of a command's bubblewrap, in a network
namespace that has only a loopback interface: `python -I -S jailnet.py 127.0.0.1:3128=/run/agentbox-net/proxy.sock
... -- bash -c '<command>'`. Each listener relays its connections to a unix socket bound in from the host, where the
host-side egress proxy decides what may pass. Nothing else leads out of the namespace: a connection to any other
address is refused by the kernel. Standard library only, so it starts in a few tens of milliseconds.
"""

import asyncio
import functools
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

CHUNK = 65536


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def relay_to(connect: Callable[[], Awaitable[Streams]]):
    """A connection handler for asyncio.start_server: each connection relayed, both ways, to a new `connect()`."""
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await connect()
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()

    return relay


def _listener(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def _quiet_about_cancelled_relays(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """The command's stderr is the sandbox's: a relay still open when the command exits is cancelled with the loop,
    and asyncio would print that as a traceback there (a connection's callback finding its task cancelled)."""
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


async def _main(routes: list[tuple[socket.socket, str]], command: list[str]) -> int:
    for sock, path in routes:
        await asyncio.start_server(relay_to(functools.partial(asyncio.open_unix_connection, path)), sock=sock)
    child = await asyncio.create_subprocess_exec(*command)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_about_cancelled_relays)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, child.send_signal, sig)
    code = await child.wait()
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: jailnet.py HOST:PORT=SOCKET ... -- COMMAND ...", file=sys.stderr)
        return 2
    split = argv.index("--")
    routes = []
    for spec in argv[:split]:
        address, _, path = spec.partition("=")
        routes.append((_listener(address), path))
    try:
        return asyncio.run(_main(routes, argv[split + 1 :]))
    except FileNotFoundError as exc:
        print(f"{argv[split + 1]}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main(sys.argv[1:]))
