"""An MCP upstream that dies mid-run: a stdio pass-through to a real MCP server that kills it, and exits, on a
`tools/call` whose line contains `--die-on` text (at most once per process).

    python -m agentbox.rehearsal.dying_upstream --die-on octo-org/chaos-07 -- github-mcp-server stdio ...

Put in a catalog entry's command, between the gateway and a real server, it makes that server's process vanish in the
middle of a session, as a crashed or OOM-killed upstream does; every other session's calls pass through untouched.
It is one of the rehearsal's faults (see faults.py): the gateway and the agent must cope, and the run must say why.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--die-on", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def answers() -> None:  # the server's lines, to the gateway
        for line in child.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()

    threading.Thread(target=answers, daemon=True).start()
    for line in sys.stdin.buffer:
        if b'"tools/call"' in line and args.die_on.encode() in line:
            child.send_signal(signal.SIGKILL)
            os._exit(137)  # dies as a SIGKILLed server does: no answer, pipes closed
        child.stdin.write(line)
        child.stdin.flush()
    child.stdin.close()
    sys.exit(child.wait())


if __name__ == "__main__":
    main()
