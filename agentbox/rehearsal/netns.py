"""A private network for a rehearsal run by a normal user.

github-mcp-server ignores the port of `--gh-host`, so the GitHub stand-in must listen on port 80, which a normal
user may not bind. Where user namespaces are allowed, the rehearsal re-runs itself under `unshare --user
--map-root-user --net`: inside, it owns a loopback of its own (port 80 included) and has no route off the machine at
all, which suits a rehearsal.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import sys
from collections.abc import Callable

from agentbox.errors import ConfigError
from agentbox.rehearsal.servers import free_loopback_host_for_port80

MARKER = "AGENTBOX_REHEARSAL_NETNS"
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def can_bind_port80() -> bool:
    """Whether this process may bind port 80 on loopback, where the GitHub stand-in must listen."""
    try:
        free_loopback_host_for_port80()
    except PermissionError:
        return False
    return True


def bring_loopback_up() -> None:
    """A new network namespace starts with `lo` down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def enter_private_network_if_needed(module: str, argv: list[str], before_exec: Callable[[], None] = lambda: None
                                    ) -> None:
    """Re-run `python -m module argv` in a private user+network namespace when port 80 is out of reach; inside that
    namespace, bring its loopback up. Returns when the current process can go on. `before_exec` runs just before the
    re-run replaces this process (what it started and would leave behind: a server in the host's network, say)."""
    if os.environ.get(MARKER) == "1":
        bring_loopback_up()
        return
    if can_bind_port80():
        return
    unshare = shutil.which("unshare")
    if not unshare:
        raise ConfigError(
            "A rehearsal as a normal user needs `unshare` (util-linux) to get a private network with port 80.",
            "Install util-linux, or run the rehearsal as root.",
        )
    env = {**os.environ, MARKER: "1"}
    before_exec()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(unshare, [unshare, "--user", "--map-root-user", "--net", "--", sys.executable, "-m", module, *argv], env)
