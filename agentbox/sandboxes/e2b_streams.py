"""A command in an E2B sandbox whose output outlives a cut stream.

envd streams a command's output over one long request. When that stream breaks while the sandbox and the command
live on (a proxy's reset, a network blip), the SDK raises, though Claude Code goes on working. So the command's
standard output is also appended to a file in the sandbox (`tee`); on a cut, the command is reconnected
(`commands.connect`, for its end and its stderr) and its output is read on from the file at the exact byte where the
stream stopped (`tail -c +N`), by a follower that ends when the command does. Output is delivered in whole
lines, so the offset is exact even when the cut fell inside a character; nothing is lost or given twice.
"""

from __future__ import annotations

import asyncio
import secrets
import shlex
from typing import Any

from e2b import CommandExitException, NotFoundException, SandboxNotRunningException

from agentbox.sandboxes.base import OutputCallback

MAX_RECONNECTS = 5  # per command: a stream that keeps breaking is a sandbox in trouble
MARGIN = 30  # seconds envd's own deadline runs past ours, a net if this process dies


class FollowedCommand:
    """One command's run: its process, its output so far, and its reconnections."""

    def __init__(self, sandbox: Any, timeout: float, on_stdout: OutputCallback | None,
                 on_stderr: OutputCallback | None) -> None:
        self.sandbox, self.timeout = sandbox, timeout
        self.on_stdout, self.on_stderr = on_stdout, on_stderr
        self.out_file = f"/tmp/.agentbox-out-{secrets.token_hex(8)}"
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.offset = 0  # bytes of stdout delivered (whole lines)
        self.partial = ""  # the start of a line not delivered yet
        self.reconnects = 0
        self.process: Any = None
        self.deadline = 0.0

    async def start(self, command: str, envs: dict[str, str] | None, stdin: bool) -> Any:
        """Start the command (its stdout also appended to `out_file`) and return its handle (for its stdin)."""
        self.deadline = asyncio.get_running_loop().time() + self.timeout
        out = shlex.quote(self.out_file)
        teed = f"set -o pipefail\n{{ {command}\n}} | tee -a {out}\nended=$?\ntouch {out}.end\nexit $ended"
        self.process = await self.sandbox.commands.run(
            teed, background=True, envs=envs, timeout=self.timeout + MARGIN, on_stdout=self._stdout,
            on_stderr=self._stderr, stdin=stdin)
        return self.process

    def left(self) -> float:
        return max(self.deadline - asyncio.get_running_loop().time(), 0.001)

    async def wait(self) -> int:
        """The command's exit code, reconnecting as often as its stream breaks (up to MAX_RECONNECTS); TimeoutError
        past the timeout, and the SDK's error when the sandbox or the command is gone."""
        follower = None
        while True:
            try:
                exit_code = (await asyncio.wait_for(self.process.wait(), self.left())).exit_code
                break
            except CommandExitException as exc:
                exit_code = exc.exit_code
                break
            except (TimeoutError, SandboxNotRunningException, NotFoundException):
                raise
            except Exception:
                if self.reconnects >= MAX_RECONNECTS:
                    raise
                self.reconnects += 1
                self.process = await self.sandbox.commands.connect(  # for its end: its output comes from the file
                    self.process.pid, timeout=self.left() + MARGIN, on_stderr=self._stderr)
            if follower is None:  # the first cut: the output is read on from the file from now on
                follower = await self._follow()
        while follower is not None:  # the rest of the output, to the command's last byte
            try:
                await asyncio.wait_for(follower.wait(), self.left())
                follower = None
            except (CommandExitException, TimeoutError):
                follower = None
            except Exception:
                if self.reconnects >= MAX_RECONNECTS:
                    raise
                self.reconnects += 1
                follower = await self._follow()
        self._flush()
        return exit_code

    async def _follow(self) -> Any:
        """A command that prints the output file from the first byte not delivered, as it grows, until the command
        has ended (its `.end` marker: a pid would not do where commands do not share a pid namespace)."""
        self.partial = ""  # read again from the file, whole
        out = shlex.quote(self.out_file)
        command = (f"at={self.offset}; while :; do [ -e {out}.end ] && last=1; size=$(stat -c %s {out}); "
                   f'if [ "$size" -gt "$at" ]; then tail -c +$((at + 1)) {out} | head -c $((size - at)); at=$size; fi; '
                   '[ -n "$last" ] && exit 0; sleep 0.1; done')
        return await self.sandbox.commands.run(command, background=True, timeout=self.left() + MARGIN,
                                               on_stdout=self._stdout)

    def _stdout(self, text: str) -> None:
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        if lines:
            whole = "\n".join(lines) + "\n"
            self.offset += len(whole.encode())
            self.stdout.append(whole)
            if self.on_stdout:
                self.on_stdout(whole)

    def _flush(self) -> None:
        if self.partial:
            last, self.partial = self.partial, ""
            self.stdout.append(last)
            if self.on_stdout:
                self.on_stdout(last)

    def _stderr(self, text: str) -> None:
        self.stderr.append(text)
        if self.on_stderr:
            self.on_stderr(text)
