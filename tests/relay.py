"""Byte relays between loopback ports and unix sockets, so a test can reach a server it runs in a network namespace.

`python tests/relay.py LISTEN=CONNECT ... [-- COMMAND ...]`: each LISTEN (`HOST:PORT` or a unix socket's path)
relays its connections to CONNECT (the same forms). With a command, the relays live as long as it does and its exit
code is theirs (it gets their SIGTERM and SIGINT); without one, until SIGTERM. tests/tracestore.py runs Phoenix, whose
gRPC port listens on every interface with no setting to change it, inside a namespace of its own this way: one relay
there from a unix socket to Phoenix's HTTP port, one here from 127.0.0.1 to that socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from agentbox.sandboxes.local.jailnet import Streams, relay_to  # the sandbox's own relays, the other way round


def _connector(address: str) -> Callable[[], Awaitable[Streams]]:
    if "/" in address:  # a unix socket's path
        return functools.partial(asyncio.open_unix_connection, address)
    host, _, port = address.rpartition(":")
    return functools.partial(asyncio.open_connection, host, int(port))


async def _serve(listen: str, target: str) -> asyncio.AbstractServer:
    if "/" in listen:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)
        return await asyncio.start_unix_server(relay_to(_connector(target)), listen)
    host, _, port = listen.rpartition(":")
    return await asyncio.start_server(relay_to(_connector(target)), host, int(port), reuse_address=True)


async def _main(routes: list[tuple[str, str]], command: list[str]) -> int:
    for listen, target in routes:
        await _serve(listen, target)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)  # a relay cancelled at exit is not worth a traceback
    if not command:
        stopped = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        await stopped.wait()
        return 0
    child = await asyncio.create_subprocess_exec(*command)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, child.send_signal, sig)
    code = await child.wait()
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    routes = [tuple(spec.split("=", 1)) for spec in argv[:split]]
    if not routes or any(len(route) != 2 for route in routes):
        print("usage: relay.py LISTEN=CONNECT ... [-- COMMAND ...]", file=sys.stderr)
        return 2
    return asyncio.run(_main(routes, argv[split + 1 :]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
